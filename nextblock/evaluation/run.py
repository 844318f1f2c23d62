"""Run a task in one decoding mode, record every sample, summarise all modes run so far.

    nextblock eval --task gsm8k --data ../shared/data/gsm8k/test.jsonl --limit 50 --mode ar
    nextblock eval --task gsm8k --data ... --limit 50 --mode verified --block-size 4 --resume

Each run appends to OUT/TASK-LABEL.jsonl (LABEL: the mode and its settings), one record per
sample: prompt, completion, extracted answer, verdict, tokens, forwards, seconds. `--resume`
skips samples already recorded. `--batch-size N` decodes N samples at once (continuous
batching; the same answers, throughput instead of single-stream speed, and the table says
so). OUT/TASK-summary.md (and .json) then lists, per label: accuracy (pass@1), batch size,
generated tokens/s, tokens per forward, mean forwards per sample, and
agreement of the extracted answers with the AR run (of the same prompt style) when one
exists; with `--samples N`
(N completions per problem, sampled) also pass@k for k = 2, 4, ... <= N.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import DecodeSettings
from .tasks import Sample


def label(s: DecodeSettings, base: bool = False) -> str:
    """The run's name: mode and settings, prefixed "base-" for base-style prompts."""
    style = "base-" if base else ""
    if s.mode == "ar":
        return style + "ar"
    sub = f"-sub{s.sub_block}" if s.sub_block else ""
    return f"{style}{s.mode}-B{s.block_size}{sub}-t{s.threshold}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(lm, task, samples: list[Sample], settings: DecodeSettings, out: str | Path,
             resume: bool = False, progress=None, n: int = 1, batch_size: int = 1) -> dict:
    """Generate and score; returns the summary row. `batch_size` rows decode together
    (continuous batching, `lm.generate_each`): the answers are those of batch 1, the speed
    columns are then throughput at that batch size (recorded per sample). With n > 1, each
    problem gets n completions (seeds seed, seed+1, ...; sample with a temperature) and
    pass@k for k = 1, 2, 4, ... <= n is reported."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = label(settings, base=bool(samples) and not samples[0].chat)
    path = out / f"{task.name}-{name}.jsonl"
    done = set()
    if path.exists():
        if resume:
            done = {json.loads(line)["id"] for line in path.read_text().splitlines()}
        else:
            path.unlink()
    todo = [s for s in samples if s.id not in done]
    if not todo:
        return summarise(out, task.name)[name]
    chats = {s.chat for s in todo}
    if len(chats) > 1:
        raise ValueError("samples mix chat and plain-text prompts")
    seed = settings.seed or 0
    jobs = [(s, i) for s in todo for i in range(n)]  # one row per completion
    gens: dict[str, dict[int, object]] = {}
    stream = lm.generate_each(
        [s.prompt for s, _ in jobs], batch_size=batch_size, chat=chats.pop(),
        settings=settings, stops=[tuple(settings.stop) + s.stop for s, _ in jobs],
        seeds=[settings.seed if n == 1 else seed + i for _, i in jobs])
    with open(path, "a") as f:
        for j, gen in stream:
            s, i = jobs[j]
            gens.setdefault(s.id, {})[i] = gen
            if len(gens[s.id]) < n:
                continue
            mine = gens.pop(s.id)
            rec = _record(task, s, [mine[k] for k in range(n)], batch_size)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if progress is not None:
                progress(rec)
    return summarise(out, task.name)[name]


def _record(task, s: Sample, gens: list, batch_size: int) -> dict:
    """One sample's line: its first completion in full, counters over all n completions."""
    verdicts = [task.score(s, g.text) for g in gens]
    gen, v = gens[0], verdicts[0]
    rec = {"id": s.id, "prompt": s.prompt, "completion": gen.text,
           "extracted": v.extracted, "correct": v.correct, "detail": v.detail,
           "reference": s.reference if isinstance(s.reference, str) else None,
           "tokens": sum(len(g.tokens) for g in gens),
           "forwards": sum(g.forwards for g in gens),
           "seconds": round(sum(g.seconds for g in gens), 4),
           "finish_reason": gen.completions[0].finish_reason, "n": len(gens),
           "passed": sum(x.correct for x in verdicts), "batch_size": batch_size}
    if len(gens) > 1:
        rec["samples"] = [{"completion": g.text, "extracted": x.extracted,
                           "correct": x.correct} for g, x in zip(gens[1:], verdicts[1:])]
    return rec


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def summarise(out: str | Path, task_name: str) -> dict[str, dict]:
    """Summary rows of every label recorded for the task; writes TASK-summary.md/.json."""
    out = Path(out)
    runs = {p.stem[len(task_name) + 1:]: _records(p)
            for p in sorted(out.glob(f"{task_name}-*.jsonl"))}
    rows = {}
    for name, recs in runs.items():
        ar = runs.get("base-ar" if name.startswith("base-") else "ar")
        n = len(recs)
        tokens = sum(r["tokens"] for r in recs.values())
        seconds = sum(r["seconds"] for r in recs.values())
        forwards = sum(r["forwards"] for r in recs.values())
        row = {"samples": n, "accuracy": sum(r.get("passed", r["correct"]) / r.get("n", 1)
                                             for r in recs.values()) / max(1, n),
               "tokens_per_s": tokens / seconds if seconds else 0.0,
               "tokens_per_forward": tokens / max(1, forwards),
               "forwards_per_sample": forwards / max(1, n), "agreement_with_ar": None,
               "batch_size": "/".join(map(str, sorted({r.get("batch_size", 1)
                                                       for r in recs.values()})))}
        draws = {r.get("n", 1) for r in recs.values()}
        if len(draws) == 1 and (m := draws.pop()) > 1:  # pass@k over n draws per problem
            for k in (2 ** i for i in range(1, m.bit_length())):
                row[f"pass@{k}"] = sum(pass_at_k(m, r["passed"], k)
                                       for r in recs.values()) / max(1, n)
        if ar is not None and ar is not recs:
            common = [i for i in recs if i in ar]
            if common:
                row["agreement_with_ar"] = sum(recs[i]["extracted"] == ar[i]["extracted"]
                                               for i in common) / len(common)
        rows[name] = row
    lines = [f"# {task_name}", "", "| mode | samples | accuracy | batch | tokens/s | "
             "tokens/forward | forwards/sample | answers = AR |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        agree = "-" if r["agreement_with_ar"] is None else f"{r['agreement_with_ar']:.2f}"
        lines.append(f"| {name} | {r['samples']} | {r['accuracy']:.3f} | {r['batch_size']} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_forward']:.2f} | "
                     f"{r['forwards_per_sample']:.1f} | {agree} |")
    (out / f"{task_name}-summary.md").write_text("\n".join(lines) + "\n")
    (out / f"{task_name}-summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows
