"""What a step's logits go through before the sampler, for the rows that ask:
vLLM's repetition, frequency and presence penalties and ``min_tokens``; and the
top log-probabilities a row reports after it. Batched over the rows that ask
(one count tensor per step, no loop over the vocabulary); rows that ask for
none of it cost nothing.

Penalties as vLLM applies them: the repetition penalty divides positive (and
multiplies negative) logits of every token seen in the prompt or the output;
the frequency penalty subtracts ``penalty * count`` and the presence penalty
``penalty`` for each token of the output.
"""
from __future__ import annotations

from typing import Dict, List, Sequence as Seq

import torch

from .host_to_device import to_device
from .sequence import Sequence


def _token_counts(seqs: List[Sequence], vocab: int, prompt: bool, device) -> torch.Tensor:
    """``[len(seqs), vocab]`` counts of each row's output (or prompt) tokens."""
    flat = [r * vocab + t for r, s in enumerate(seqs)
            for t in (s.token_ids[:s.num_prompt_tokens] if prompt else s.output_token_ids)]
    return torch.bincount(to_device(flat, torch.int64, device),
                          minlength=len(seqs) * vocab).view(len(seqs), vocab)


def process_logits(logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
    """``logits [rows, vocab]`` of ``seqs`` with their penalties and
    ``min_tokens`` applied (a new tensor when any row asks, else ``logits``)."""
    params = [s.request.sampling_params for s in seqs]
    penalized = [i for i, p in enumerate(params) if p.has_penalties]
    held = [i for i, (s, p) in enumerate(zip(seqs, params))
            if s.num_output_tokens < p.min_tokens and s.request.stop_token_ids]
    if not penalized and not held:
        return logits
    logits = logits.clone()
    vocab, device = logits.size(1), logits.device
    if penalized:
        rows = to_device(penalized, torch.int64, device)
        group = [seqs[i] for i in penalized]
        out = _token_counts(group, vocab, False, device)
        seen = (out + _token_counts(group, vocab, True, device)) > 0
        x = logits[rows].float()

        def col(name):
            return to_device([getattr(params[i], name) for i in penalized], torch.float32,
                             device)[:, None]

        rep = col("repetition_penalty")
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
        x = x - col("frequency_penalty") * out - col("presence_penalty") * (out > 0)
        logits[rows] = x.to(logits.dtype)
    if held:
        # Below min_tokens, no stop id may be drawn.
        flat = [i * vocab + t for i in held for t in seqs[i].request.stop_token_ids
                if 0 <= t < vocab]
        logits.view(-1)[to_device(flat, torch.int64, device)] = float("-inf")
    return logits


def top_logprobs(logits: torch.Tensor, seqs: Seq[Sequence], tokens: List[int]
                 ) -> Dict[int, Dict[int, float]]:
    """For each row whose params ask for ``logprobs=k``: its k most likely
    tokens and the chosen one, with their log-probabilities under ``logits``."""
    asking = [i for i, s in enumerate(seqs) if s.request.sampling_params.logprobs is not None]
    if not asking:
        return {}
    rows = to_device(asking, torch.int64, logits.device)
    entries = logprob_entries(torch.log_softmax(logits[rows].float(), dim=-1),
                              [seqs[i].request.sampling_params.logprobs for i in asking],
                              [tokens[i] for i in asking])
    return dict(zip(asking, entries))


def logprob_entries(lp: torch.Tensor, ks: List[int], tokens: List[int]
                    ) -> List[Dict[int, float]]:
    """For each row of the log-probabilities ``lp [rows, vocab]``: its ``ks[r]``
    most likely tokens, best first, then ``tokens[r]`` (if not among them), with
    their log-probabilities. One topk and one gather for all rows."""
    k = min(max(ks), lp.size(1))
    top_v, top_i = lp.topk(k, dim=-1) if k > 0 else (lp[:, :0], lp[:, :0].long())
    chosen = lp.gather(1, to_device(tokens, torch.int64, lp.device)[:, None])[:, 0]
    top_v, top_i, chosen = top_v.tolist(), top_i.tolist(), chosen.tolist()
    entries = []
    for r, n in enumerate(ks):
        entry = dict(zip(top_i[r][:n], top_v[r][:n]))
        entry[tokens[r]] = chosen[r]
        entries.append(entry)
    return entries
