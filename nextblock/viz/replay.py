"""Replaying decoding events for one batch row: which tokens are final, what the current
block looks like (masks, tokens filled earlier, tokens filled by the latest forward).
Shared by the terminal view (live.py) and the HTML page (html.py).

    r = Replay(row=0)
    for ev in events:                  # Step / Emit from nextblock.decoding.loop
        r.step(ev) if isinstance(ev, Step) else r.emit(ev)
        r.cells, r.new, r.committed    # block state after that event
    frames(generation.trace, row=0, limit=len(generation.tokens))  # one Frame per Step
"""

from __future__ import annotations

from dataclasses import dataclass

from ..decoding.loop import Emit, Step

MASK = "░░"  # how a masked position is drawn in text


@dataclass
class Frame:
    """The state of one row after one forward pass (trace step `index`, 0-based)."""

    index: int
    kind: str
    block: int
    start: int  # generated index of cells[0]
    committed: list[int]  # final tokens before the current block
    cells: list[int | None]  # current block: token id, or None for a mask
    new: list[int]  # positions in `cells` filled by this forward
    forwards: int = 0  # forwards run up to this step (what the summary counts)

    @property
    def decided(self) -> int:
        return len(self.committed) + sum(t is not None for t in self.cells)

    @property
    def tokens(self) -> list[int]:
        """Every token decided so far, in order (masks skipped)."""
        return self.committed + [t for t in self.cells if t is not None]


class Replay:
    """Incremental state of one row, fed Step (and optionally Emit) events."""

    def __init__(self, row: int = 0):
        self.row = row
        self.steps = 0  # trace steps seen
        # forwards run (whole batch: one forward serves every row); a fused step ran inside
        # the commit forward before it and a cached prefill ran none: the summary's count
        self.forwards = 0
        self.kind, self.block, self.start = "", -1, 0
        self.committed: list[int] = []
        self.cells: list[int | None] = []
        self.new: list[int] = []
        self.finished: str | None = None

    def step(self, st: Step) -> None:
        self.steps += 1
        self.forwards += not (st.fused or st.cached)
        self.kind, self.new = st.kind, []
        filled = st.filled.get(self.row)
        if filled is None:  # this row is no longer in the batch
            return
        block, size = st.row_blocks.get(self.row, (st.block, st.size))
        if block != self.block:  # prefill / commit: a new block starts with its anchor
            cells = self.cells
            if st.kind == "verify":  # only the verified prefix of the draft stays
                cells = cells[:st.drafted[self.row][1] + 1]
            self.committed += [t for t in cells if t is not None]
            self.block, self.start = block, len(self.committed)
            self.cells = [None] * size
        for i, tok in filled:
            j = i - self.start
            if 0 <= j < len(self.cells):
                self.cells[j] = tok
                self.new.append(j)

    def emit(self, ev: Emit) -> None:
        """The block became final: its (possibly cut) tokens join the committed text."""
        if self.row in ev.tokens:
            self.committed += ev.tokens[self.row]
            self.cells, self.new = [], []
        self.finished = ev.finished.get(self.row, self.finished)

    def frame(self) -> Frame:
        return Frame(self.steps - 1, self.kind, self.block, self.start, list(self.committed),
                     list(self.cells), list(self.new), self.forwards)


def frames(trace: list[Step], row: int = 0, limit: int | None = None) -> list[Frame]:
    """One Frame per trace step. `limit` (the row's final token count) hides, once the row's
    last forward is done, positions past the end (after a stop token or a stop string)."""
    r, out = Replay(row), []
    last = max((k for k, st in enumerate(trace) if row in st.filled), default=-1)
    for k, st in enumerate(trace):
        r.step(st)
        f = r.frame()
        if limit is not None and k >= last:
            keep = max(0, limit - f.start)
            f.committed = f.committed[:limit]
            f.cells = f.cells[:keep]
            f.new = [j for j in f.new if j < keep]
        out.append(f)
    return out


class Pieces:
    """Token id -> short readable string, whitespace made visible (cached)."""

    SHOW = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tok: int) -> str:
        if tok not in self.cache:
            s = self.tokenizer.decode([tok])
            s = "".join(self.SHOW.get(c) or (c if c.isprintable() else
                                             c.encode("unicode_escape").decode()) for c in s)
            self.cache[tok] = s or "∅"
        return self.cache[tok]
