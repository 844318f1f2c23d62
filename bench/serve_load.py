"""Load test of `nextblock serve`: N concurrent streaming clients, per decoding mode.

    python bench/serve_load.py --model default --clients 4 --requests 16 --max-tokens 64
    python bench/serve_load.py --url http://127.0.0.1:8000 --model-name default  # running server

Without --url it starts the server in this process on a free loopback port. Each client
sends chat requests one after another (prompts from the shipped bench set) until
--requests have been sent in total; every request streams. Prints, per mode: requests/s,
generated tokens/s (completion tokens from the usage chunk over the wall time), p50/p95
time to first token and latency, errors, and the server's largest batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from nextblock.bench import load_prompts


async def one(client, url, body, rec):
    t0 = time.perf_counter()
    first, tokens = None, 0
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                rec["errors"] += 1
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    rec["errors"] += 1
                    return
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and any(c.get("delta", {}).get("content")
                                         for c in chunk.get("choices", [])):
                    first = time.perf_counter() - t0
    except httpx.HTTPError:
        rec["errors"] += 1
        return
    rec["ttft"].append(first if first is not None else time.perf_counter() - t0)
    rec["latency"].append(time.perf_counter() - t0)
    rec["tokens"] += tokens


async def load(url, model, mode, clients, total, max_tokens, prompts, headers):
    rec = {"ttft": [], "latency": [], "tokens": 0, "errors": 0}
    counter = iter(range(total))
    body = {"model": model, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **mode}

    async def client_loop(client):
        for i in counter:
            msgs = [{"role": "user", "content": prompts[i % len(prompts)]}]
            await one(client, url, {**body, "messages": msgs}, rec)

    async with httpx.AsyncClient(timeout=600, headers=headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
        stats = (await client.get(url + "/metrics")).json()
    return rec, wall, stats


def pct(xs, q):
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else xs[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (default: start one here)")
    p.add_argument("--model", default=None, help="model to serve when starting one here")
    p.add_argument("--quantize", choices=["int8"])
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"],
                   help="float32 (the README's runs) or the int8 engine")
    p.add_argument("--model-name", help="model id to request (default: the served one)")
    p.add_argument("--api-key")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--modes", default="ar,block", help="ar,block,verified")
    args = p.parse_args(argv)
    if args.clients < 1 or args.clients > 64 or args.requests < 1 or args.requests > 10_000:
        raise SystemExit("--clients must be 1..64 and --requests 1..10000")

    server, url, name = None, args.url, args.model_name
    if url is None:
        import nextblock
        from nextblock.serving import BackgroundServer, create_app

        lm = nextblock.load(args.model, quantize=args.quantize, dtype=args.dtype)
        server = BackgroundServer(create_app(lm, max_batch=args.max_batch,
                                       max_queue=max(64, args.clients * 2)))
        url, name = server.url, name or lm.name
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    name = name or httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"]
    prompts = load_prompts()
    modes = {"ar": {"mode": "ar"}, "block": {"mode": "block"},
             "verified": {"mode": "verified", "block_size": 4, "threshold": 0.0}}
    print(f"{args.clients} clients, {args.requests} streaming chat requests per mode, "
          f"max_tokens {args.max_tokens}, server {url}")
    print(f"{'mode':<10}{'req/s':>7}{'tok/s':>8}{'ttft p50':>10}{'ttft p95':>10}"
          f"{'lat p50':>9}{'lat p95':>9}{'errors':>8}{'max batch':>11}")
    try:
        for m in args.modes.split(","):
            rec, wall, stats = asyncio.run(load(url, name, modes[m], args.clients,
                                                args.requests, args.max_tokens, prompts,
                                                headers))
            done = len(rec["latency"])
            print(f"{m:<10}{done / wall:>7.2f}{rec['tokens'] / wall:>8.1f}"
                  f"{pct(rec['ttft'], 50):>10.2f}{pct(rec['ttft'], 95):>10.2f}"
                  f"{pct(rec['latency'], 50):>9.2f}{pct(rec['latency'], 95):>9.2f}"
                  f"{rec['errors']:>8}{stats.get('max_batch_seen', 0):>11}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
