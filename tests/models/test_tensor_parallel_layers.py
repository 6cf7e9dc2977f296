"""The sharded layers (layers/linear.py, layers/embedding.py) against their
unsharded selves, every rank simulated in this one process: the collectives
are replaced by what they compute (the sum or concatenation of the ranks'
results, done here)."""
import pytest
import torch
import torch.nn.functional as F

from mini_paged_attn.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from mini_paged_attn.layers.linear import (ColumnParallelLinear, QKVParallelLinear,
                                           RowParallelLinear)
from mini_paged_attn.models.config import ModelConfig
from mini_paged_attn.parallel.group import TPGroup, check_size

g = torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def local_collectives(monkeypatch):
    """Each simulated rank returns its own part; the tests combine them."""
    monkeypatch.setattr(TPGroup, "all_reduce", lambda self, x: x)
    monkeypatch.setattr(TPGroup, "gather_last_dim", lambda self, x: x)


def _built(cls, size, *args, loads):
    """The layer of every rank of ``size``, each loaded from the full tensors
    ``loads`` ((parameter name, tensor, shard) triples)."""
    layers = []
    for rank in range(size):
        layer = cls(*args, tp=TPGroup(rank, size))
        for name, tensor, shard in loads:
            param = getattr(layer, name)
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                param.data.copy_(tensor)
            else:
                assert loader(param, tensor, shard) > 0
        layers.append(layer)
    return layers


@pytest.mark.parametrize("size", [1, 2, 4])
def test_merged_column_parallel(size):
    w_gate, w_up = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    bias = torch.randn(16, generator=g)
    x = torch.randn(5, 6, generator=g)
    gate, up = F.linear(x, torch.cat([w_gate, w_up]), bias).split([8, 8], dim=-1)
    layers = _built(ColumnParallelLinear, size, 6, [8, 8], True,
                    loads=[("weight", w_gate, 0), ("weight", w_up, 1), ("bias", bias, None)])
    parts = [layer(x).split(layer.output_sizes, dim=-1) for layer in layers]
    torch.testing.assert_close(torch.cat([p[0] for p in parts], -1), gate)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], -1), up)


@pytest.mark.parametrize("size,num_kv_heads", [(1, 2), (2, 2), (2, 1), (4, 2), (4, 1)])
def test_qkv_parallel_splits_heads(size, num_kv_heads):
    """Each rank gets its query heads and the KV head(s) they use, replicated
    when there are fewer KV heads than ranks."""
    heads, d, hidden = 4, 3, 10
    wq = torch.randn(heads * d, hidden, generator=g)
    wk, wv = (torch.randn(num_kv_heads * d, hidden, generator=g) for _ in range(2))
    bias = torch.randn((heads + 2 * num_kv_heads) * d, generator=g)
    x = torch.randn(7, hidden, generator=g)
    full = F.linear(x, torch.cat([wq, wk, wv]), bias)
    q, k, v = (t.view(7, -1, d) for t in full.split([heads * d, num_kv_heads * d,
                                                      num_kv_heads * d], dim=-1))
    loads = [("weight", wq, 0), ("weight", wk, 1), ("weight", wv, 2)]
    # The bias through the loader's whole-tensor path (as random initialisation loads it).
    layers = _built(QKVParallelLinear, size, hidden, d, heads, num_kv_heads, True,
                    loads=loads + [("bias", bias, None)])
    group = heads // num_kv_heads
    for rank, layer in enumerate(layers):
        lq, lk, lv = (t.view(7, -1, d) for t in layer(x).split(layer.output_sizes, dim=-1))
        mine = range(rank * heads // size, (rank + 1) * heads // size)
        torch.testing.assert_close(lq, q[:, list(mine)])
        kv_heads = sorted({h // group for h in mine})
        torch.testing.assert_close(lk, k[:, kv_heads])
        torch.testing.assert_close(lv, v[:, kv_heads])


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_row_parallel_sums_partials(size, bias):
    w, b = torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
    x = torch.randn(5, 8, generator=g)
    loads = [("weight", w, None)] + ([("bias", b, None)] if bias else [])
    layers = _built(RowParallelLinear, size, 8, 6, bias, loads=loads)
    # Each rank's input is its slice of the features; with the all-reduce an
    # identity here, a rank returns its partial product plus the bias.
    outs = [layer(x[:, r * 8 // size:(r + 1) * 8 // size]) for r, layer in enumerate(layers)]
    extra = (size - 1) * b if bias else 0
    torch.testing.assert_close(sum(outs) - extra, F.linear(x, w, b if bias else None))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_vocab_parallel_embedding_and_lm_head(size):
    """A vocabulary of 10 rows: at 3 ranks the last one is padded."""
    table = torch.randn(10, 4, generator=g)
    ids = torch.tensor([0, 3, 4, 9, 5, 3])
    embeds = _built(VocabParallelEmbedding, size, 10, 4, loads=[("weight", table, None)])
    torch.testing.assert_close(sum(e(ids) for e in embeds), F.embedding(ids, table))
    hidden = torch.randn(3, 4, generator=g)
    heads = _built(ParallelLMHead, size, 10, 4, loads=[("weight", table, None)])
    logits = torch.cat([h(hidden) for h in heads], dim=-1)[:, :10]
    torch.testing.assert_close(logits, hidden @ table.T)


def test_loader_checks_the_full_shape():
    layer = RowParallelLinear(8, 6, False, tp=TPGroup(1, 2))
    with pytest.raises(ValueError, match=r"has shape \(6, 4\), the model expects \(6, 8\)"):
        layer.weight_loader(layer.weight, torch.zeros(6, 4))


@pytest.mark.parametrize("overrides,size,match", [
    ({}, 3, "must divide num_attention_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=4), 8, None),
    (dict(num_attention_heads=6, num_key_value_heads=3), 2, "num_key_value_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=2), 4, None),
    (dict(intermediate_size=702), 4, "intermediate_size"),
])
def test_check_size(overrides, size, match):
    config = ModelConfig.tiny(**overrides)
    if match is None:
        check_size(size, config)
    else:
        with pytest.raises(ValueError, match=f"tensor_parallel_size.*{match}"):
            check_size(size, config)
