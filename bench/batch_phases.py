"""Batched decoding per mode and batch size: tokens per forward *per row*, throughput, and
whether the rows' tokens are their batch-1 tokens; block mode in lockstep and in mixed
phases (nextblock/decoding/mixed.py) in the same run.

    python bench/batch_phases.py [--model default] [--n 16] [--batches 1,4,16]
        [--max-new-tokens 64] [--threads 2]

The first --n prompts of the shipped bench set (chat, code, math) go through one batching
engine, --batch rows at a time (rows join as others end, as `generate_each` and the server
run them). Per row, tokens per forward is its generated tokens over the forwards it took
part in (prefill included), averaged over the prompt set as total tokens / total row
forwards; tokens/s is all generated tokens over the wall time. In lockstep a block's rows
wait for its slowest row's denoising, so their tokens per forward fall as the batch grows;
in mixed phases a row's forwards are its own (at batch 1 the lockstep strategy runs, whose
fused commit can save forwards: the "no fuse" row is batch 1 without it, the figure a
mixed-phase row matches exactly). Pause other jobs on the machine while it runs.
"""

from __future__ import annotations

import argparse
import time

import torch

import nextblock
from nextblock.bench import load_prompts
from nextblock.decoding.engine import Engine
from nextblock.decoding.events import Request

MODES = {"ar": dict(mode="ar"),
         "block B=4 thr=0.9": dict(mode="block", block_size=4, threshold=0.9),
         "verified B=4": dict(mode="verified", block_size=4, threshold=0.0)}


def measure(lm, ids, s, batch: int, mixed: bool | None) -> dict:
    eng = Engine(lm.model, s, mask_token_id=lm.config.mask_token_id,
                 stop_token_ids=lm.stop_token_ids, max_context=lm.context_length,
                 max_batch=batch, mixed_phase=mixed)
    for i, p in enumerate(ids):
        eng.submit(Request(i, p, s.max_new_tokens, s.seed))
    t0 = time.perf_counter()
    with torch.inference_mode():
        while eng.busy:
            eng.step()
    wall = time.perf_counter() - t0
    out = dict(eng.finished())
    tokens = sum(len(g.tokens) for g in out.values())
    return {"tokens": {i: out[i].tokens for i in out}, "tok_s": tokens / wall,
            "tok_per_row_fwd": tokens / sum(g.forwards for g in out.values()),
            "forwards": eng.total.forwards}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = nextblock.load(args.model)
    ids = [lm.encode(q) for q in load_prompts()[:args.n]]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'mode':<20}{'phases':<9}{'batch':>6}{'tok/fwd/row':>13}{'tok/s':>9}"
          f"{'forwards':>10}  same as batch 1")
    for name, kw in MODES.items():
        s = lm.settings(max_new_tokens=args.max_new_tokens, **kw)
        ref = None
        for b in batches:
            kinds = [None] if kw["mode"] != "block" else ["unfused", None] if b == 1 \
                else [False, True]
            for mixed in kinds:
                unfused = mixed == "unfused"  # what a mixed-phase row should match
                r = measure(lm, ids, s.replace(fused_commit=False) if unfused else s, b,
                            None if unfused else mixed)
                ref = ref or r["tokens"]
                same = sum(r["tokens"][i] == ref[i] for i in ref)
                label = ("no fuse" if unfused else "-" if mixed is None
                         else "mixed" if mixed else "lockstep")
                print(f"{name:<20}{label:<9}{b:>6}{r['tok_per_row_fwd']:>13.2f}"
                      f"{r['tok_s']:>9.1f}{r['forwards']:>10}  {same}/{len(ref)}", flush=True)


if __name__ == "__main__":
    main()
