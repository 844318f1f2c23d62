"""The defects a hostile probe found in the server (issue 18), one test each: a client's bad
value fails only its own request with a 400 naming the field, the body limit holds for
chunked bodies, a non-streaming client that hangs up stops costing tokens, and the open
routes leak nothing."""

import json
import socket
import threading
import time

import httpx
import pytest

C, CH = "/v1/completions", "/v1/chat/completions"
OK_C = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 4, "mode": "ar"}


@pytest.mark.parametrize("seed", [2 ** 70, -(2 ** 63) - 1])
def test_seed_out_of_range_is_a_400(serve, seed):
    s = serve()
    r = httpx.post(s.url + C, json={**OK_C, "seed": seed, "temperature": 1.0}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text


def test_largest_seeds_work_for_every_choice(serve, tiny_lm):
    s = serve()
    r = httpx.post(s.url + C, json={**OK_C, "seed": 2 ** 64 - 1, "n": 2, "temperature": 1.0},
                   timeout=60)
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["choices"]]
    # choice 1 takes seed + 1, which wraps to 0 (manual_seed's uint64 range)
    assert texts[1] == tiny_lm.generate("w1 w2", chat=False, max_new_tokens=4, mode="ar",
                                        temperature=1.0, seed=0).text


def test_a_bad_request_does_not_fail_its_batch(serve, tiny_lm):
    s = serve(max_batch=4)
    s.app.state.scheduler.pause()
    out = {}

    def good():
        out["r"] = httpx.post(s.url + C, json={**OK_C, "max_tokens": 6}, timeout=60)

    t = threading.Thread(target=good)
    t.start()
    deadline = time.time() + 10
    while s.app.state.scheduler.queued() < 1 and time.time() < deadline:
        time.sleep(0.02)
    bad = httpx.post(s.url + C, json={**OK_C, "seed": 2 ** 70, "temperature": 1.0},
                     timeout=60)
    s.app.state.scheduler.pause(False)
    t.join(60)
    assert bad.status_code == 400 and out["r"].status_code == 200
    assert out["r"].json()["choices"][0]["text"] == tiny_lm.generate(
        "w1 w2", chat=False, max_new_tokens=6, mode="ar").text


@pytest.mark.parametrize("route,body,param", [
    (CH, {"model": "tiny", "messages": [{"role": "user", "content": "w1 \ud800"}]},
     "messages.0.content"),
    (C, {"model": "tiny", "prompt": "w1 \udfff"}, "prompt"),
    (C, {"model": "tiny", "prompt": "w1", "stop": ["\ud800"]}, "stop"),
])
def test_lone_surrogate_is_a_400_naming_the_field(serve, route, body, param):
    s = serve()
    r = httpx.post(s.url + route, content=json.dumps(body), timeout=60,  # ascii: \\ud800
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "surrogate" in r.text or param == "stop"  # stop's union names its first type


@pytest.mark.parametrize("route,body,param", [
    (C, {**OK_C, "prompt": " ".join(["w5"] * 5000)}, "prompt"),
    (CH, {"model": "tiny", "messages": [{"role": "user", "content": " ".join(["w5"] * 5000)}]},
     "messages"),
])
def test_prompt_over_the_context_names_its_field(serve, route, body, param):
    s = serve()
    r = httpx.post(s.url + route, json=body, timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param
    assert err["code"] == "context_length_exceeded"


def test_request_larger_than_the_queue_is_a_400_and_429_has_retry_after(serve):
    s = serve(max_batch=1, max_queue=2)
    r = httpx.post(s.url + C, json={**OK_C, "n": 3}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert "never" in r.json()["error"]["message"]
    r = httpx.post(s.url + C, json={**OK_C, "prompt": ["w1", "w2", "w3"]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    sched = s.app.state.scheduler
    sched.pause()
    t = threading.Thread(target=lambda: httpx.post(s.url + C, json={**OK_C, "n": 2},
                                                   timeout=60))
    t.start()
    deadline = time.time() + 10
    while sched.queued() < 2 and time.time() < deadline:
        time.sleep(0.02)
    r = httpx.post(s.url + C, json=OK_C, timeout=60)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    sched.pause(False)
    t.join(30)


def test_chunked_body_over_the_limit_is_refused_while_streaming(tiny_lm):
    from nextblock.serving import BackgroundServer, create_app
    s = BackgroundServer(create_app(tiny_lm, served_name="tiny", max_body_bytes=10_000))
    sent = []

    def chunks():  # no Content-Length: httpx sends it chunked
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(2000):  # 20 MB if read whole
            sent.append(1)
            yield b"w1 " * 3400
        yield b'"}'

    try:
        try:
            r = httpx.post(s.url + C, content=chunks(), timeout=60,
                           headers={"content-type": "application/json"})
            status = r.status_code
            assert "larger than" in r.json()["error"]["message"]
        except httpx.HTTPError:  # the server answered and closed before the upload ended
            status = 413
        assert status == 413
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200
    finally:
        s.stop()


def test_malformed_content_length_gets_the_openai_error_format(serve):
    s = serve()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 12abc\r\n\r\n{}")
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after it
            reply += chunk
        reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 400")
    assert '"error"' in reply and "Content-Length" in reply


def test_non_streaming_request_is_cancelled_when_the_client_leaves(serve, monkeypatch):
    from nextblock.serving import scheduler
    step = scheduler._Batch.step
    monkeypatch.setattr(scheduler._Batch, "step",  # a slow model: 3000 tokens take > 6 s
                        lambda self: time.sleep(0.002) or step(self))
    s = serve(max_batch=1)
    sched = s.app.state.scheduler
    body = {"model": "tiny", "prompt": "w8", "max_tokens": 3000, "mode": "ar"}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(s.url + C, json=body, timeout=httpx.Timeout(60, read=1.5))
    deadline = time.time() + 10
    while sched.stats()["finished"].get("cancelled", 0) < 1 and time.time() < deadline:
        time.sleep(0.05)
    stats = sched.stats()
    assert stats["finished"].get("cancelled") == 1, stats
    assert stats["tokens_generated"] < 3000


def test_open_routes_leak_no_path_and_load_nothing_remote(tiny_lm, tiny_dir):
    from fastapi.testclient import TestClient

    from nextblock.serving import create_app
    lm = tiny_lm
    old = lm.name
    lm.name = str(tiny_dir)  # loaded from a directory: the name is its path
    try:
        with TestClient(create_app(lm, api_key="k"),
                        headers={"authorization": "Bearer k"}) as c:
            health = c.get("/health")
            assert health.status_code == 200 and str(tiny_dir) not in health.text
            assert "/" not in health.json()["model"]
            assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    finally:
        lm.name = old


def test_metrics_count_no_forward_with_zero_rows(serve):
    s = serve()
    for _ in range(3):
        assert httpx.post(s.url + C, json={**OK_C, "mode": "block", "block_size": 4,
                                           "threshold": 0.0}, timeout=60).status_code == 200
    sizes = httpx.get(s.url + "/metrics").json()["batch_sizes"]
    assert sizes and "0" not in sizes, sizes
