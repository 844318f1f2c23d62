"""Self-distillation data: the base model's own greedy AR answers to training prompts.

The diffusion mode then learns to write, several tokens at a time, what its own AR mode
would write, which is far more predictable than human-written targets (adaptation issue).

    python scripts/distill.py --questions ../shared/data/gsm8k/train.jsonl \
        --out runs/distill/gsm8k_train.jsonl --limit 1200 --batch 16
    python scripts/distill.py --questions ../shared/data/mbpp/mbpp.jsonl \
        --out runs/distill/mbpp_train.jsonl        # MBPP: train split (601-974) only

Appends to --out and skips questions already answered, so it can be stopped and resumed.
Only answers that end with the end-of-sequence token are kept. Never use a test split here.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import nextblock


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", required=True, help="jsonl with a 'question' field")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", choices=["int8"], help="the same as --dtype int8")
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"],
                   help="float32 (default: the recorded stages) or the int8 engine (about 5x "
                   "faster on a CPU, answers close to, not identical with, float32's)")
    args = p.parse_args(argv)
    if "test" in Path(args.questions).name:
        raise SystemExit("refusing to distill from a test split")

    records = [json.loads(line) for line in open(args.questions)]
    if Path(args.questions).name == "mbpp.jsonl":  # only MBPP's train split, task ids 601-974
        questions = [r["text"] for r in records if 601 <= r["task_id"] <= 974]
    else:
        questions = [r["question"] for r in records]
    random.Random(args.seed).shuffle(questions)
    questions = questions[:args.limit]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(line)["messages"][0]["content"] for line in open(out)}
    todo = [q for q in questions if q not in done]
    lm = nextblock.load(args.model, quantize=args.quantize, dtype=args.dtype)
    t0, tokens = time.perf_counter(), 0
    with open(out, "a") as f:
        for i in range(0, len(todo), args.batch):
            batch = todo[i:i + args.batch]
            gen = lm.generate(batch, mode="ar", max_new_tokens=args.max_new_tokens)
            tokens += gen.new_tokens
            for q, c in zip(batch, gen.completions):
                if c.finish_reason == "stop" and c.text.strip():
                    msgs = [{"role": "user", "content": q},
                            {"role": "assistant", "content": c.text.strip()}]
                    f.write(json.dumps({"messages": msgs}) + "\n")
            f.flush()
            rate = tokens / (time.perf_counter() - t0)
            print(f"{i + len(batch)}/{len(todo)} questions, {rate:.1f} generated tokens/s",
                  flush=True)


if __name__ == "__main__":
    main()
