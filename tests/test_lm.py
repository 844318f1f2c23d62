"""The generation API on a tiny saved model: prompts, context limit, stop strings, streaming."""

import pytest

import nextblock
from nextblock.errors import InputError
from tests.helpers import save_tiny


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return nextblock.load(save_tiny(tmp_path_factory.mktemp("m") / "tiny",
                                    max_position_embeddings=64))


def test_empty_and_malformed_prompts(lm):
    for bad in ["", "   ", [], [{"role": "user"}], 42]:
        with pytest.raises(InputError):
            lm.generate(bad)


def test_prompt_longer_than_context(lm):
    with pytest.raises(InputError, match="prompt is 79 tokens long but the model's context is 64"):
        lm.generate(" ".join(["w5"] * 79), chat=False)


def test_chat_template_is_applied_unless_disabled(lm):
    chat = lm.encode("w1 w2")
    plain = lm.encode("w1 w2", chat=False)
    assert len(chat) > len(plain)
    assert lm.encode([{"role": "user", "content": "w1 w2"}]) == chat


def test_stop_string_cuts_text_and_stream_matches(lm):
    kw = dict(chat=False, mode="block", block_size=4, threshold=0.5, max_new_tokens=24)
    free = lm.generate("w3 w9 w4", **kw)
    words = free.text.split()
    assert len(words) >= 6
    stop = words[4]
    first = free.text.find(stop)
    cut = lm.generate("w3 w9 w4", stop=[stop], **kw)
    assert cut.text == free.text[:first]  # OpenAI semantics: text ends before the stop
    assert cut.completions[0].finish_reason == "stop"
    assert len(cut.tokens) < len(free.tokens)
    assert "".join(lm.stream("w3 w9 w4", stop=[stop], **kw)) == cut.text
    assert "".join(lm.stream("w3 w9 w4", **kw)) == free.text


def test_batch_generation_returns_one_completion_per_prompt(lm):
    prompts = ["w1", "w2 w3 w4 w5", "w6 w7"]
    gen = lm.generate(prompts, chat=False, mode="block", block_size=4, max_new_tokens=9)
    singles = [lm.generate(p, chat=False, mode="block", block_size=4, max_new_tokens=9)
               for p in prompts]
    assert [c.tokens for c in gen.completions] == [g.tokens for g in singles]
    assert [c.prompt_tokens for c in gen.completions] == [len(lm.encode(p, False)) for p in prompts]


def test_sampling_is_reproducible_with_a_seed(lm):
    kw = dict(chat=False, mode="block", block_size=4, temperature=1.0, max_new_tokens=16)
    a = lm.generate("w1 w2", seed=3, **kw).tokens
    assert a == lm.generate("w1 w2", seed=3, **kw).tokens
    assert any(lm.generate("w1 w2", seed=s, **kw).tokens != a for s in (4, 5, 6))


def test_prefill_once_then_generate_and_stream_from_it(lm):
    doc = " ".join(f"w{i}" for i in range(10, 40))
    p = lm.prefill(doc, chat=False, prefill_chunk=7)
    for prompt in (doc, doc + " w7 w8"):
        for mode in ("ar", "block"):
            want = lm.generate(prompt, chat=False, mode=mode, block_size=4, max_new_tokens=9)
            got = lm.generate(prompt, chat=False, mode=mode, block_size=4, max_new_tokens=9,
                              prefix=p)
            assert got.tokens == want.tokens
    streamed = "".join(lm.stream(doc, chat=False, mode="ar", max_new_tokens=9, prefix=p))
    assert streamed == lm.generate(doc, chat=False, mode="ar", max_new_tokens=9).text
    with pytest.raises(InputError, match="starts with the prefilled tokens"):
        lm.generate("w1 w2", chat=False, prefix=p)
