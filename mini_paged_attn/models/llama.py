"""The Llama architecture over a paged KV cache: RMSNorm, rotary embeddings,
grouped-query attention through :class:`PagedAttention`, a SwiGLU MLP.

Tokens of all sequences in a batch are flattened (``[num_tokens, hidden]``);
where each belongs is described by the step's :class:`AttentionMetadata`.
Parameter names follow Hugging Face's ``LlamaForCausalLM`` except that q/k/v
and gate/up are fused into one matmul each (``qkv_proj``, ``gate_up_proj``);
the loader maps checkpoint names onto them.

Under tensor parallelism (a ``TPGroup`` of several ranks) each rank builds the
same model with its share of the heads, MLP features and vocabulary
(``layers.linear``, ``layers.embedding``); at tp=1 the layers are plain.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..attention import PagedAttention
from ..layers.attention_metadata import AttentionMetadata
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.fused import head_rms_norm, rms_norm, silu_and_mul
from ..layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from ..layers.rotary import RotaryEmbedding
from ..layers.weights import full_shape, weight_loader
from ..parallel.group import TPGroup, kv_heads_per_rank
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(norm(x + residual), x + residual)``; on a GPU ``x`` and ``residual``
        are overwritten with them (``layers.fused.rms_norm``)."""
        return rms_norm(x, self.weight, self.eps, residual)


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's dimensions (Qwen3's q_norm / k_norm)."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_rms_norm(x, self.weight, self.eps)


class LlamaAttention(nn.Module):
    """This rank's query heads and the KV heads they use."""

    def __init__(self, config: ModelConfig, tp: TPGroup):
        super().__init__()
        self.num_heads = config.num_attention_heads // tp.size
        self.num_kv_heads = kv_heads_per_rank(config.num_key_value_heads, tp.size)
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim,
                                          config.num_attention_heads, config.num_key_value_heads,
                                          config.attention_bias or config.qkv_bias, tp)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                        config.hidden_size, config.attention_bias, tp)
        if config.qk_norm:
            self.q_norm = HeadRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = HeadRMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.attn = PagedAttention(self.num_heads, self.head_dim, self.num_kv_heads)

    def forward(self, rotary: RotaryEmbedding, positions: torch.Tensor, x: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.output_sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(positions, q, k)
        out = self.attn(q, k, v, metadata)
        return self.o_proj(out.view(-1, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup):
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, [size, size],
                                                 config.mlp_bias, tp)
        self.down_proj = RowParallelLinear(size, config.hidden_size, config.mlp_bias, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config, tp)

    def forward(self, rotary: RotaryEmbedding, positions: torch.Tensor, x: torch.Tensor,
                residual: Optional[torch.Tensor], metadata: AttentionMetadata
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns this layer's output and the residual stream before it; their
        sum is the hidden state (the next norm adds them, in one kernel on a GPU)."""
        x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(rotary, positions, x, metadata)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, tp)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # One table for all layers, looked up once per step.
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                          config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(self.rotary_emb, positions, x, residual, metadata)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    """``forward`` returns final hidden states; :meth:`compute_logits` turns the
    rows that are sampled into vocabulary logits (most rows of a prefill never
    need them). With tensor parallelism the logits reach rank 0 only (None
    on the other ranks)."""

    def __init__(self, config: ModelConfig, tp: TPGroup = TPGroup()):
        super().__init__()
        self.config = config
        self.tp = tp
        self.model = LlamaModel(config, tp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> Optional[torch.Tensor]:
        return self.lm_head(hidden_states)

    def attention_layers(self) -> List[PagedAttention]:
        """Every layer's :class:`PagedAttention`, in order (to bind caches)."""
        return [layer.self_attn.attn for layer in self.model.layers]

    def init_random_weights(self, seed: int = 0, std: float = 0.02) -> None:
        """Normal(0, std) matrices and unit norms, reproducibly from ``seed``;
        a rank of a tensor-parallel model takes its part of the same matrices."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    weight_loader(p)(p, torch.randn(full_shape(p), generator=g) * std)
