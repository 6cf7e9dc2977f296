"""Scheduler policy on a real paged cache with the model replaced by a stub
that "computes" the scheduled tokens and appends a token to every sequence
that is due: budgets, chunking, admission, preemption, freeing."""
import torch

from mini_paged_attn import PagedKVCacheConfig, SamplingParams
from mini_paged_attn.cache.paged_kv_cache import PagedKVCache
from mini_paged_attn.engine.request import Request
from mini_paged_attn.engine.scheduler import Scheduler
from mini_paged_attn.engine.sequence import Sequence, SequenceStatus

BLOCK = 4
BLOCK_BYTES = BLOCK * 2 * 1 * 1 * 8 * 4  # one layer, one KV head of 8, float32


def _scheduler(num_blocks, max_num_seqs=8, budget=64):
    kv = PagedKVCache(PagedKVCacheConfig(num_blocks * BLOCK_BYTES, BLOCK), 1, 1, 8,
                      torch.float32, torch.device("cpu"), max_num_seqs, 256)
    return Scheduler(kv, max_num_seqs, budget)


def _request(rid, prompt_len, max_tokens=100, n=1):
    prompt = list(range(1000 * rid, 1000 * rid + prompt_len))  # no shared prefixes
    req = Request(rid, prompt, SamplingParams(n=n), max_tokens, frozenset(), n)
    req.seqs.append(Sequence(rid, req, req.prompt_token_ids))
    return req


def _step(sched):
    """One step; returns {seq_id: tokens computed}."""
    scheduled = sched.schedule()
    assert sum(n for _, n in scheduled) <= sched.max_num_batched_tokens
    assert sched._seats_in_use() <= sched.max_num_seqs
    for seq, n in scheduled:
        sched.kv_cache.mark_written(seq, seq.num_computed_tokens, n)
        seq.num_computed_tokens += n
        if seq.num_uncomputed_tokens == 0:
            seq.append_token(7, 0.0)
    return {seq.seq_id: n for seq, n in scheduled}


def test_long_prompts_are_chunked_within_the_budget():
    sched = _scheduler(64, budget=16)
    a, b = _request(0, 30), _request(1, 5)
    sched.add(a.seqs[0])
    sched.add(b.seqs[0])
    assert _step(sched) == {0: 16}
    assert _step(sched) == {0: 14, 1: 2}   # a finishes its prompt, b starts
    assert _step(sched) == {0: 1, 1: 3}
    assert _step(sched) == {0: 1, 1: 1}
    assert sched.stats.num_partial_prefills == 2


def test_admission_reserves_rows_for_forks():
    sched = _scheduler(64, max_num_seqs=4)
    reqs = [_request(0, 3, n=3), _request(1, 3, n=2), _request(2, 3)]
    for r in reqs:
        sched.add(r.seqs[0])
    assert set(_step(sched)) == {0}   # 3 rows for request 0; request 1 needs 2 more
    sched.finish(reqs[0].seqs[0])
    reqs[0].seqs[0].status = SequenceStatus.FINISHED
    assert set(_step(sched)) == {1, 2}


def test_preemption_takes_the_newest_and_keeps_its_tokens():
    # 7 blocks of 4 tokens; three sequences of 7 tokens take 2 blocks each.
    sched = _scheduler(7)
    reqs = [_request(i, 7) for i in range(3)]
    for r in reqs:
        sched.add(r.seqs[0])
    assert _step(sched) == {0: 7, 1: 7, 2: 7}
    # Each now has 8 tokens (a sampled one): the next token needs a third block.
    assert _step(sched) == {0: 1, 1: 1, 2: 1}
    step = _step(sched)   # 0 takes the last free block; 1 needs one too: 2 is preempted
    newest = reqs[2].seqs[0]
    assert newest.status == SequenceStatus.WAITING and sched.waiting[0] is newest
    assert newest.token_ids == list(range(2000, 2007)) + [7, 7]
    assert newest.num_computed_tokens == 0
    assert step == {0: 1, 1: 1} and sched.stats.num_preemptions == 1
    # Freeing a finished sequence lets the preempted one back in. Of its two
    # full blocks, 1 took the tail one (evicted); the first comes from the
    # prefix cache.
    sched.finish(reqs[0].seqs[0])
    _step(sched)
    assert newest.status == SequenceStatus.RUNNING and newest.num_cached_tokens == 4


def test_finished_sequences_free_their_blocks_at_once():
    sched = _scheduler(16)
    req = _request(0, 10)
    sched.add(req.seqs[0])
    _step(sched)
    assert sched.kv_cache.num_used_blocks == 3
    sched.finish(req.seqs[0])
    assert sched.kv_cache.num_used_blocks == 0 and not sched.has_unfinished
