"""Self-distillation data: the base model's own AR answers to many kinds of training prompts.

The diffusion mode then learns to write, several tokens at a time, what its own AR mode
would write, which is far more predictable than human-written targets (adaptation issue).
The prompt sources are in `nextblock/training/distill.py` (training splits and offline
material only; held-out and benchmark prompts excluded; a test-split path is refused).

    python scripts/distill.py --out runs/distill/general.jsonl --model default-base \
        --source gsm8k:1500 --source mbpp:374 --source templated:2500 --source docs:700 \
        --source self_instruct:344 --source multiturn:800 --batch 16 --dtype auto
    python scripts/distill.py --questions ../shared/data/gsm8k/train.jsonl \
        --out runs/distill/gsm8k_train.jsonl --limit 64 --drop-cut  # recorded stage 1

Sources run in the order given; `name:count` takes `count` distinct prompts of the source in
a seeded order. Answers are appended to --out (an answer cut by --max-new-tokens is kept
with "finish": "length"; train with seq_len <= --max-new-tokens so no row reaches the cut);
a prompt already answered is skipped, so a stopped run resumes where it was. `self_instruct` keeps the model's written requests in `<out>.meta`; `multiturn`
builds second turns from the conversations already in --out, so give it last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nextblock
from nextblock.errors import ConfigError
from nextblock.training import distill as d

BUILDERS = {"templated": d.templated, "docs": d.docs}


def answer(lm, prompts, out: d.AnswerFile, args) -> None:
    """AR answers (continuous batching) for the prompts not yet in `out`."""
    todo = [p for p in prompts if p.key not in out.done]
    t0, tokens = time.perf_counter(), 0
    gen = lm.generate_each([p.messages for p in todo], batch_size=args.batch, mode="ar",
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seeds=[args.seed + i for i in range(len(todo))])
    for n, (i, g) in enumerate(gen, 1):
        finish = g.completions[0].finish_reason
        out.write(todo[i], "" if finish != "stop" and args.drop_cut else g.text, finish)
        tokens += g.new_tokens
        if n % args.batch == 0 or n == len(todo):
            rate = tokens / (time.perf_counter() - t0)
            print(f"  {n}/{len(todo)} prompts, {rate:.0f} generated tokens/s", flush=True)


def parse_source(spec: str) -> tuple[str, int]:
    name, _, count = spec.partition(":")
    names = ("gsm8k", "mbpp", "self_instruct", "multiturn", *BUILDERS)
    if name not in names or not count.isdigit():
        raise ConfigError(f"--source {spec}: expected NAME:COUNT, NAME one of {', '.join(names)}")
    return name, int(count)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--source", action="append", default=[], help="NAME:COUNT, repeatable")
    p.add_argument("--questions", help="a GSM8K or MBPP training file (with --limit)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--gsm8k", default="../shared/data/gsm8k/train.jsonl")
    p.add_argument("--mbpp", default="../shared/data/mbpp/mbpp.jsonl")
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--drop-cut", action="store_true", help="drop answers cut by "
                   "--max-new-tokens (the recorded GSM8K stages did)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy answers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", choices=["int8"], help="the same as --dtype int8")
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"],
                   help="float32 (default: the recorded stages) or the int8 engine (about 5x "
                   "faster on a CPU, answers close to, not identical with, float32's)")
    args = p.parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        sys.exit(f"distill: {e}")


def run(args) -> None:
    sources = [parse_source(s) for s in args.source]
    if args.questions:
        name = "mbpp" if Path(args.questions).name == "mbpp.jsonl" else "gsm8k"
        setattr(args, name, args.questions)
        sources.append((name, args.limit))
    if not sources:
        raise ConfigError("give --source NAME:COUNT (or --questions)")
    for path in (args.gsm8k, args.mbpp):
        d.refuse_test_split(path)
    out = d.AnswerFile(args.out)
    lm = nextblock.load(args.model, quantize=args.quantize, dtype=args.dtype)
    excluded, taken = d.excluded_keys(), set()
    for name, count in sources:
        if name == "self_instruct":
            meta = d.AnswerFile(out.path.with_name(out.path.name + ".meta"))
            print(f"self_instruct: {count} meta-prompts", flush=True)
            answer(lm, d.select(d.self_instruct(), count, args.seed, excluded), meta, args)
            prompts = d.requests_from(meta.records)
        elif name == "multiturn":
            prompts = d.follow_ups(out.records, args.seed)
        elif name in ("gsm8k", "mbpp"):
            prompts = getattr(d, name)(getattr(args, name))
        else:
            prompts = BUILDERS[name]()
        chosen = d.select(prompts, count, args.seed, excluded, taken)
        print(f"{name}: {len(chosen)} prompts", flush=True)
        answer(lm, chosen, out, args)
        taken |= {q.key for q in chosen}


if __name__ == "__main__":
    main()
