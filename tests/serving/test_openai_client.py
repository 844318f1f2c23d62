"""The official openai client against a live server: completions, chat, streaming, usage,
stop strings, seeds, n, auth. Outputs equal the Python API's for the same settings."""

import httpx
import openai
import pytest


@pytest.fixture
def client(serve):
    s = serve()
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused"), s


def test_models_and_health(client):
    c, s = client
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert httpx.get(s.url + "/health").json()["status"] == "ok"


def test_completion_matches_the_python_api(client, tiny_lm):
    c, _ = client
    r = c.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=9,
                             extra_body={"mode": "block", "block_size": 4, "threshold": 0.5})
    ref = tiny_lm.generate("w1 w2 w3", chat=False, max_new_tokens=9, mode="block",
                           block_size=4, threshold=0.5)
    assert r.choices[0].text == ref.text
    assert r.usage.prompt_tokens == len(tiny_lm.encode("w1 w2 w3", chat=False))
    assert r.usage.completion_tokens == len(ref.tokens)
    assert r.choices[0].finish_reason == ref.completions[0].finish_reason


def test_chat_and_streaming_agree(client, tiny_lm):
    c, _ = client
    msgs = [{"role": "system", "content": "w9"}, {"role": "user", "content": "w4 w5"}]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                  extra_body={"mode": "ar"})
    ref = tiny_lm.generate(msgs, max_new_tokens=12, mode="ar")
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].message.role == "assistant"
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                            stream=True, extra_body={"mode": "ar"},
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ref.text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == len(ref.tokens)
    assert len([ch for ch in chunks if ch.choices]) > 3  # several commits, several chunks


def test_stop_strings(client, tiny_lm):
    c, _ = client
    free = tiny_lm.generate("w7 w8", chat=False, max_new_tokens=16, mode="ar").text.split()
    stop = free[4]
    r = c.completions.create(model="tiny", prompt="w7 w8", max_tokens=16, stop=[stop],
                             extra_body={"mode": "ar"})
    assert stop not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == " ".join(free)[:" ".join(free).find(stop)]


def test_seed_reproducibility_and_n(client):
    c, _ = client
    kw = dict(model="tiny", prompt="w3 w3", max_tokens=10, temperature=1.0,
              extra_body={"mode": "ar"})
    a = c.completions.create(seed=5, **kw).choices[0].text
    assert c.completions.create(seed=5, **kw).choices[0].text == a
    others = {c.completions.create(seed=s, **kw).choices[0].text for s in (6, 7, 8)}
    assert others - {a}
    r = c.completions.create(seed=5, n=2, **kw)
    assert [ch.index for ch in r.choices] == [0, 1] and r.choices[0].text == a


def test_api_key(serve):
    s = serve(api_key="sekret")
    ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret")
    assert ok.models.list().data[0].id == "tiny"
    bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt="w1", max_tokens=2)
    r = httpx.get(s.url + "/v1/models")
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(s.url + "/health").status_code == 200  # health stays open


def test_reasoning_content(serve, tiny_lm):
    """Markers chosen among words the tiny model writes: the text between them comes back
    as reasoning_content, the rest as content, streamed the same way."""
    from nextblock.text import ReasoningSplitter

    msgs = [{"role": "user", "content": "w9 w9"}]  # a reply of 24 varied words
    words = tiny_lm.generate(msgs, max_new_tokens=24, mode="ar").text.split()
    opening, closing = words[1], next(w for w in words[3:] if w != words[1])
    s = serve(reasoning=(opening, closing))
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=24,
                                  extra_body={"mode": "ar"})
    reasoning, content = ReasoningSplitter(opening, closing).split(" ".join(words))
    assert reasoning and r.choices[0].message.content == content
    assert r.choices[0].message.model_extra["reasoning_content"] == reasoning
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=24,
                                            stream=True, extra_body={"mode": "ar"}))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == content
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == \
        reasoning
