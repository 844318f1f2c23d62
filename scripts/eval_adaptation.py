"""Measure an adapted model on held-out data: masked-token accuracy at block size b, and
block mode against AR mode on GSM8K *test* questions (evaluation only, never training):
tokens per forward, generated tokens per second, agreement with AR, accuracy.

    python scripts/eval_adaptation.py --model default --n 16 --block-size 4 --threshold 0.9

Each prompt is decoded alone (batch 1) in each mode, in the same process, same threads.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

import nextblock
from nextblock.training.data import render_chat
from nextblock.training.objective import ObjectiveSettings, noise, objective

sys.path.insert(0, str(Path(__file__).parent))
from gsm8k_chat import convert  # noqa: E402


def last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def masked_accuracy(lm, records, b, n, seed=0):
    rows = [r for rec in records[:n]
            if (r := render_chat([{"role": "user", "content": rec["question"]},
                                  {"role": "assistant", "content": convert(rec["answer"])}],
                                 lm.tokenizer, 256)) is not None]
    correct = masked = 0
    with torch.no_grad():
        for i, r in enumerate(rows):
            ids = torch.tensor([r.ids])
            nb = noise(ids, b, lm.config.mask_token_id, ObjectiveSettings(),
                       loss_mask=torch.tensor([r.targets]), offsets=torch.tensor([r.offset]),
                       generator=torch.Generator().manual_seed(seed + i))
            out = objective(lm.model, nb)
            correct += out.n_correct
            masked += out.n_masked
    return correct / max(1, masked), masked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--questions", default="../shared/data/gsm8k/test.jsonl")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--sub-block", type=int, default=None)
    p.add_argument("--thresholds", default="0.9")
    p.add_argument("--verified", default="", help="thresholds for verified mode rows, e.g. "
                   "0.0 (draft the whole block in one step); reports accepted drafts")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"],
                   help="float32 (the README's runs) or the int8 engine")
    args = p.parse_args(argv)

    lm = nextblock.load(args.model, dtype=args.dtype)
    records = [json.loads(line) for line in open(args.questions)][:args.n]
    acc, n_masked = masked_accuracy(lm, records, args.block_size, args.n)
    print(f"masked-token accuracy at b={args.block_size}: {acc:.3f} ({n_masked} masked tokens, "
          f"{args.n} held-out conversations)")

    modes = [("ar", {"mode": "ar"})] + [
        (f"block b={args.block_size} thr={t}", {"mode": "block", "block_size": args.block_size,
                                                 "sub_block": args.sub_block,
                                                 "threshold": float(t)})
        for t in args.thresholds.split(",")] + [
        (f"verified b={args.block_size} thr={t}", {"mode": "verified",
                                                    "block_size": args.block_size,
                                                    "sub_block": args.sub_block,
                                                    "threshold": float(t)})
        for t in args.verified.split(",") if t]
    lm.generate(records[0]["question"], max_new_tokens=8)  # warm-up, not counted
    results = {}
    for name, kw in modes:
        texts, toks, fwd, secs, drafted, accepted = [], 0, 0, 0.0, 0, 0
        for rec in records:
            g = lm.generate(rec["question"], max_new_tokens=args.max_new_tokens, **kw)
            texts.append(g.text)
            toks, fwd, secs = toks + g.new_tokens, fwd + g.forwards, secs + g.seconds
            drafted, accepted = drafted + g.drafted, accepted + g.accepted
        gold = [r["answer"].split("####")[-1].strip().replace(",", "") for r in records]
        results[name] = {"texts": texts, "tokens": toks, "forwards": fwd, "seconds": secs,
                         "accepted": accepted / drafted if drafted else None,
                         "accuracy": sum(last_number(t) == g for t, g in zip(texts, gold))
                         / len(records)}
    ar = results["ar"]
    rows = []
    print(f"\n{'mode':<24}{'tok/fwd':>8}{'tok/s':>8}{'speed-up':>9}{'same text':>10}"
          f"{'same answer':>12}{'gsm8k':>7}")
    for name, r in results.items():
        same_text = sum(a == b for a, b in zip(r["texts"], ar["texts"])) / len(records)
        same_ans = sum(last_number(a) == last_number(b)
                       for a, b in zip(r["texts"], ar["texts"])) / len(records)
        row = {"mode": name, "tokens_per_forward": r["tokens"] / r["forwards"],
               "tokens_per_s": r["tokens"] / r["seconds"],
               "speedup_vs_ar": (r["tokens"] / r["seconds"]) / (ar["tokens"] / ar["seconds"]),
               "same_text_as_ar": same_text, "same_answer_as_ar": same_ans,
               "gsm8k_accuracy": r["accuracy"], "n": len(records),
               "accepted_drafts": r["accepted"]}
        rows.append(row)
        print(f"{name:<24}{row['tokens_per_forward']:>8.2f}{row['tokens_per_s']:>8.1f}"
              f"{row['speedup_vs_ar']:>8.2f}x{same_text:>10.2f}{same_ans:>12.2f}"
              f"{r['accuracy']:>7.2f}"
              + ("" if r["accepted"] is None else f"  ({r['accepted']:.2f} of drafts accepted)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"masked_accuracy": acc, "block_size":
                                               args.block_size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
