"""What the decoding loop reports and takes: events, the one result type, requests.

Event order, per block of the running batch: zero or more `Step("denoise")`, then the
block's `Emit` (its final tokens, and the rows that ended with them), then the `Step` of
the forward that stored it: `"commit"` (block and AR modes; not sent when no row is left)
or `"verify"` (verified mode; always sent, after its Emit). In mixed-phase block decoding
(mixed.py) every forward is one `Step("mixed")`, preceded by an Emit of the rows whose
block became complete; its `row_blocks` give each row's own block. A `Step("prefill")` starts
every group of rows that joins; an `Emit` with only `finished` ("cancelled") reports rows
that left. Every event names the rows it concerns by their ids: an Emit in its dicts, a
Step in `rows` (the rows the forward ran: a prefill's new rows, a verify's rows before the
finished ones leave), so no consumer infers them from the event kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Step:
    """One forward pass. `filled[row]` lists (generated index, token id) it decided."""

    kind: str  # "prefill" | "denoise" | "commit" | "verify"
    block: int  # index of the block being decoded (the next block's anchor for commit)
    start: int  # generated index of that block's first token (row 0's, in verified mode)
    size: int  # tokens in that block
    filled: dict[int, list[tuple[int, int]]]
    fused: bool = False  # it also ran (and kept) the next block's first denoise step
    cached: bool = False  # a prefill served whole by a stored prefix: no forward ran
    drafted: dict[int, tuple[int, int]] = field(default_factory=dict)  # verify: row ->
    # (drafted tokens checked, accepted)
    rows: tuple[int, ...] = ()  # ids of the rows this forward ran
    # mixed-phase forwards (kind "mixed"): rows are in blocks of their own, so each row's
    # (block index, block size) replaces `block` / `size` for it
    row_blocks: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Emit:
    """Tokens that became final (a block finished), and rows that ended with them."""

    tokens: dict[int, list[int]]
    finished: dict[int, str] = field(default_factory=dict)  # row -> "stop" | "length"


@dataclass
class Completion:
    """One row's output: generated ids (the stop token included, as in HF), why it ended,
    and its text (filled in by `NextBlockModel`, which has the tokenizer)."""

    tokens: list[int]
    finish_reason: str = "length"  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    text: str = ""


@dataclass
class Generation:
    """The one result type: completions and the counters of the forwards that made them.
    For a whole batch (`lm.generate`, `engine.run`) a forward counts once; for one row of a
    continuous batch (`lm.generate_each`, the engine's `finished()`) the counters are that
    row's: the forwards it took part in, and its share of their wall time."""

    completions: list[Completion]
    settings: "object" = None  # the DecodeSettings used
    forwards: int = 0
    seconds: float = 0.0
    trace: list[Step] | None = None
    prompts: list[list[int]] = field(default_factory=list)
    fused: int = 0  # forwards the fused commit saved
    drafted: int = 0  # verified mode: drafted tokens checked, and accepted
    accepted: int = 0

    @classmethod
    def empty(cls, prompts: list[list[int]], settings=None) -> "Generation":
        return cls([Completion([], "length", len(p)) for p in prompts], settings,
                   prompts=[list(p) for p in prompts])

    @property
    def text(self) -> str:
        return self.completions[0].text

    @property
    def tokens(self) -> list[int]:
        return self.completions[0].tokens

    @property
    def all_tokens(self) -> list[list[int]]:
        return [c.tokens for c in self.completions]

    @property
    def finish_reasons(self) -> list[str]:
        return [c.finish_reason for c in self.completions]

    @property
    def new_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.completions)

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / max(1, self.forwards)

    def add(self, ev: "Step | Emit", keep_trace: bool = False, row: int | None = None) -> None:
        """Account for one event of `decode`: every row (completions indexed by row id), or,
        with `row`, only that row's part (into completions[0]; a Step counts if it ran it)."""
        if isinstance(ev, Emit):
            for r, toks in ev.tokens.items():
                if row is None or r == row:
                    self.completions[0 if row is not None else r].tokens.extend(toks)
            for r, why in ev.finished.items():
                if row is None or r == row:
                    self.completions[0 if row is not None else r].finish_reason = why
            return
        if row is not None and row not in ev.rows:
            return
        self.fused += ev.fused
        self.forwards += not (ev.fused or ev.cached)
        for r, (checked, accepted) in ev.drafted.items():
            if row is None or r == row:
                self.drafted, self.accepted = self.drafted + checked, self.accepted + accepted
        if keep_trace:
            if self.trace is None:
                self.trace = []
            self.trace.append(ev)


StopFn = Callable[[int, list[int]], "int | None"]  # (row, generated so far) -> tokens to keep


@dataclass
class Request:
    """A row to decode: its id (used in every event), prompt ids, budget and seed."""

    id: int
    prompt: list[int]
    max_new_tokens: int
    seed: int | None = None


Admit = Callable[[], "tuple[list[Request], set[int]]"]  # -> (rows to add, row ids to cancel)


@dataclass
class Prefix:
    """One prompt prefilled once, to decode from many times (several modes or samples, or
    several questions after the same long document): its stored row and the logits of its
    last position. `decode(..., prefix=p)` works on a copy, for a prompt that starts with
    `tokens`; only the rest of that prompt is prefilled."""

    tokens: list[int]
    rows: "object"  # decoding.rows.Rows
    logits: torch.Tensor
