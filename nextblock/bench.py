"""Decode benchmark: `transformers` generate, nextblock AR, block mode over a grid and
verified mode, on one model, one prompt set, one dtype and one thread count, in one run.

    nextblock bench --json bench.json --plot frontier.png    # the default: int8 engine
    nextblock bench --dtype float32                          # the float32 reference
    python bench/decode.py --modes ar,verified --max-new-tokens 64 --repeats 1

Counting rules (what makes the numbers comparable):
- only generated tokens count (the stop token included, as `transformers` counts it); prompt
  tokens never do, and prefill time is part of the measured time of every row alike;
- prompts run one at a time (batch 1), in the same order, with the same stop tokens;
- each row starts with an untimed warm-up generation; then the whole prompt set runs
  `repeats` times, the rows interleaved prompt by prompt (each prompt under every row in
  turn, the order rotated), and tokens/s is the tokens of the set over the median of its
  seconds. Interleaving this finely puts every row under the same conditions on a machine
  whose speed drifts within minutes (steal time on a virtual machine, turbo); the passes
  are deterministic, so every repeat generates the same tokens;
- agreement compares greedy outputs with nextblock AR's: exact match (whole completion)
  and token match (same token at the same position, over AR's tokens);
- peak memory is the process's peak resident set (CPU; reset per row on Linux) or the peak
  allocated CUDA memory.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .config import DecodeSettings
from .decoding.engine import run
from .errors import InputError

BLOCK_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
SUB_BLOCKS = (4, 8, None)  # None: the full block
VERIFIED_GRID = ((2, 0.0), (4, 0.0), (4, 0.9), (8, 0.0))  # (block size, draft threshold)
MODES = ("transformers", "ar", "block", "verified")


@dataclass
class Row:
    mode: str
    settings: dict
    tokens_per_s: float = 0.0
    tokens: int = 0  # generated tokens of one pass over the prompt set
    forwards: int = 0
    fused_saved: int = 0
    peak_mem_mb: float = 0.0
    seconds: list[float] = field(default_factory=list)  # per repeat
    outputs: list[list[int]] = field(default_factory=list)
    speedup_vs_ar: float | None = None
    speedup_vs_transformers: float | None = None
    exact_match_vs_ar: float | None = None
    token_match_vs_ar: float | None = None
    forward_cost_vs_ar: float | None = None  # ms per forward / AR's ms per forward

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(1, self.forwards)

    @property
    def ms_per_forward(self) -> float:
        """Wall time of one pass over the prompts per forward (prefill and loop included)."""
        return 1000 * statistics.median(self.seconds) / max(1, self.forwards) if self.seconds \
            else 0.0

    @property
    def label(self) -> str:
        s = self.settings
        if self.mode in ("transformers", "ar"):
            return self.mode
        sub = s.get("sub_block") or s["block_size"]
        return f"{self.mode} B={s['block_size']} sub={sub} thr={s['threshold']}"

    def record(self) -> dict:
        keys = ("mode", "settings", "tokens_per_s", "forwards", "tokens_per_forward",
                "speedup_vs_ar", "speedup_vs_transformers", "exact_match_vs_ar",
                "token_match_vs_ar", "peak_mem_mb", "tokens", "fused_saved", "seconds",
                "ms_per_forward", "forward_cost_vs_ar")
        return {k: getattr(self, k) for k in keys}


def load_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """The shipped prompt set (chat, code, math), or a user's file: one prompt per line, or
    JSON lines with a "prompt" field."""
    if path is None:
        text = resources.files("nextblock").joinpath("assets/bench_prompts.jsonl").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"--prompts {path}: cannot read ({e.strerror})") from None
    prompts = []
    for line in text.splitlines():
        if line.strip():
            prompts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{")
                           else line.strip())
    if not prompts:
        raise InputError(f"--prompts {path}: no prompts in the file")
    return prompts


def grid(lm, modes=MODES, block_sizes=None, thresholds=BLOCK_THRESHOLDS,
         sub_blocks=SUB_BLOCKS, verified=VERIFIED_GRID) -> list[Row]:
    """The rows to measure: baselines first, then the block and verified grids."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise InputError(f"--modes: unknown mode(s) {', '.join(unknown)}; expected "
                         f"{', '.join(MODES)}")
    rows = []
    if "transformers" in modes:
        rows.append(Row("transformers", {"mode": "ar"}))
    rows.append(Row("ar", {"mode": "ar"}))  # always: the reference for agreement
    for B in block_sizes or [lm.settings().block_size]:
        if "block" not in modes:
            break
        for sub in sub_blocks:
            if sub is not None and (sub >= B or B % sub):
                continue
            for thr in thresholds:
                rows.append(Row("block", {"mode": "block", "block_size": B,
                                          "sub_block": sub, "threshold": thr}))
    if "verified" in modes:
        for B, thr in verified:
            rows.append(Row("verified", {"mode": "verified", "block_size": B,
                                         "threshold": thr}))
    return rows


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: "5" resets the peak resident set size of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runner(lm, row: Row, max_new_tokens: int):
    """A function prompt ids -> (generated ids, forwards, fused forwards saved)."""
    stop = lm.stop_token_ids
    if row.mode == "transformers":
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else stop[0]

        def hf(ids):
            x = torch.tensor([ids], device=next(lm.model.parameters()).device)
            out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=max_new_tokens, eos_token_id=stop,
                                    pad_token_id=pad, suppress_tokens=[lm.config.mask_token_id],
                                    temperature=None, top_p=None, top_k=None)
            toks = out[0, len(ids):].tolist()
            return toks, len(toks), 0
        return hf
    s = DecodeSettings(max_new_tokens=max_new_tokens, **row.settings).validated()

    def nb(ids):
        res = run(lm.model, [ids], s, mask_token_id=lm.config.mask_token_id,
                  stop_token_ids=stop, max_context=lm.context_length)
        return res.all_tokens[0], res.forwards, res.fused
    return nb


