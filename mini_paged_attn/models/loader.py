"""Builds a model from a local Hugging Face checkpoint directory: ``config.json``
and ``*.safetensors`` weights. Nothing is downloaded; transformers is not used.

Every tensor goes through its parameter's ``weight_loader`` (``layers.weights``),
which copies the part a tensor-parallel rank holds (all of it at tp=1)."""
from __future__ import annotations

import glob
import os
import re
import warnings
from typing import Dict, Optional, Set, Tuple, Union

import torch

from ..layers.weights import weight_loader
from ..parallel.group import TPGroup
from .config import ModelConfig
from .llama import LlamaForCausalLM

# Checkpoint projection -> (fused module, its shard: the index of its rows in output_sizes).
_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
_FUSED_NAME = re.compile(r"^(.*)\.(" + "|".join(_FUSED) + r")\.(weight|bias)$")
# An fp8 KV cache's per-layer scales, under the names vLLM reads (e.g.
# model.layers.0.self_attn.k_scale or ...self_attn.k_proj.k_scale).
_KV_SCALE_NAME = re.compile(r"^(.*\.self_attn)\.(?:(?:k_proj|v_proj|qkv_proj|attn)\.)?"
                            r"(k_scale|v_scale)$")


def _load_kv_scale(model: LlamaForCausalLM, name: str, tensor: torch.Tensor, path: str) -> bool:
    """Sets the attention layer's ``k_scale`` / ``v_scale`` if ``name`` is one."""
    m = _KV_SCALE_NAME.match(name)
    if m is None:
        return False
    try:
        attn = model.get_submodule(f"{m.group(1)}.attn")
    except AttributeError:
        return False  # not the model's: reported as unexpected
    value = float(tensor.float().reshape(-1)[0]) if tensor.numel() == 1 else float("nan")
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{name} in {path} must be one finite value > 0, got "
                         f"{tensor.tolist()}")
    setattr(attn, m.group(2), value)
    return True


def _target(name: str) -> Tuple[str, Optional[int]]:
    """Parameter name in the model and the shard of it a checkpoint tensor is
    (None: the whole parameter)."""
    m = _FUSED_NAME.match(name)
    if m is None:
        return name, None
    prefix, proj, kind = m.groups()
    fused, shard = _FUSED[proj]
    return f"{prefix}.{fused}.{kind}", shard


def load_weights(model: LlamaForCausalLM, model_dir: str) -> None:
    """Copies every tensor of ``model_dir/*.safetensors`` into ``model``;
    ``ValueError`` naming the tensors that are missing, unexpected or misshapen."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError("loading *.safetensors weights needs the safetensors package "
                          "(pip install safetensors)") from e
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"model_dir {model_dir!r} has no *.safetensors file")
    params: Dict[str, torch.Tensor] = dict(model.named_parameters())
    filled: Dict[str, int] = {}
    unexpected: Set[str] = set()
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for path in files:
            try:
                tensors = load_file(path)
            except Exception as e:  # safetensors' own errors name neither file nor cause well
                raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e
            for name, tensor in tensors.items():
                if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue  # recomputed, or shared with embed_tokens
                if _load_kv_scale(model, name, tensor, path):
                    continue
                target, shard = _target(name)
                if target not in params:
                    unexpected.add(name)
                    continue
                param = params[target]
                try:
                    n = weight_loader(param)(param, tensor, shard)
                except ValueError as e:  # the shape: the loader checks it before copying
                    raise ValueError(f"{name} in {path} {e}") from None
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    warnings.warn(f"{name} in {path} holds non-finite values (NaN or inf)",
                                  RuntimeWarning, stacklevel=2)
                filled[target] = filled.get(target, 0) + n
    missing = sorted(n for n, p in params.items() if filled.get(n, 0) != p.numel()
                     and not (tied and n == "lm_head.weight"))
    if missing or unexpected:
        raise ValueError(f"checkpoint in {model_dir!r} does not match the model: missing "
                         f"{missing or 'none'}, unexpected {sorted(unexpected) or 'none'}")


def load_model(model: Union[str, ModelConfig], device: Union[str, torch.device] = "cpu",
               dtype: Optional[torch.dtype] = None, seed: int = 0,
               tp: TPGroup = TPGroup()) -> LlamaForCausalLM:
    """A checkpoint directory's model, or a random-initialised one for a config
    (rank ``tp.rank``'s part of it)."""
    config = ModelConfig.from_pretrained(model) if isinstance(model, str) else model
    # Built in float32 on the host, then cast and moved once.
    llm = LlamaForCausalLM(config, tp)
    if isinstance(model, str):
        load_weights(llm, model)
    else:
        llm.init_random_weights(seed)
    return llm.to(device=device, dtype=dtype or config.dtype).eval()
