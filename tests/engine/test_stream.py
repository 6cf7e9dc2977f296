"""LLM.stream (outputs as tokens arrive, aborting on an early exit) and
generate's progress bar."""
import pytest

from mini_paged_attn import LLM, SamplingParams
from mini_paged_attn.models.config import ModelConfig

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return LLM(ModelConfig.tiny(), device="cpu", max_num_seqs=4)


def test_stream_yields_growing_outputs_then_the_final_ones(llm):
    final = {o.request_id: o for o in llm.generate(PROMPTS, GREEDY)}
    seen = {}
    for out in llm.stream(PROMPTS, GREEDY):
        before = seen.get(out.request_id)
        n = len(out.outputs[0].token_ids)
        assert before is None or n >= len(before.outputs[0].token_ids)
        seen[out.request_id] = out
    assert len(seen) == 3 and all(o.finished for o in seen.values())
    by_prompt = {tuple(o.prompt_token_ids): o.outputs[0].token_ids for o in final.values()}
    assert all(by_prompt[tuple(o.prompt_token_ids)] == o.outputs[0].token_ids
               for o in seen.values())


def test_breaking_out_aborts_and_frees(llm):
    stream = llm.stream(PROMPTS, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    for out in stream:
        if out.outputs[0].token_ids:
            break
    stream.close()
    assert not llm.engine.has_unfinished
    assert llm.engine.kv_cache.num_used_blocks == 0
    assert len(llm.generate(PROMPTS, GREEDY)) == 3  # still usable


def test_generate_inside_a_stream_does_not_deadlock(llm):
    stream = llm.stream([[5, 6, 7]], GREEDY)
    next(stream)
    assert len(llm.generate([[8, 9]], GREEDY)[0].outputs[0].token_ids) == 5
    rest = list(stream)
    assert rest and rest[-1].finished and len(rest[-1].outputs[0].token_ids) == 5


def test_progress_bar(llm, capsys):
    pytest.importorskip("tqdm")
    llm.generate(PROMPTS, GREEDY, use_tqdm=True)
    assert "3/3" in capsys.readouterr().err
