"""Text in and out: the checkpoint's tokenizer (a byte-level BPE trained here,
offline), text and dict prompts, output text, stop strings, chat templates and
incremental detokenization across split UTF-8 characters."""
import pytest

from mini_paged_attn import LLM, SamplingParams
from mini_paged_attn.tokenizer import IncrementalDetokenizer, decode_output, find_stop
from text_checkpoint import make_text_checkpoint

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_text_checkpoint(tmp_path_factory.mktemp("text_model"))


@pytest.fixture(scope="module")
def llm(checkpoint):
    return LLM(checkpoint, device="cpu", max_num_seqs=8)


def test_text_and_dict_prompts(llm):
    tok = llm.get_tokenizer()
    ids = tok("The quick brown").input_ids
    by_text = llm.generate("The quick brown", GREEDY)[0]
    assert by_text.prompt == "The quick brown" and by_text.prompt_token_ids == ids
    out = by_text.outputs[0]
    assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)
    by_ids = llm.generate([ids], GREEDY)[0]
    by_dict = llm.generate([{"prompt_token_ids": ids}, {"prompt": "The quick brown"}], GREEDY)
    assert by_ids.outputs[0].token_ids == out.token_ids and by_ids.prompt is None
    assert all(o.outputs[0].text == out.text for o in by_dict)
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([{"text": "x"}], GREEDY)


def test_stop_strings(llm):
    free = llm.generate("Paged attention", SamplingParams(temperature=0, max_tokens=30,
                                                          ignore_eos=True))[0].outputs[0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    cut = free.text.index(stop)
    out = llm.generate("Paged attention", SamplingParams(temperature=0, max_tokens=30,
                                                         ignore_eos=True, stop=[stop]))[0]
    o = out.outputs[0]
    assert o.finish_reason == "stop" and o.text == free.text[:cut]
    assert free.token_ids[:len(o.token_ids)] == o.token_ids  # ends at the completing token
    kept = llm.generate("Paged attention", SamplingParams(
        temperature=0, max_tokens=30, ignore_eos=True, stop=stop,
        include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == free.text[:cut + len(stop)]


def test_stop_strings_need_a_tokenizer(checkpoint):
    bare = LLM(checkpoint, device="cpu", skip_tokenizer_init=True)
    assert bare.get_tokenizer() is None
    with pytest.raises(ValueError, match="tokenizer"):
        bare.generate([[5, 6]], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="tokenizer"):
        bare.generate("text")
    assert bare.generate([[5, 6]], GREEDY)[0].outputs[0].text == ""


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "hello"}]
    out = llm.chat(messages, GREEDY)[0]
    assert out.prompt == "<|user|>hello</s><|assistant|>"
    ids = llm.get_tokenizer()(out.prompt, add_special_tokens=False).input_ids
    assert out.prompt_token_ids == ids
    assert llm.chat([messages, messages], GREEDY)[1].outputs[0].token_ids == \
        out.outputs[0].token_ids


def test_max_tokens_none_runs_to_the_model_length(llm):
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=None,
                                                   ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 256 - 3 and out.finish_reason == "length"


def test_incremental_text_across_split_characters(llm):
    tok = llm.get_tokenizer()
    text = "héllo wörld, 世界 and 🎉 emoji"
    ids = tok(text, add_special_tokens=False).input_ids
    # Byte-level BPE splits the CJK and emoji bytes over several tokens.
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    pieces = [detok.append(t) for t in ids]
    assert "".join(pieces) == detok.text == text
    assert all("\ufffd" not in p for p in pieces)
    prompt = tok("The quick", add_special_tokens=False).input_ids
    assert decode_output(tok, prompt, ids) == text


def test_find_stop():
    assert find_stop("abcdef", 2, ["de", "f"]) == 3
    assert find_stop("abcdef", 1, ["bc"]) is None  # completed by earlier characters
    assert find_stop("abcdef", 1, ["ef", "cdef"]) == 2


def test_streamed_text_grows_by_whole_characters_to_the_final_text(llm):
    # While a request runs its text is built token by token; every streamed
    # text is a prefix of the final one (a character split over tokens shows
    # up once whole: the random model also emits invalid UTF-8, which reads
    # as U+FFFD in both).
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=40, ignore_eos=True)
    prompts = ["héllo wörld, 世界", "🎉 emoji and", "def f(x):"]
    final = {o.prompt: o.outputs[0].text for o in llm.generate(prompts, params)}
    seen = {}
    for out in llm.stream(prompts, params):
        text = out.outputs[0].text
        assert final[out.prompt].startswith(text)
        assert text.startswith(seen.get(out.prompt, ""))
        seen[out.prompt] = text
    assert seen == final
