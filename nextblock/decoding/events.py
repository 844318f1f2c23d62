"""What the decoding loop reports and takes: events, the collected result, requests.

Event order, per block of the running batch: zero or more `Step("denoise")`, then the
block's `Emit` (its final tokens, and the rows that ended with them), then the `Step` of
the forward that stored it: `"commit"` (block and AR modes; not sent when no row is left)
or `"verify"` (verified mode; always sent, after its Emit). A `Step("prefill")` starts
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


@dataclass
class Emit:
    """Tokens that became final (a block finished), and rows that ended with them."""

    tokens: dict[int, list[int]]
    finished: dict[int, str] = field(default_factory=dict)  # row -> "stop" | "length"


@dataclass
class Result:
    tokens: list[list[int]]  # generated ids per row (the stop token included, as in HF)
    finish_reasons: list[str]
    prompt_tokens: list[int]
    forwards: int = 0
    seconds: float = 0.0
    trace: list[Step] | None = None
    fused: int = 0  # forwards saved by the fused commit
    drafted: int = 0  # verified mode: drafted tokens checked, and accepted
    accepted: int = 0

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def add(self, ev: "Step | Emit", keep_trace: bool = False) -> None:
        """Account for one event of `decode` (run() does this; so can a streaming caller)."""
        if isinstance(ev, Step):
            if ev.fused:
                self.fused += 1
            elif not ev.cached:
                self.forwards += 1
            for checked, accepted in ev.drafted.values():
                self.drafted += checked
                self.accepted += accepted
            if keep_trace:
                if self.trace is None:
                    self.trace = []
                self.trace.append(ev)
        else:
            for r, toks in ev.tokens.items():
                self.tokens[r].extend(toks)
            for r, why in ev.finished.items():
                self.finish_reasons[r] = why

    @classmethod
    def empty(cls, prompts: list[list[int]]) -> "Result":
        return cls([[] for _ in prompts], ["length"] * len(prompts), [len(p) for p in prompts])


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
