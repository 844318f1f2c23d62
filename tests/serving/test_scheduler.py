"""Concurrency: simultaneous streaming clients with different prompts and settings each get
exactly their single-request text (no cross-talk), batching really happens, a client that
disconnects frees its slot, and the queue bound answers 429."""

import json
import threading
import time

import httpx


def stream_text(url, body, out, key, started=None):
    text = []
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text.append(json.loads(line[6:])["choices"][0]["text"])
                if started is not None:
                    started.set()
    out[key] = "".join(text)


REQUESTS = [
    dict(prompt="w1 w2", max_tokens=14, mode="ar"),
    dict(prompt="w5 w6 w7 w8 w9", max_tokens=9, mode="ar"),
    dict(prompt="w3", max_tokens=20, mode="ar", temperature=1.0, seed=4),
    dict(prompt="w10 w11 w12", max_tokens=13, mode="block", block_size=4, threshold=0.5),
    dict(prompt="w20 w21", max_tokens=7, mode="block", block_size=4, threshold=0.5),
    dict(prompt="w30 w31 w32 w33", max_tokens=11, mode="verified", block_size=4,
         threshold=0.0),
]


def test_concurrent_streams_get_their_own_text_and_are_batched(serve, tiny_lm):
    expected = {}
    for i, r in enumerate(REQUESTS):
        kw = {k: v for k, v in r.items() if k not in ("prompt", "max_tokens")}
        expected[i] = tiny_lm.generate(r["prompt"], chat=False, max_new_tokens=r["max_tokens"],
                                       **kw).text
    s = serve(max_batch=8)
    sched = s.app.state.scheduler
    sched.pause()  # hold the worker so every request is queued before decoding starts
    out = {}
    threads = [threading.Thread(target=stream_text, args=(s.url, {"model": "tiny", **r},
                                                          out, i))
               for i, r in enumerate(REQUESTS)]
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while sched.queued() < len(REQUESTS) and time.time() < deadline:
        time.sleep(0.02)
    sched.pause(False)
    for t in threads:
        t.join(60)
    assert out == expected
    stats = httpx.get(s.url + "/metrics").json()
    assert stats["max_batch_seen"] >= 2  # the two greedy AR requests shared forwards
    assert stats["finished"].get("length", 0) + stats["finished"].get("stop", 0) == 6


def test_requests_join_a_running_batch(serve, tiny_lm):
    """A request arriving while another is decoding joins its batch between commits."""
    s = serve()
    long = dict(model="tiny", prompt="w8", max_tokens=1500, mode="ar")  # no early EOS
    out, started = {}, threading.Event()
    t = threading.Thread(target=stream_text, args=(s.url, long, out, "long", started))
    t.start()
    assert started.wait(30)
    sched = s.app.state.scheduler
    sched.pause()  # mid-generation: the next request must join, not wait for the end
    short = {}
    t2 = threading.Thread(target=lambda: short.update(r=httpx.post(
        s.url + "/v1/completions", timeout=60,
        json={"model": "tiny", "prompt": "w2 w3", "max_tokens": 8, "mode": "ar"})))
    t2.start()
    deadline = time.time() + 20
    while sched.queued() < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert sched.active() == 1
    sched.pause(False)
    t2.join(60)
    t.join(60)
    assert short["r"].json()["choices"][0]["text"] == tiny_lm.generate(
        "w2 w3", chat=False, max_new_tokens=8, mode="ar").text
    assert out["long"] == tiny_lm.generate("w8", chat=False, max_new_tokens=1500,
                                           mode="ar").text
    assert s.app.state.scheduler.stats()["max_batch_seen"] >= 2


def test_disconnect_frees_the_slot(serve):
    s = serve(max_batch=1)
    sched = s.app.state.scheduler
    body = {"model": "tiny", "prompt": "w8", "max_tokens": 3000, "mode": "ar", "stream": True}
    with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    t0 = time.time()
    r = httpx.post(s.url + "/v1/completions", timeout=60,
                   json={"model": "tiny", "prompt": "w2", "max_tokens": 4, "mode": "ar"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert time.time() - t0 < 10  # not after the abandoned 3000 tokens
    deadline = time.time() + 10
    while sched.stats()["finished"].get("cancelled", 0) < 1 and time.time() < deadline:
        time.sleep(0.05)
    stats = sched.stats()
    assert stats["finished"]["cancelled"] == 1 and stats["active"] == 0
    assert stats["tokens_generated"] < 3000


def test_queue_bound_gives_429(serve):
    s = serve(max_batch=1, max_queue=1)
    sched = s.app.state.scheduler
    sched.pause()
    body = {"model": "tiny", "prompt": "w1", "max_tokens": 3, "mode": "ar"}
    first = threading.Thread(target=lambda: httpx.post(s.url + "/v1/completions", json=body,
                                                       timeout=60))
    first.start()
    deadline = time.time() + 10
    while sched.queued() < 1 and time.time() < deadline:
        time.sleep(0.02)
    r = httpx.post(s.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    sched.pause(False)
    first.join(30)


def test_graceful_shutdown_finishes_in_flight_streams(serve, tiny_lm):
    s = serve()
    out, started = {}, threading.Event()
    body = dict(model="tiny", prompt="w8", max_tokens=400, mode="ar")
    t = threading.Thread(target=stream_text, args=(s.url, body, out, "a", started))
    t.start()
    assert started.wait(30)
    s.stop()  # SIGTERM-like: stop accepting, let the running stream end
    t.join(60)
    assert out["a"] == tiny_lm.generate("w8", chat=False, max_new_tokens=400, mode="ar").text
    try:
        httpx.post(s.url + "/v1/completions", json=body, timeout=5)
        refused = False
    except httpx.HTTPError:
        refused = True
    assert refused


def test_close_ends_unfinished_jobs_with_a_clear_error(tiny_lm):
    import asyncio

    from nextblock.serving.scheduler import Scheduler, ShuttingDown

    async def main():
        sched = Scheduler(tiny_lm, max_batch=2)
        s = tiny_lm.settings(mode="ar", max_new_tokens=3000)
        ids = [tiny_lm.encode("w8", chat=False)]
        jobs, q = sched.submit(ids, s, 3000, None)
        kind = None
        while kind != "tokens":
            _, kind, _ = await q.get()
        await asyncio.get_running_loop().run_in_executor(None, sched.close, 0.0)
        while kind not in ("done", "error"):
            _, kind, value = await q.get()
        try:
            sched.submit(ids, s, 10, None)
            refused = False
        except ShuttingDown:
            refused = True
        return kind, value, refused

    kind, value, refused = asyncio.run(main())
    assert kind == "error" and "shut down" in value and refused
