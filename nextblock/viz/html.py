"""A self-contained HTML page (inline CSS and JS, nothing fetched) that replays how one
prompt (batch row 0) was decoded, forward by forward: the prompt, the text growing, the
current block as boxes (masks grey, tokens filled by that forward highlighted), with
play/pause, step back/forward, a slider over the steps, a speed choice and a summary.

    out = lm.generate("Tell me a joke", mode="block", block_size=8, trace=True)
    write_html(out, lm.tokenizer, "joke.html")

The page is page.html beside this file, with the data embedded as JSON.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from pathlib import Path

from .. import text as textlib
from .replay import Pieces, frames

TEMPLATE = Path(__file__).with_name("page.html")


def _safe_json(data) -> str:
    """JSON that cannot end its <script> element early (nor open a comment)."""
    return (json.dumps(data, ensure_ascii=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _summary(generation) -> list[tuple[str, str]]:
    s = generation.settings
    rows = [(k, str(v)) for k, v in dataclasses.asdict(s).items()
            if k != "stop" or v]
    rows.insert(1, ("effective block size", str(s.effective_block_size)))
    rows += [("forwards", str(generation.forwards)),
             ("new tokens", str(generation.new_tokens)),
             ("tokens per forward", f"{generation.tokens_per_forward:.2f}"),
             ("seconds", f"{generation.seconds:.2f}")]
    if generation.completions:
        rows.append(("finish reason", generation.completions[0].finish_reason))
    return rows


def replay_data(generation, tokenizer, row: int = 0) -> dict:
    """The page's data: prompt, per-token strings, committed texts (as deltas), frames."""
    if generation.trace is None:
        raise ValueError("this generation has no trace: generate with trace=True")
    limit = len(generation.completions[row].tokens) if generation.completions else None
    fs = frames(generation.trace, row, limit)
    pieces = Pieces(tokenizer)
    texts: list[dict] = []
    text_of: dict[int, int] = {}  # committed length -> index in texts
    prev = ""
    out = []
    for f in fs:
        n = len(f.committed)
        if n not in text_of:
            t = textlib.decode(tokenizer, f.committed)
            texts.append({"add": t[len(prev):]} if t.startswith(prev) else {"set": t})
            text_of[n], prev = len(texts) - 1, t
        out.append({"k": f.kind, "b": f.block, "s": f.start, "m": n, "c": text_of[n],
                    "ids": f.cells, "new": f.new, "n": f.decided})
    tokens = fs[-1].tokens if fs else []
    prompts = generation.prompts
    prompt = tokenizer.decode(prompts[row]) if len(prompts) > row else ""
    return {"prompt": prompt, "tokens": tokens, "texts": texts, "frames": out,
            "pieces": {str(t): pieces(t) for f in fs for t in f.cells if t is not None},
            "summary": _summary(generation)}


def trace_to_html(generation, tokenizer, title: str = "nextblock decoding replay",
                  row: int = 0) -> str:
    """The replay page as a string (needs a Generation made with trace=True)."""
    fill = {"__TITLE__": html.escape(title),
            "__DATA__": _safe_json(replay_data(generation, tokenizer, row))}
    page = TEMPLATE.read_text(encoding="utf-8")
    return re.sub("__TITLE__|__DATA__", lambda m: fill[m.group()], page)  # one pass


def write_html(generation, tokenizer, path: str | os.PathLike, **kw) -> Path:
    """Write the replay page to `path`; returns the path."""
    path = Path(path)
    path.write_text(trace_to_html(generation, tokenizer, **kw), encoding="utf-8")
    return path
