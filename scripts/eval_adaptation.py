"""Measure an adapted model on held-out prompts: block and verified mode against AR mode.

    python scripts/eval_adaptation.py --model default            # the held-out general set
        [--block-sizes 4,8] [--thresholds 0.5,0.7,0.9] [--verified 4] [--n 121] [--json f]
    python scripts/eval_adaptation.py --model default --prompts gsm8k --n 12 --block-sizes 4 \
        --thresholds 0.9,0.5 --verified 4 --max-new-tokens 128 --dtype float32  # recorded

Prompts: `heldout` is nextblock/assets/heldout_general.jsonl (121 prompts written for the
project: explanations, lists, how-to, facts, rewriting, translation, code, math, multi-turn;
never trained on, and excluded from the distillation data); `gsm8k` the GSM8K *test*
questions (evaluation only). Every prompt is decoded alone (batch 1), greedy, in each mode,
in the same process and threads. A multi-turn prompt's first answer is the model's own AR
answer, so every mode continues the same conversation.

With `--prompts gsm8k` also the masked-token accuracy at the first block size on the human
answers of those test questions. Reported per mode: tokens per forward, tokens/s and speed-up against AR (generated tokens
only), the share of completions identical to AR's, verified mode's accepted share of drafted
tokens; and, for the model, the AR loss (mean next-token cross-entropy) on held-out text:
the human answers of the first --loss-n GSM8K test questions and MBPP test solutions (task
ids 11-510), in chat form (AR quality must not degrade: compare with the base model's).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from importlib import resources
from pathlib import Path

import torch

import nextblock
from nextblock.modeling import forward
from nextblock.training.data import render_chat
from nextblock.training.objective import ObjectiveSettings, noise, objective

sys.path.insert(0, str(Path(__file__).parent))
from gsm8k_chat import convert  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def heldout_prompts(lm, n: int) -> list:
    """The held-out general prompts as chat inputs (a multi-turn one with its first answer
    from the model's AR mode)."""
    lines = resources.files("nextblock").joinpath("assets/heldout_general.jsonl").read_text()
    out = []
    for rec in map(json.loads, lines.splitlines()[:n]):
        if "turns" not in rec:
            out.append(rec["prompt"])
            continue
        msgs = [{"role": "user", "content": rec["turns"][0]}]
        first = lm.generate(msgs, mode="ar", max_new_tokens=96).text
        out.append(msgs + [{"role": "assistant", "content": first},
                           {"role": "user", "content": rec["turns"][1]}])
    return out


def heldout_text(n: int) -> list[list[dict]]:
    """Conversations with human answers from test splits: GSM8K test, MBPP test."""
    convs = []
    for line in list(open(SHARED / "gsm8k" / "test.jsonl"))[:n]:
        r = json.loads(line)
        convs.append([{"role": "user", "content": r["question"]},
                      {"role": "assistant", "content": convert(r["answer"])}])
    mbpp = [json.loads(x) for x in open(SHARED / "mbpp" / "mbpp.jsonl")]
    for r in [r for r in mbpp if 11 <= r["task_id"] <= 510][:n]:
        convs.append([{"role": "user", "content": r["text"]},
                      {"role": "assistant", "content": f"```python\n{r['code']}\n```"}])
    return convs


def ar_loss(lm, convs: list[list[dict]], seq_len: int = 512) -> float:
    """Mean next-token cross-entropy on the assistant tokens (causal forward, no cache)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for msgs in convs:
            row = render_chat(msgs, lm.tokenizer, seq_len)
            if row is None:
                continue
            ids = torch.tensor([row.ids])
            T = ids.shape[1]
            logits = forward(lm.model, ids, torch.arange(T)[None],
                             torch.ones(T, T, dtype=torch.bool).tril()[None, None])
            tgt = torch.tensor(row.targets[1:])
            ce = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:],
                                                   reduction="none")
            total, count = total + float(ce[tgt].sum()), count + int(tgt.sum())
    return total / max(1, count)


def masked_accuracy(lm, convs: list[list[dict]], b: int, seed: int = 0) -> tuple[float, int]:
    """Masked-token accuracy at block size b on held-out conversations (one noising each)."""
    correct = masked = 0
    with torch.no_grad():
        for i, msgs in enumerate(convs):
            r = render_chat(msgs, lm.tokenizer, 256)
            if r is None:
                continue
            nb = noise(torch.tensor([r.ids]), b, lm.config.mask_token_id, ObjectiveSettings(),
                       loss_mask=torch.tensor([r.targets]), offsets=torch.tensor([r.offset]),
                       generator=torch.Generator().manual_seed(seed + i))
            out = objective(lm.model, nb)
            correct, masked = correct + out.n_correct, masked + out.n_masked
    return correct / max(1, masked), masked


def decode_all(lm, prompts, max_new: int, **kw) -> dict:
    texts, toks, fwd, secs, drafted, accepted = [], 0, 0, 0.0, 0, 0
    for p in prompts:
        g = lm.generate(p, max_new_tokens=max_new, **kw)
        texts.append(g.text)
        toks, fwd, secs = toks + g.new_tokens, fwd + g.forwards, secs + g.seconds
        drafted, accepted = drafted + g.drafted, accepted + g.accepted
    return {"texts": texts, "tokens": toks, "forwards": fwd, "seconds": secs,
            "accepted": accepted / drafted if drafted else None}


def modes(block_sizes, thresholds, verified) -> list[tuple[str, dict]]:
    out = [("ar", {"mode": "ar"})]
    for b in block_sizes:
        out += [(f"block b={b} thr={t}", {"mode": "block", "block_size": b, "threshold": t})
                for t in thresholds]
    out += [(f"verified b={b}", {"mode": "verified", "block_size": b, "threshold": 0.0})
            for b in verified]
    return out


def evaluate(lm, prompts, mode_list, max_new: int, gold=None) -> list[dict]:
    """One row per mode, AR first (the reference for speed and agreement)."""
    lm.generate(prompts[0], max_new_tokens=8)  # warm-up, not counted
    results = {name: decode_all(lm, prompts, max_new, **kw) for name, kw in mode_list}
    ar = results["ar"]
    rows = []
    for name, r in results.items():
        row = {"mode": name, "n": len(prompts),
               "tokens_per_forward": r["tokens"] / max(1, r["forwards"]),
               "tokens_per_s": r["tokens"] / r["seconds"],
               "speedup_vs_ar": (r["tokens"] / r["seconds"]) / (ar["tokens"] / ar["seconds"]),
               "same_text_as_ar": sum(a == b for a, b in zip(r["texts"], ar["texts"]))
               / len(prompts), "accepted_drafts": r["accepted"]}
        if gold is not None:
            row["same_answer_as_ar"] = sum(last_number(a) == last_number(b) for a, b in
                                           zip(r["texts"], ar["texts"])) / len(prompts)
            row["gsm8k_accuracy"] = sum(last_number(t) == g for t, g in
                                        zip(r["texts"], gold)) / len(prompts)
        rows.append(row)
    return rows


def print_rows(rows) -> None:
    extra = "gsm8k_accuracy" in rows[0]
    print(f"\n{'mode':<22}{'tok/fwd':>8}{'tok/s':>8}{'x AR':>7}{'same as AR':>11}"
          f"{'accepted':>9}" + (f"{'same ans':>9}{'gsm8k':>7}" if extra else ""))
    for r in rows:
        acc = "" if r["accepted_drafts"] is None else f"{r['accepted_drafts']:.2f}"
        print(f"{r['mode']:<22}{r['tokens_per_forward']:>8.2f}{r['tokens_per_s']:>8.1f}"
              f"{r['speedup_vs_ar']:>6.2f}x{r['same_text_as_ar']:>11.2f}{acc:>9}"
              + (f"{r['same_answer_as_ar']:>9.2f}{r['gsm8k_accuracy']:>7.2f}" if extra else ""))


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", default="heldout", choices=["heldout", "gsm8k"])
    p.add_argument("--n", type=int, default=121, help="prompts (the first n)")
    p.add_argument("--block-sizes", type=ints, default=[4])
    p.add_argument("--block-size", type=int, help="the same as --block-sizes B")
    p.add_argument("--thresholds", type=floats, default=[0.5, 0.7, 0.9])
    p.add_argument("--verified", type=ints, default=[4],
                   help="block sizes of verified-mode rows (the draft is the whole block)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--loss-n", type=int, default=50, help="held-out texts per source")
    p.add_argument("--loss-only", action="store_true", help="only the held-out AR loss (the "
                   "base model's, to compare with)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--dtype", default="auto", choices=["float32", "auto", "int8"],
                   help="auto: the default path (the int8 engine on a CPU)")
    args = p.parse_args(argv)
    if args.block_size:
        args.block_sizes = [args.block_size]

    lm = nextblock.load(args.model, dtype=args.dtype)
    t0 = time.perf_counter()
    loss = ar_loss(lm, heldout_text(args.loss_n))
    print(f"AR loss on held-out text ({args.loss_n} GSM8K + {args.loss_n} MBPP test answers): "
          f"{loss:.4f}")
    if args.loss_only:
        return [], loss
    gold = None
    if args.prompts == "gsm8k":
        recs = [json.loads(x) for x in open(SHARED / "gsm8k" / "test.jsonl")][:args.n]
        prompts = [r["question"] for r in recs]
        gold = [r["answer"].split("####")[-1].strip().replace(",", "") for r in recs]
        acc, n_masked = masked_accuracy(lm, heldout_text(args.n)[:args.n], args.block_sizes[0])
        print(f"masked-token accuracy at b={args.block_sizes[0]}: {acc:.3f} ({n_masked} masked "
              f"tokens, {args.n} GSM8K test conversations)")
    else:
        prompts = heldout_prompts(lm, args.n)
    rows = evaluate(lm, prompts, modes(args.block_sizes, args.thresholds, args.verified),
                    args.max_new_tokens, gold)
    print_rows(rows)
    print(f"({len(prompts)} prompts, {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "prompts": args.prompts,
                                               "ar_loss": loss, "rows": rows}, indent=1))
    return rows, loss


if __name__ == "__main__":
    main()
