"""The Llama model (config, rotary embeddings, loader) against transformers'
LlamaForCausalLM: same logits for the same checkpoint, float32 on the CPU."""
import json

import pytest
import torch

from mini_paged_attn import LLM, AttentionMetadata, SamplingParams
from mini_paged_attn.models import ModelConfig, load_model
from mini_paged_attn.layers.rotary import inv_frequencies

transformers = pytest.importorskip("transformers")
from hf_checkpoint import save_random_checkpoint  # noqa: E402  (after the skip)

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _save(tmp_path, family="Llama", **overrides):
    return save_random_checkpoint(tmp_path, family, **overrides)


def _logits(model, prompts, block_size=8):
    """Prefills ``prompts`` as one batch through a fresh paged cache."""
    cfg = model.config
    for layer in model.attention_layers():
        cache = torch.full((64, block_size, cfg.num_key_value_heads, cfg.head_dim), float("nan"))
        layer.bind_kv_cache(cache, cache.clone())
    tables, slots, start = [], [], 0
    for p in prompts:
        n = -(-len(p) // block_size)
        tables.append(list(range(start, start + n))[::-1])  # blocks in reverse order
        slots += [tables[-1][i // block_size] * block_size + i % block_size for i in range(len(p))]
        start += n
    lens = [len(p) for p in prompts]
    metadata = AttentionMetadata.build(lens, lens, tables, slots)
    ids = torch.tensor(sum(prompts, []))
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        return model.compute_logits(model(ids, positions, metadata)).split(lens)


@pytest.mark.parametrize("overrides", [
    {},
    {"rope_scaling": LLAMA3_SCALING, "rope_theta": 500000.0, "tie_word_embeddings": True},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "attention_bias": True,
     "mlp_bias": True, "num_key_value_heads": 4},
], ids=["plain", "llama3-rope-tied", "linear-rope-bias-mha"])
def test_logits_match_transformers(tmp_path, overrides):
    _check_logits(tmp_path, _save(tmp_path, **overrides))


@pytest.mark.parametrize("family,overrides", [
    ("Qwen2", {}),  # biases on q, k and v only
    ("Qwen2", {"tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": 8}),
    ("Qwen3", {"head_dim": 32}),  # q/k RMSNorm, a head_dim of its own
    ("Mistral", {"sliding_window": None}),
], ids=["qwen2", "qwen2-tied-unused-window", "qwen3", "mistral"])
def test_families_match_transformers(tmp_path, family, overrides):
    _check_logits(tmp_path, _save(tmp_path, family, **overrides))


def _check_logits(tmp_path, hf):
    model = load_model(str(tmp_path))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (3, 70, 17)]
    for p, logits in zip(prompts, _logits(model, prompts)):
        with torch.no_grad():
            ref = hf(torch.tensor([p])).logits[0]
        assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()


def test_config_from_transformers_4_layout():
    config = ModelConfig.from_dict({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 1e6,
        "rope_scaling": {"type": "linear", "factor": 4.0}, "torch_dtype": "bfloat16",
        "eos_token_id": 3, "unknown_key": 1})
    assert config.rope_theta == 1e6 and config.rope_scaling["rope_type"] == "linear"
    assert config.head_dim == 8 and config.num_key_value_heads == 2
    assert config.dtype == torch.bfloat16 and config.eos_token_id == [3]
    assert torch.allclose(inv_frequencies(8, 1e6, config.rope_scaling),
                          inv_frequencies(8, 1e6) / 4)


@pytest.mark.parametrize("change,match", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_type"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(model_type="gpt2"), "model_type"),
    (dict(model_type="mistral", sliding_window=0), "sliding_window"),
    (dict(num_key_value_heads=0), "num_key_value_heads"),
    (dict(head_dim=0), "head_dim"),
    (dict(hidden_size=2), "head_dim"),  # 2 // 4 heads
    (dict(rms_norm_eps=-1.0), "rms_norm_eps"),
    (dict(rope_theta=float("nan")), "rope_theta"),
    (dict(torch_dtype="float17"), "dtype"),
    (dict(torch_dtype="nn"), "dtype"),
])
def test_config_errors(change, match):
    base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict({**base, **change})


def test_loader_reports_mismatched_checkpoints(tmp_path):
    _save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing.*layers.2"):
        load_model(str(tmp_path))
    config["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unexpected.*layers.1"):
        load_model(str(tmp_path))
    config["intermediate_size"] = 64
    config["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "nowhere"))


def test_malformed_files_are_named(tmp_path):
    _save(tmp_path)
    config = tmp_path / "config.json"
    good = config.read_text()
    config.write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(str(tmp_path))
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json must hold a JSON object"):
        load_model(str(tmp_path))
    config.write_text(json.dumps({**json.loads(good), "num_key_value_heads": 0}))
    with pytest.raises(ValueError, match="config.json: num_key_value_heads"):
        load_model(str(tmp_path))
    config.write_text(good)
    weights = next(tmp_path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"cannot read .*{weights.name}"):
        load_model(str(tmp_path))


def test_non_finite_weights_warn(tmp_path):
    from safetensors.torch import load_file, save_file

    _save(tmp_path)
    path = next(tmp_path.glob("*.safetensors"))
    tensors = load_file(str(path))
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.warns(RuntimeWarning, match="model.norm.weight .*non-finite"):
        load_model(str(tmp_path))


def test_sliding_window_caps_the_context(tmp_path):
    # Within the window full attention is what Mistral computes; the engine
    # keeps every sequence inside it.
    hf = _save(tmp_path, "Mistral", sliding_window=24)
    prompt = torch.arange(5, 25).tolist()
    model = load_model(str(tmp_path))
    assert model.config.sliding_window == 24
    logits = _logits(model, [prompt])[0]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
    assert torch.allclose(logits, ref, atol=1e-5)
    with pytest.warns(UserWarning, match="sliding_window"):
        llm = LLM(str(tmp_path), device="cpu")
    assert llm.engine.max_model_len == 24
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[1] * 20], SamplingParams(max_tokens=10))


def test_generation_config_eos_ids_stop_too(tmp_path):
    _save(tmp_path, eos_token_id=2)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert ModelConfig.from_pretrained(str(tmp_path)).eos_token_id == [2, 7]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert ModelConfig.from_pretrained(str(tmp_path)).eos_token_id == [2, 9]


@pytest.mark.parametrize("key", ["attn_logit_softcapping", "final_logit_softcapping"])
def test_unimplemented_math_is_refused(key):
    base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match=key):
        ModelConfig.from_dict({**base, key: 30.0})
