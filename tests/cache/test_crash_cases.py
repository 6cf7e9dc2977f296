"""Hostile calls into the C++ bindings, run in a child process so that a
segfault or abort fails a test instead of killing the run. Each case must end
in the Python exception it names (or, for "ok" cases, finish), with the
process alive afterwards.

All cases run in one child first; only if it dies are they rerun one per
child, to name the case that crashed."""
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import torch
from mini_paged_attn import ops
from mini_paged_attn.block_manager import BlockManager
from mini_paged_attn.cache.block_tables import BlockTables
from mini_paged_attn.manager import PagedAttentionManager

def tables(num_blocks=8):
    t = BlockTables(BlockManager(num_blocks), 4, 4, 4)
    t.add_sequence("a", 6)
    return t

def cache(num_blocks=4):
    k = torch.randn(num_blocks, 4, 2, 8)
    return k, torch.randn_like(k)
"""

# name -> (code, expected exception class name, or "ok")
CASES = {
    "id written into the exposed block_table": ("""
t = tables(); t.block_table[0, :] = 10**6; t.free_sequence("a")
assert t.block_manager.num_free_blocks == 8
""", "ok"),
    "length written into the exposed context_lens": ("""
t = tables(); t.context_lens[0] = 2**31 - 1; t.decode_step(); t.free_sequence("a")
""", "ok"),
    "manager ids written into the manager's tensors": ("""
m = PagedAttentionManager(num_sequences=2, num_heads=2, head_size=8, block_size=4,
                          num_blocks=8, num_kv_heads=2)
m.add_sequence(0, 5); m.block_table.fill_(-7); m.context_lens.fill_(10**6)
m.free_sequence(0); assert m.num_free_blocks == 8
""", "ok"),
    "free of a block a table holds": ("""
t = tables(); t.block_manager.free(t["a"][0])
""", "RuntimeError"),
    "huge append": ('t = tables(); t.append_slots("a", 2**63 - 3)', "ValueError"),
    "negative append": ('t = tables(); t.append_slots("a", -1)', "ValueError"),
    "positions that overflow int64": ('t = tables(); t.make_writable("a", 2**62, 2**62)',
                                      "ValueError"),
    "slots that overflow int64": ('t = tables(); t.slot_mapping("a", 2**63 - 1, 2)',
                                  "ValueError"),
    "huge lengths asked about": ("""
t = tables(); assert not t.can_allocate(num_tokens=2**63 - 1)
assert not t.can_allocate("a", 2**63 - 2)
""", "ok"),
    "huge block manager": ("BlockManager(2**62)", "ValueError"),
    "huge block tables": ("BlockTables(BlockManager(4), 2**40, 8, 16)", "ValueError"),
    "huge allocate_blocks": ("BlockManager(4).allocate_blocks(2**62)", "OutOfBlocksError"),
    "block id out of range": ("""
k, v = cache(); q = torch.randn(1, 4, 8)
ops.paged_attention(q, k, v, torch.tensor([[10**6]], dtype=torch.int32),
                    torch.tensor([3], dtype=torch.int32), check=False)
""", "IndexError"),
    "negative block id": ("""
k, v = cache(); q = torch.randn(1, 4, 8)
ops.paged_attention(q, k, v, torch.tensor([[-1]], dtype=torch.int32),
                    torch.tensor([3], dtype=torch.int32))
""", "IndexError"),
    "context longer than the table": ("""
k, v = cache(); q = torch.randn(1, 4, 8)
ops.paged_attention(q, k, v, torch.tensor([[0]], dtype=torch.int32),
                    torch.tensor([2**31 - 1], dtype=torch.int32))
""", "ValueError"),
    "empty cache": ("""
k = torch.randn(0, 4, 2, 8); q = torch.randn(1, 4, 8)
ops.paged_attention(q, k, k.clone(), torch.tensor([[0]], dtype=torch.int32),
                    torch.tensor([1], dtype=torch.int32))
""", "ValueError"),
    "slot out of range": ("""
k, v = cache(); x = torch.randn(2, 2, 8)
ops.reshape_and_cache(x, x, k, v, torch.tensor([0, 2**40]))
""", "IndexError"),
    "copy_blocks id out of range": ("""
k, v = cache(); ops.copy_blocks([k], [v], torch.tensor([[0, 99]]))
""", "IndexError"),
    "prefill query_start_loc past the query": ("""
k, v = cache(); q = torch.randn(3, 4, 8)
ops.paged_prefill_attention(q, k, v, torch.tensor([[0, 1]], dtype=torch.int32),
                            torch.tensor([5], dtype=torch.int32),
                            torch.tensor([0, 10**6], dtype=torch.int32))
""", "ValueError"),
    "sample_tokens with short seeds": ("""
ops.sample_tokens(torch.randn(4, 10), torch.ones(4), torch.full((4,), -float("inf")),
                  torch.zeros(2, dtype=torch.long), torch.zeros(4, dtype=torch.long))
""", "ValueError"),
    "meta tensor among real ones": ("""
k, v = cache(); q = torch.randn(1, 4, 8)
ops.paged_attention(q, k.to("meta"), v, torch.tensor([[0]], dtype=torch.int32),
                    torch.tensor([3], dtype=torch.int32), check=False)
""", "ValueError"),
}

RUNNER = PRELUDE + """
import sys
def run(name, code, expected):
    try:
        exec(code, dict(globals()))
        got = "ok"
    except Exception as e:
        got = type(e).__name__
    print(f"{name}\\t{got}", flush=True)
"""


def _run(cases):
    script = RUNNER + "".join(f"run({name!r}, {textwrap.dedent(code)!r}, {exp!r})\n"
                              for name, (code, exp) in cases.items())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    got = dict(line.split("\t") for line in proc.stdout.splitlines() if "\t" in line)
    return proc, got


@pytest.fixture(scope="module")
def results():
    proc, got = _run(CASES)
    if proc.returncode == 0:
        return got, {}
    # The child died: find which case killed it, one child per case.
    crashed = {}
    for name, case in CASES.items():
        one, one_got = _run({name: case})
        if one.returncode != 0:
            crashed[name] = f"rc {one.returncode}: {one.stderr[-500:]}"
        got.update(one_got)
    return got, crashed


@pytest.mark.parametrize("name", list(CASES))
def test_crash_case(results, name):
    got, crashed = results
    assert name not in crashed, f"the process died: {crashed[name]}"
    assert got.get(name) == CASES[name][1]