def measure_repeat(rows: list[Row], runners: list, prompt_ids: list[list[int]],
                   rep: int = 0) -> None:
    """One timed repeat of every row over the prompt set, interleaved prompt by prompt:
    each prompt runs under every row in turn (the order rotated from prompt to prompt),
    so a drift of the machine's speed within the repeat reaches every row alike. Each
    row's seconds (the sum of its runs), tokens and forwards are appended to it."""
    n = len(rows)
    spent, outputs = [0.0] * n, [[] for _ in rows]
    forwards, fused, peak = [0] * n, [0] * n, [0.0] * n
    with torch.inference_mode():
        for p, ids in enumerate(prompt_ids):
            for k in range(n):
                i = (k + p + rep) % n
                reset_peak()
                t0 = time.perf_counter()
                toks, f, saved = runners[i](ids)
                spent[i] += time.perf_counter() - t0
                peak[i] = max(peak[i], peak_mb())
                outputs[i].append(toks)
                forwards[i], fused[i] = forwards[i] + f, fused[i] + saved
    for i, row in enumerate(rows):
        row.seconds.append(round(spent[i], 6))
        row.tokens, row.forwards, row.fused_saved, row.outputs = (
            sum(len(t) for t in outputs[i]), forwards[i], fused[i], outputs[i])
        row.tokens_per_s = row.tokens / max(1e-9, statistics.median(row.seconds))
        row.peak_mem_mb = max(row.peak_mem_mb, round(peak[i], 1))


def compare(rows: list[Row]) -> None:
    """Fill the speed-up and agreement columns from the AR and transformers rows."""
    ar = next(r for r in rows if r.mode == "ar")
    hf = next((r for r in rows if r.mode == "transformers"), None)
    for r in rows:
        r.speedup_vs_ar = r.tokens_per_s / ar.tokens_per_s
        r.forward_cost_vs_ar = r.ms_per_forward / max(1e-9, ar.ms_per_forward)
        if hf is not None:
            r.speedup_vs_transformers = r.tokens_per_s / hf.tokens_per_s
        same = [a == b for a, b in zip(r.outputs, ar.outputs)]
        r.exact_match_vs_ar = sum(same) / len(same)
        matched = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(r.outputs, ar.outputs))
        r.token_match_vs_ar = matched / max(1, sum(len(a) for a in ar.outputs))


def table(rows: list[Row], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("setting", "tok/s", "fwd", "tok/fwd", "ms/fwd", "fwd x AR", "fused", "x AR",
                "x HF", "exact", "token", "peak MB"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        t.add_row(r.label, f"{r.tokens_per_s:.1f}", str(r.forwards),
                  f"{r.tokens_per_forward:.2f}", f"{r.ms_per_forward:.1f}",
                  fmt(r.forward_cost_vs_ar, ".2f"), str(r.fused_saved),
                  fmt(r.speedup_vs_ar, ".2f"), fmt(r.speedup_vs_transformers, ".2f"),
                  fmt(r.exact_match_vs_ar, ".2f"), fmt(r.token_match_vs_ar, ".2f"),
                  f"{r.peak_mem_mb:.0f}")
    return t


def plot(rows: list[Row], path: str | os.PathLike, title: str) -> Path:
    """Speed-up over AR against token agreement with AR, one point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"transformers": "tab:grey", "ar": "black", "block": "tab:blue",
              "verified": "tab:green"}
    for mode in MODES:
        pts = [r for r in rows if r.mode == mode]
        if pts:
            ax.scatter([r.token_match_vs_ar for r in pts], [r.speedup_vs_ar for r in pts],
                       color=colors[mode], label=mode)
    for r in rows:
        if r.mode in ("block", "verified"):
            s = r.settings
            ax.annotate(f"B{s['block_size']}/{s.get('sub_block') or s['block_size']}/"
                        f"{s['threshold']}", (r.token_match_vs_ar, r.speedup_vs_ar),
                        fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("token agreement with AR greedy")
    ax.set_ylabel("generated tokens/s, x nextblock AR")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def bench(lm, prompts: list[str], rows: list[Row], max_new_tokens: int = 128,
          repeats: int = 3, chat: bool | None = None, progress=None) -> list[Row]:
    """Measure every row on the same prompts; returns them with comparisons filled in."""
    if repeats < 1 or max_new_tokens < 1:
        raise InputError("repeats and max_new_tokens must be >= 1")
    ids = [lm.encode(p, chat) for p in prompts]
    runners = [_runner(lm, r, max_new_tokens) for r in rows]
    with torch.inference_mode():
        for fn in runners:
            fn(ids[0])  # warm-up, not timed
    for rep in range(repeats):
        measure_repeat(rows, runners, ids, rep)
    if progress is not None:
        for r in rows:
            progress(r)
    compare(rows)
    return rows
