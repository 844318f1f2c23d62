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


@pytest.mark.parametrize("mode", ["ar", "block", "verified"])
def test_generate_each_batches_continuously_with_the_answers_of_batch_one(lm, mode):
    prompts = ["w1", "w2 w3 w4 w5", "w6 w7", "w8 w9 w10", "w11"]
    kw = dict(chat=False, mode=mode, block_size=4, threshold=0.5, max_new_tokens=12)
    free = [lm.generate(p, **kw).text.split() for p in prompts]
    # per-prompt stop strings, so rows end at different times and waiting ones join
    stops = [(w[min(k, len(w) - 1)],) if k is not None and w else ()
             for w, k in zip(free, [1, None, 4, 0, 7])]
    singles = [lm.generate(p, stop=list(st), **kw) for p, st in zip(prompts, stops)]
    order, got = [], {}
    for i, g in lm.generate_each(prompts, batch_size=2, stops=stops, **kw):
        order.append(i)
        got[i] = g
    assert sorted(order) == list(range(5))
    for i, one in enumerate(singles):
        assert got[i].tokens == one.tokens and got[i].text == one.text
        assert got[i].completions[0].finish_reason == one.completions[0].finish_reason
        assert got[i].drafted == one.drafted and got[i].accepted == one.accepted
        if mode == "ar":  # a row takes part in exactly its own forwards
            assert got[i].forwards == one.forwards
        else:  # lockstep: a row may wait for another's denoise steps
            assert got[i].forwards >= one.forwards
    assert all(g.seconds > 0 for g in got.values())


def test_generate_each_regex_stop_keeps_the_match_and_checks_inputs(lm):
    import re

    kw = dict(chat=False, mode="ar", max_new_tokens=16)
    free = lm.generate("w3 w9", **kw)
    word = free.text.split()[3]
    end = free.text.find(word) + len(word)
    (_, g), = lm.generate_each(["w3 w9"], stops=[(re.compile(re.escape(word)),)], **kw)
    assert g.text == free.text[:end] and g.completions[0].finish_reason == "stop"
    assert len(g.tokens) < len(free.tokens)
    with pytest.raises(InputError, match="one entry per prompt"):
        list(lm.generate_each(["w1", "w2"], stops=[()], **kw))
    with pytest.raises(InputError, match="batch_size"):
        list(lm.generate_each(["w1"], batch_size=0, **kw))
