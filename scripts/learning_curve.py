"""Learning curve of an adaptation run: held-out decoding figures against training tokens.

    python scripts/learning_curve.py --run runs/general_s1 --every 100 --n 40 \
        --out runs/general_s1/curve.json --plot runs/general_s1/curve.png
    python scripts/learning_curve.py --points curve_s1.json,curve_s2.json --plot curve.png

Every `--every` steps a checkpoint of the run (checkpoints/step-N) is exported as an adapter
into a temporary directory and measured as `scripts/eval_adaptation.py` measures a model
(held-out general prompts, batch 1, greedy, the default int8 path): block mode's tokens per
forward and share identical to AR at --threshold, verified mode's tokens per forward and
accepted share, and the AR loss on held-out text. `--start MODEL` adds the model the run
started from as the point at 0 tokens (for a continued stage: the previous stage's adapter,
with `--offset` its tokens). Points are appended to --out as they are measured (a stopped
run resumes); several stages' files plot as one curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nextblock
from nextblock.training.export import export

sys.path.insert(0, str(Path(__file__).parent))
from eval_adaptation import ar_loss, evaluate, heldout_prompts, heldout_text  # noqa: E402


def measure(model: str, args) -> dict:
    lm = nextblock.load(model)
    b = args.block_size
    modes = [("ar", {"mode": "ar"}),
             ("block", {"mode": "block", "block_size": b, "threshold": args.threshold}),
             ("verified", {"mode": "verified", "block_size": b, "threshold": 0.0})]
    rows = {r["mode"]: r for r in evaluate(lm, heldout_prompts(lm, args.n), modes,
                                           args.max_new_tokens)}
    return {"block_tokens_per_forward": rows["block"]["tokens_per_forward"],
            "block_same_as_ar": rows["block"]["same_text_as_ar"],
            "verified_tokens_per_forward": rows["verified"]["tokens_per_forward"],
            "verified_accepted": rows["verified"]["accepted_drafts"],
            "ar_loss": ar_loss(lm, heldout_text(args.loss_n))}


def tokens_at(run: Path, step: int) -> int:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] == step:
            return rec.get("tokens_seen", 0)
    raise SystemExit(f"{run}/metrics.jsonl has no step {step}")


def plot(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["tokens"])
    x = [p["tokens"] / 1e6 for p in points]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    a1.plot(x, [p["block_tokens_per_forward"] for p in points], "o-", label="block, thr")
    a1.plot(x, [p["verified_tokens_per_forward"] for p in points], "s-", label="verified")
    a1.set_ylabel("tokens / forward")
    a1.legend()
    a2.plot(x, [p["block_same_as_ar"] for p in points], "o-", label="block = AR")
    a2.plot(x, [p["verified_accepted"] for p in points], "s-", label="drafts accepted")
    a2.set_ylabel("share")
    a2.legend()
    a3.plot(x, [p["ar_loss"] for p in points], "o-", color="tab:red")
    a3.set_ylabel("held-out AR loss")
    a3.set_xlabel("training tokens seen (millions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run directory (checkpoints/, metrics.jsonl)")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--start", help="the model the run started from: the point at --offset")
    p.add_argument("--offset", type=int, default=0, help="tokens seen before this run")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--loss-n", type=int, default=25)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", help="points file (appended, resumable)")
    p.add_argument("--points", help="comma-separated points files to plot together")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    points = []
    if args.points:
        for f in args.points.split(","):
            points += [json.loads(x) for x in Path(f).read_text().splitlines()]
    if args.run:
        run, out = Path(args.run), Path(args.out or Path(args.run) / "curve.jsonl")
        done = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        have = {d["step"] for d in done}
        todo = [(0, args.start)] if args.start and 0 not in have else []
        for ck in sorted((run / "checkpoints").glob("step-*")):
            step = int(ck.name.split("-")[1])
            if step % args.every == 0 and step not in have:
                todo.append((step, ck))
        for step, src in todo:
            with tempfile.TemporaryDirectory() as tmp:
                model = src if step == 0 else export(src, Path(tmp) / "m", adapter=True)
                point = {"step": step, "tokens": args.offset + (
                    tokens_at(run, step) if step else 0), **measure(str(model), args)}
            print(json.dumps(point), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(point) + "\n")
            done.append(point)
        points += done
    if args.plot and points:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
