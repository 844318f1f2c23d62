"""Training data: files -> token rows, and a deterministic plan of which rows each step uses.

Sources (read with `datasets`, never downloaded): `.txt`, `.jsonl`/`.json` with a text field,
`.parquet`, or a folder of those. A source whose records have `messages` is chat data (SFT),
otherwise plain text.

- Text is tokenised, joined with the end-of-sequence token and cut into `seq_len` rows
  (packing: no padding); every token is a target; the block grid starts at position 0.
  With `documents=True` (long-context stages) each row also records which document every
  token belongs to: attention stays inside a document, and each document has its own
  positions and block grid (a document cut by a row boundary goes on as a new one).
- Chat: one conversation per row, rendered with the model's chat template, truncated to
  `seq_len`; only assistant turns are targets. The block grid of a row starts at its first
  assistant response (`offset`), so training blocks line up with inference, where block 0
  begins right after the prompt with the response's first token as its anchor. Later turns
  of a multi-turn conversation are not re-aligned.

Mixtures: `path:weight` per source. `plan(...)` draws, from the seed alone, which row every
example of the run is, so the data position of a resumed run is just the step number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

EXTENSIONS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ConfigError):
    """Unusable training data: the message names the file and the problem."""


@dataclass
class Row:
    ids: list[int]
    targets: list[bool]  # which tokens the loss counts
    offset: int = 0  # where the block grid starts
    docs: list[int] | None = None  # document of each token (packed with boundaries)


def parse_source(spec: str) -> tuple[str, float]:
    """'path' or 'path:weight'."""
    path, _, weight = spec.rpartition(":") if ":" in spec else (spec, "", "1")
    try:
        w = float(weight)
    except ValueError:
        return spec, 1.0
    if not w > 0:
        raise DataError(f"{spec}: a mixture weight must be > 0")
    return path, w


def data_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in EXTENSIONS)
    if not files:
        raise DataError(f"{p}: no data files ({', '.join(EXTENSIONS)})")
    bad = [f for f in files if f.suffix not in EXTENSIONS]
    if bad:
        raise DataError(f"{bad[0]}: unsupported file type (use {', '.join(EXTENSIONS)})")
    return files


def read_records(path: str | Path, field: str | None = None) -> tuple[str, list]:
    """('chat', list of message lists) or ('text', list of strings) from a file or folder."""
    import datasets

    datasets.disable_progress_bars()
    files = data_files(path)
    kinds = {EXTENSIONS[f.suffix] for f in files}
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes file types {sorted(kinds)}; give one source per type")
    kind = kinds.pop()
    try:
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # noqa: BLE001 - a parser error names the file
        raise DataError(f"{path}: cannot read ({str(e).splitlines()[0][:200]})") from None
    if len(ds) == 0:
        raise DataError(f"{path}: no records")
    if field is None:
        field = "messages" if "messages" in ds.column_names else "text"
    if field not in ds.column_names:
        raise DataError(f"{path}: no field {field!r} (fields: {', '.join(ds.column_names)})")
    return ("chat" if field == "messages" else "text"), ds[field]


def pack_text(texts: list[str], tokenizer, seq_len: int, documents: bool = False
              ) -> list[Row]:
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    doc: list[int] = []
    for i, t in enumerate(texts):
        if t:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
            stream += ids
            doc += [i] * len(ids)
    n = len(stream) // seq_len
    cut = [slice(i * seq_len, (i + 1) * seq_len) for i in range(n)]
    return [Row(stream[c], [True] * seq_len, docs=doc[c] if documents else None) for c in cut]


def render_chat(messages: list[dict], tokenizer, seq_len: int, index: int = 0) -> Row | None:
    """One conversation -> Row with targets on assistant turns; None if no response fits."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError(f"conversation {index} has no assistant turn")

    def ids(msgs, gen_prompt=False):
        text = tokenizer.apply_chat_template(msgs, tokenize=False,
                                             add_generation_prompt=gen_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = ids(messages)
    targets = [False] * len(full)
    offset = None
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start, end = len(ids(messages[:i], True)), len(ids(messages[:i + 1]))
        if full[:end] != ids(messages[:i + 1]) or ids(messages[:i], True) != full[:start]:
            raise DataError("the chat template does not render conversations prefix by "
                            "prefix; response masks cannot be computed")
        targets[start:end] = [True] * (end - start)
        offset = start if offset is None else offset
    if offset >= seq_len - 1:
        return None
    return Row(full[:seq_len], targets[:seq_len], offset)


def load_rows(spec: str, tokenizer, seq_len: int, field: str | None = None,
              documents: bool = False) -> list[Row]:
    kind, records = read_records(spec, field)
    if kind == "text":
        rows = pack_text(records, tokenizer, seq_len, documents)
    else:
        if tokenizer.chat_template is None:
            raise DataError(f"{spec}: chat data needs a tokenizer with a chat template")
        rows = [r for i, msgs in enumerate(records)
                if (r := render_chat(msgs, tokenizer, seq_len, i)) is not None]
    if not rows:
        raise DataError(f"{spec}: no training row of {seq_len} tokens could be made")
    return rows


def plan(sizes: list[int], weights: list[float], n_examples: int, seed: int
         ) -> list[tuple[int, int]]:
    """(source, row) for each example of the run: sources drawn by weight, each source's
    rows visited in a fresh random order every epoch. Depends on the seed only."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n_examples,
                              replacement=True, generator=g).tolist()
    orders = [[] for _ in sizes]
    out = []
    for s in picks:
        if not orders[s]:
            orders[s] = torch.randperm(sizes[s], generator=g).tolist()
        out.append((s, orders[s].pop()))
    return out


def collate(rows: list[Row], pad_id: int):
    """Right-padded batch: (ids [B, L], lengths [B], targets [B, L], offsets [B], docs
    [B, L] or None when no row records documents)."""
    L = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    targets = torch.zeros((len(rows), L), dtype=torch.bool)
    with_docs = any(r.docs is not None for r in rows)
    docs = torch.full((len(rows), L), -1, dtype=torch.long) if with_docs else None
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
        targets[i, :len(r.ids)] = torch.tensor(r.targets)
        if with_docs:
            docs[i, :len(r.ids)] = torch.tensor(r.docs or [0] * len(r.ids))
    lengths = torch.tensor([len(r.ids) for r in rows])
    offsets = torch.tensor([r.offset for r in rows])
    return ids, lengths, targets, offsets, docs
