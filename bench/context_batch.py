"""Engine forward cost by batch and context, and batched AR throughput (continuous batching).

    python bench/context_batch.py [--model default-base] [--cases 1x128,1x1024,1x4096,32x400]
        [--questions ../shared/data/gsm8k/train.jsonl] [--n 48] [--batch 32]

First part: ms per forward of B rows x 1 query token over C cached keys, every key valid
(where attention's share grows). Second part: generated tokens/s of `generate_each` over the
first --n GSM8K *training* questions, up to 256 new tokens, --batch rows at a time (what
scripts/distill.py does; rows leave and join the KV cache as they finish).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import nextblock
from nextblock.cache import KVCache
from nextblock.modeling import forward


def ms_per_forward(lm, B: int, C: int, seconds: float = 1.0) -> float:
    cache = KVCache.for_model(lm.model, B, C + 1)
    cache.commit(C)
    ids, pos = torch.randint(10, 1000, (B, 1)), torch.full((B, 1), C)
    mask = torch.ones(B, 1, 1, C + 1, dtype=torch.bool)
    with torch.no_grad():
        forward(lm.model, ids, pos, mask, cache)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            forward(lm.model, ids, pos, mask, cache)
            n += 1
    return (time.perf_counter() - t0) / n * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default-base")
    p.add_argument("--cases", default="1x128,1x1024,1x4096,32x400")
    p.add_argument("--questions", default="../shared/data/gsm8k/train.jsonl")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    lm = nextblock.load(args.model)
    for case in args.cases.split(","):
        B, C = (int(x) for x in case.split("x"))
        print(f"B={B} C={C}: {ms_per_forward(lm, B, C):.1f} ms per forward")
    qs = [json.loads(line)["question"] for line in open(args.questions)][:args.n]
    t0, n = time.perf_counter(), 0
    for _, g in lm.generate_each(qs, batch_size=args.batch, mode="ar", max_new_tokens=256):
        n += g.new_tokens
    print(f"batch {args.batch} AR over {len(qs)} questions: "
          f"{n / (time.perf_counter() - t0):.0f} generated tokens/s")


if __name__ == "__main__":
    main()
