"""Beam search over the engine: beams are sequences that share their common
prefix's blocks (``fork`` + copy-on-write), scored as Hugging Face
transformers scores them so both find the same beams."""
from __future__ import annotations

from typing import FrozenSet, List, Tuple

import torch

from ..outputs import CompletionOutput, RequestOutput
from .llm_engine import LLMEngine
from .sequence import Sequence

# (normalised score, cumulative log-probability, generated ids, finish reason)
Hypothesis = Tuple[float, float, List[int], str]


def beam_search(engine: LLMEngine, prompt: List[int], beam_width: int, max_tokens: int,
                length_penalty: float, stop_token_ids: FrozenSet[int]) -> RequestOutput:
    """Keeps the ``beam_width`` most likely continuations, step by step.

    As in transformers (``early_stopping=False``): each step ranks the
    candidates (beam, next token) by cumulative log-probability and keeps
    ``max(2, 1 + #stop ids) * beam_width`` of them; a candidate among the first
    ``beam_width`` that ends in a stop id (or reaches ``max_tokens``) becomes a
    finished hypothesis scored ``logprob / generated_len ** length_penalty``;
    the best ``beam_width`` others continue. It stops when every finished slot
    is taken and no running beam can beat the worst of them.
    """
    request = engine.add_request(prompt, None, max_tokens, stop_token_ids, beam_width)
    scheduler = engine.scheduler
    beams: List[Sequence] = list(request.seqs)
    finished: List[Hypothesis] = []
    keep = max(2, 1 + len(stop_token_ids)) * beam_width
    for step in range(max_tokens):
        while any(b.logprobs is None for b in beams):
            engine.step()
        # float32 sums, as transformers accumulates its beam scores.
        scores = torch.stack([torch.tensor(b.cumulative_logprob, dtype=torch.float32)
                              + b.logprobs.cpu() for b in beams])
        vocab = scores.size(1)
        top = scores.flatten().topk(min(keep, scores.numel()))
        gen_len = step + 1
        chosen: List[Tuple[Sequence, int, float]] = []
        for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            parent, token = beams[flat // vocab], flat % vocab
            if token in stop_token_ids or gen_len == max_tokens:
                if rank < beam_width:
                    reason = "stop" if token in stop_token_ids else "length"
                    finished.append((score / gen_len ** length_penalty, score,
                                     parent.output_token_ids + [token], reason))
            elif len(chosen) < beam_width:
                chosen.append((parent, token, score))
        finished = sorted(finished, key=lambda h: h[0], reverse=True)[:beam_width]
        if gen_len == max_tokens or not chosen:
            break
        beams = _advance(engine, request, beams, chosen)
        if len(finished) == beam_width and \
                chosen[0][2] / gen_len ** length_penalty <= finished[-1][0]:
            break
    for seq in beams:
        scheduler.drop(seq)
    outputs = [CompletionOutput(j, ids, logprob, reason)
               for j, (_, logprob, ids, reason) in enumerate(finished)]
    return RequestOutput(request.request_id, list(prompt), outputs, True,
                         request.num_cached_tokens or 0)


def _advance(engine: LLMEngine, request, beams: List[Sequence],
             chosen: List[Tuple[Sequence, int, float]]) -> List[Sequence]:
    """The next beams: a parent chosen k times continues itself and k - 1
    forks (sharing its blocks); a parent not chosen is dropped first, so the
    forks find free rows."""
    chosen_ids = {parent.seq_id for parent, _, _ in chosen}
    for seq in beams:
        if seq.seq_id not in chosen_ids:
            engine.scheduler.drop(seq)
            request.seqs.remove(seq)
    next_beams: List[Sequence] = []
    continued = set()
    for parent, _, _ in chosen:
        if parent.seq_id in continued:
            child = parent.fork(engine.new_seq_id(), len(next_beams))
            request.seqs.append(child)
            engine.scheduler.add_fork(parent, child)
            next_beams.append(child)
        else:
            continued.add(parent.seq_id)
            next_beams.append(parent)
    for seq, (_, token, score) in zip(next_beams, chosen):
        seq.token_ids.append(token)
        seq.cumulative_logprob = score
        seq.logprobs = None
    return next_beams
