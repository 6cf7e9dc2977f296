"""engine/prompts.py: every reasonable prompt form becomes a list of ints;
anything else is a clear error naming the prompt."""
import numpy as np
import pytest
import torch

from mini_paged_attn import LLM, SamplingParams
from mini_paged_attn.models.config import ModelConfig
from mini_paged_attn.engine.prompts import prompt_list, token_ids


@pytest.mark.parametrize("prompt", [
    [3, 1, 4], (3, 1, 4), [np.int64(3), np.int32(1), np.uint8(4)], np.array([3, 1, 4]),
    torch.tensor([3, 1, 4]), torch.tensor([3, 1, 4], dtype=torch.int32),
    [torch.tensor(3), torch.tensor(1), torch.tensor(4)], iter([3, 1, 4]),
    (t for t in [3, 1, 4]),
], ids=lambda p: type(p).__name__)
def test_prompt_forms(prompt):
    ids = token_ids(prompt, 10)
    assert ids == [3, 1, 4] and all(type(t) is int for t in ids)


@pytest.mark.parametrize("prompt,exc,match", [
    ("hello", TypeError, "string"),
    (b"hi", TypeError, "string"),
    (5, TypeError, "sequence of token ids"),
    ([1, 2.0], TypeError, r"prompt\[1\]"),
    ([1, True], TypeError, r"prompt\[1\]"),
    ([1, None], TypeError, r"prompt\[1\]"),
    (torch.tensor([1.0, 2.0]), TypeError, r"prompt\[0\]"),
    (np.array([[1, 2]]), ValueError, "1-D"),
    ([], ValueError, "empty"),
    ([1, 10], ValueError, r"prompt\[1\] = 10"),
    ([-1], ValueError, r"prompt\[0\] = -1"),
])
def test_bad_prompts(prompt, exc, match):
    with pytest.raises(exc, match=match):
        token_ids(prompt, 10)


def test_prompt_list_forms():
    assert prompt_list([1, 2]) == [[1, 2]]
    assert prompt_list([np.int64(1), 2]) == [[np.int64(1), 2]]
    assert prompt_list([[1], [2, 3]]) == [[1], [2, 3]]
    assert len(prompt_list(torch.ones(3, 4, dtype=torch.long))) == 3
    assert len(prompt_list(np.ones(4, dtype=np.int64))) == 1
    assert prompt_list(p for p in [[1], [2]]) == [[1], [2]]
    assert prompt_list("hi") == ["hi"] and prompt_list({"prompt": "hi"}) == [{"prompt": "hi"}]
    with pytest.raises(TypeError, match="bytes"):
        prompt_list(b"hi")
    with pytest.raises(TypeError, match="prompts"):
        prompt_list(7)


def test_generate_takes_arrays_and_tensors():
    llm = LLM(ModelConfig.tiny(), device="cpu", max_num_seqs=4)
    greedy = SamplingParams(temperature=0, max_tokens=4)
    ref = [o.outputs[0].token_ids for o in llm.generate([[5, 6, 7], [8, 9]], greedy)]
    as_arrays = llm.generate([np.array([5, 6, 7]), torch.tensor([8, 9])], greedy)
    assert [o.outputs[0].token_ids for o in as_arrays] == ref
    assert llm.generate(torch.tensor([5, 6, 7]), greedy)[0].outputs[0].token_ids == ref[0]
    with pytest.raises(TypeError, match=r"prompt\[1\]"):
        llm.generate([[5, 6.5]], greedy)
    assert not llm.engine.has_unfinished
