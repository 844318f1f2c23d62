"""Run a task in one decoding mode, record every sample, summarise all modes run so far.

    nextblock eval --task gsm8k --data ../shared/data/gsm8k/test.jsonl --limit 50 --mode ar
    nextblock eval --task gsm8k --data ... --limit 50 --mode verified --block-size 4 --resume

Each run appends to OUT/TASK-LABEL.jsonl (LABEL: the mode and its settings), one record per
sample: prompt, completion, extracted answer, verdict, tokens, forwards, seconds. `--resume`
skips samples already recorded. OUT/TASK-summary.md (and .json) then lists, per label:
accuracy, generated tokens/s, tokens per forward, mean forwards per sample, and agreement of
the extracted answers with the AR run when one exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import DecodeSettings
from .tasks import Sample


def label(s: DecodeSettings) -> str:
    if s.mode == "ar":
        return "ar"
    sub = f"-sub{s.sub_block}" if s.sub_block else ""
    return f"{s.mode}-B{s.block_size}{sub}-t{s.threshold}"


def evaluate(lm, task, samples: list[Sample], settings: DecodeSettings, out: str | Path,
             resume: bool = False, progress=None) -> dict:
    """Generate (batch 1, so timings are per sample) and score; returns the summary row."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task.name}-{label(settings)}.jsonl"
    done = set()
    if path.exists():
        if resume:
            done = {json.loads(line)["id"] for line in path.read_text().splitlines()}
        else:
            path.unlink()
    with open(path, "a") as f:
        for s in samples:
            if s.id in done:
                continue
            gen = lm.generate(s.prompt, settings=settings)
            v = task.score(s, gen.text)
            rec = {"id": s.id, "prompt": s.prompt, "completion": gen.text,
                   "extracted": v.extracted, "correct": v.correct, "detail": v.detail,
                   "reference": s.reference if isinstance(s.reference, str) else None,
                   "tokens": len(gen.tokens), "forwards": gen.forwards,
                   "seconds": round(gen.seconds, 4), "finish_reason":
                   gen.completions[0].finish_reason}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if progress is not None:
                progress(rec)
    return summarise(out, task.name)[label(settings)]


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def summarise(out: str | Path, task_name: str) -> dict[str, dict]:
    """Summary rows of every label recorded for the task; writes TASK-summary.md/.json."""
    out = Path(out)
    runs = {p.stem[len(task_name) + 1:]: _records(p)
            for p in sorted(out.glob(f"{task_name}-*.jsonl"))}
    ar = runs.get("ar")
    rows = {}
    for name, recs in runs.items():
        n = len(recs)
        tokens = sum(r["tokens"] for r in recs.values())
        seconds = sum(r["seconds"] for r in recs.values())
        forwards = sum(r["forwards"] for r in recs.values())
        row = {"samples": n, "accuracy": sum(r["correct"] for r in recs.values()) / max(1, n),
               "tokens_per_s": tokens / seconds if seconds else 0.0,
               "tokens_per_forward": tokens / max(1, forwards),
               "forwards_per_sample": forwards / max(1, n), "agreement_with_ar": None}
        if ar is not None and name != "ar":
            common = [i for i in recs if i in ar]
            if common:
                row["agreement_with_ar"] = sum(recs[i]["extracted"] == ar[i]["extracted"]
                                               for i in common) / len(common)
        rows[name] = row
    lines = [f"# {task_name}", "", "| mode | samples | accuracy | tokens/s | tokens/forward | "
             "forwards/sample | answers = AR |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        agree = "-" if r["agreement_with_ar"] is None else f"{r['agreement_with_ar']:.2f}"
        lines.append(f"| {name} | {r['samples']} | {r['accuracy']:.3f} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_forward']:.2f} | "
                     f"{r['forwards_per_sample']:.1f} | {agree} |")
    (out / f"{task_name}-summary.md").write_text("\n".join(lines) + "\n")
    (out / f"{task_name}-summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows
