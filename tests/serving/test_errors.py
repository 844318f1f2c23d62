"""Every malformed request gets a 4xx with an OpenAI-style error body naming the problem;
never a 500 for a client mistake."""

import pytest
from fastapi.testclient import TestClient

from nextblock.serving import create_app

C, CH = "/v1/completions", "/v1/chat/completions"
OK_C = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 4}
OK_CH = {"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "max_tokens": 4}
LONG = " ".join(["w5"] * 5000)

CASES = [  # (route, body or raw text, status, text the message must contain)
    (C, "{not json", 400, "JSON"),
    (C, "[1, 2]", 400, "valid dictionary"),
    (C, {**OK_C, "model": "gpt-9"}, 404, "gpt-9"),
    (C, {k: v for k, v in OK_C.items() if k != "model"}, 400, "model"),
    (C, {k: v for k, v in OK_C.items() if k != "prompt"}, 400, "prompt"),
    (C, {**OK_C, "prompt": ""}, 400, "prompt"),
    (C, {**OK_C, "prompt": ["w1", ""]}, 400, "prompt"),
    (C, {**OK_C, "prompt": 5}, 400, "prompt"),
    (C, {**OK_C, "prompt": [1, 2, 3]}, 400, "prompt"),
    (C, {**OK_C, "prompt": LONG}, 400, "context"),
    (C, {**OK_C, "max_tokens": 0}, 400, "max_tokens"),
    (C, {**OK_C, "max_tokens": -3}, 400, "max_tokens"),
    (C, {**OK_C, "max_tokens": "ten"}, 400, "max_tokens"),
    (C, {**OK_C, "max_tokens": 10 ** 6}, 400, "max_tokens"),
    (C, {**OK_C, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    (C, {**OK_C, "temperature": -1}, 400, "temperature"),
    (C, {**OK_C, "temperature": 3.5}, 400, "temperature"),
    (C, {**OK_C, "temperature": "hot"}, 400, "temperature"),
    (C, {**OK_C, "top_p": 0}, 400, "top_p"),
    (C, {**OK_C, "top_p": 1.5}, 400, "top_p"),
    (C, {**OK_C, "top_k": -1}, 400, "top_k"),
    (C, {**OK_C, "n": 0}, 400, "n"),
    (C, {**OK_C, "n": 100}, 400, "n"),
    (C, {**OK_C, "stream": "yes"}, 400, "stream"),
    (C, {**OK_C, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    (C, {**OK_C, "stop": [""]}, 400, "stop"),
    (C, {**OK_C, "stop": 7}, 400, "stop"),
    (C, {**OK_C, "seed": 1.5}, 400, "seed"),
    (C, {**OK_C, "mode": "turbo"}, 400, "mode"),
    (C, {**OK_C, "block_size": 0}, 400, "block_size"),
    (C, {**OK_C, "block_size": 4, "sub_block": 3}, 400, "sub_block"),
    (C, {**OK_C, "threshold": "high"}, 400, "threshold"),
    (C, {**OK_C, "confidence": "vibes"}, 400, "confidence"),
    (C, {**OK_C, "repetition_penalty": 0}, 400, "repetition_penalty"),
    (C, {**OK_C, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    (C, {**OK_C, "logprobs": True}, 400, "logprobs"),
    (C, {**OK_C, "echo": True}, 400, "echo"),
    (C, {**OK_C, "best_of": 2}, 400, "best_of"),
    (C, {**OK_C, "stream_options": {"include_usage": "x"}}, 400, "include_usage"),
    (CH, {**OK_CH, "messages": []}, 400, "messages"),
    (CH, {**OK_CH, "messages": "hello"}, 400, "messages"),
    (CH, {**OK_CH, "messages": [{"role": "wizard", "content": "w1"}]}, 400, "role"),
    (CH, {**OK_CH, "messages": [{"role": "user"}]}, 400, "content"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "messages.0.content"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": "w1", "extra": 1}]}, 400,
     "extra"),
    (CH, {**OK_CH, "messages": [{"role": "user", "content": LONG}]}, 400, "context"),
    (CH, {k: v for k, v in OK_CH.items() if k != "messages"}, 400, "messages"),
    ("/v1/nothing", OK_C, 404, "Not Found"),
]


@pytest.fixture(scope="module")
def client(tiny_lm):
    with TestClient(create_app(tiny_lm, served_name="tiny", max_tokens_limit=512,
                               max_body_bytes=200_000)) as c:
        yield c


def test_valid_requests_pass(client):
    assert client.post(C, json=OK_C).status_code == 200
    assert client.post(CH, json=OK_CH).status_code == 200


@pytest.mark.parametrize("route,body,status,needle", CASES,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(CASES)])
def test_malformed_request(client, route, body, status, needle):
    if isinstance(body, str):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] or needle == err.get("param"), err
    assert set(err) == {"message", "type", "param", "code"}


def test_body_size_limit(client):
    r = client.post(C, json={**OK_C, "prompt": "w1 " * 100_000})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
