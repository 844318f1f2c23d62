"""The batching engine: submit / step / cancel over the decoding loop, with per-row accounts.

Every caller that decodes drives this one object: `lm.generate` and `loop.run` (all rows
submitted at once), `lm.generate_each` (rows join as others end, `max_batch` at a time),
`lm.stream` (one row, its events forwarded), the server's scheduler (one engine per batch
shape) and, through `lm`, `eval` and the benchmarks.

    eng = Engine(model, settings, mask_token_id=m, stop_token_ids=[2], max_batch=8)
    eng.submit(Request(7, prompt_ids, max_new_tokens=64, seed=1))
    while eng.busy:
        events = eng.step()               # events up to and including the next forward's Step
        for rid, gen in eng.finished():   # rows that ended, each with its own Generation
            ...
    eng.cancel(7)                         # leaves at the next block boundary
    gen = run(model, prompts, settings, mask_token_id=m)  # a whole batch, collected

Rows submitted while a batch runs join it at the next block boundary (`decode`'s `admit`);
when every row has left, the next `step` starts a fresh batch with whatever is queued.
Accounting, per row and for the whole run, is `Generation.add` (events.py): a row's
`seconds` are its share of each forward it ran (wall time split evenly over that forward's
rows), measured inside `step`, so the caller's own time between steps is not counted.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterator

import torch

from ..config import DecodeSettings
from .events import Completion, Emit, Generation, Prefix, Request, Step, StopFn
from .loop import decode, requests


class Engine:
    def __init__(self, model, settings: DecodeSettings, *, mask_token_id: int,
                 stop_token_ids=(), stop_fn: StopFn | None = None,
                 max_context: int | None = None, max_batch: int | None = None,
                 prefix: Prefix | None = None, trace: bool = False,
                 mixed_phase: bool | None = None):
        self.model, self.settings, self.prefix = model, settings, prefix
        self.kw = dict(mask_token_id=mask_token_id, stop_token_ids=stop_token_ids,
                       max_context=max_context)
        self.default_stop, self.stops = stop_fn, {}
        self.max_batch, self.keep_trace = max_batch, trace
        self.mixed_phase = mixed_phase  # block mode; None: for batches (decode's docstring)
        self.queue: deque[Request] = deque()
        self.cancelled: set[int] = set()
        self.rows: dict[int, Generation] = {}  # live rows' own accounts
        self.done: list[tuple[int, Generation]] = []
        self.ending: list[int] = []  # ended in this step; handed out at its end
        self.total = Generation([], settings)  # the whole run's counters (forwards once)
        self.events: Iterator | None = None

    # ---- the caller's side ----------------------------------------------------------
    def submit(self, req: Request, stop_fn: StopFn | None = None) -> None:
        """Queue a row; it joins at the next block boundary. `stop_fn` overrides the
        engine's for this row (per-request stop strings)."""
        if req.id in self.rows or any(q.id == req.id for q in self.queue):
            raise ValueError(f"row id {req.id} is already in this engine")
        self.queue.append(req)
        if stop_fn is not None:
            self.stops[req.id] = stop_fn

    def cancel(self, rid: int) -> None:
        """A queued row ends now; a running one leaves at the next block boundary."""
        for req in list(self.queue):
            if req.id == rid:
                self.queue.remove(req)
                g = self._account(rid, req)
                g.completions[0].finish_reason = "cancelled"
                self.done.append((rid, self.rows.pop(rid)))
                return
        if rid in self.rows and rid not in self.ending:
            self.cancelled.add(rid)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.rows)

    def step(self, on_event: Callable[[Step | Emit], None] | None = None) -> list[Step | Emit]:
        """Run to the end of the next forward pass: its events (Emits first, the Step
        last); fewer, without a Step, when the batch ran out; [] when nothing is left."""
        out, t0 = [], time.perf_counter()
        while self.busy:
            if self.events is None:
                self.events = self._start()
            ev = next(self.events, None)
            if ev is None:  # every row left at a boundary: a later step starts afresh
                self.events = None
                if out or not self.queue:
                    break
                continue
            self._add(ev, time.perf_counter() - t0)
            if on_event is not None:
                on_event(ev)
            out.append(ev)
            if isinstance(ev, Step):
                break
        for rid in self.ending:  # after the forward that ended them (a verify's) counted
            self.done.append((rid, self.rows.pop(rid)))
            self.stops.pop(rid, None)
        self.ending.clear()
        self.total.seconds += time.perf_counter() - t0
        return out

    def finished(self) -> list[tuple[int, Generation]]:
        """Rows that ended since the last call (stop, length or cancelled), with their
        accounts, after the forward that ended them has been counted."""
        done, self.done = self.done, []
        return done

    def result(self, ids: list[int]) -> Generation:
        """The whole run as one Generation with rows `ids` in order (ended, and not yet
        handed out by `finished`): completions from the rows, forwards counted once each."""
        by_id = dict(self.done)
        g = self.total
        return Generation([by_id[i].completions[0] for i in ids], self.settings, g.forwards,
                          g.seconds, g.trace, [by_id[i].prompts[0] for i in ids], g.fused,
                          g.drafted, g.accepted)

    # ---- the loop's side ------------------------------------------------------------
    def _start(self) -> Iterator[Step | Emit]:
        first = self._take()
        prefix, self.prefix = self.prefix, None  # a stored prefill serves the first batch
        batched = self.mixed_phase if self.mixed_phase is not None else (
            len(first) + len(self.queue) if self.max_batch is None else self.max_batch) > 1
        return decode(self.model, first, self.settings, stop_fn=self._stop, admit=self._admit,
                      prefix=prefix, mixed_phase=batched, **self.kw)

    def _take(self) -> list[Request]:
        running = len(self.rows) - len(self.ending)
        room = len(self.queue) if self.max_batch is None else self.max_batch - running
        new = [self.queue.popleft() for _ in range(min(room, len(self.queue)))]
        for req in new:
            self._account(req.id, req)
        return new

    def _admit(self) -> tuple[list[Request], set[int]]:
        cancel, self.cancelled = self.cancelled & set(self.rows), set()
        return self._take(), cancel

    def _stop(self, row: int, tokens: list[int]) -> "int | None":
        fn = self.stops.get(row, self.default_stop)
        return None if fn is None else fn(row, tokens)

    def _account(self, rid: int, req: Request) -> Generation:
        g = Generation([Completion([], "length", len(req.prompt))], self.settings,
                       prompts=[list(req.prompt)])
        self.rows[rid] = g
        return g

    def _add(self, ev: Step | Emit, seconds: float) -> None:
        if isinstance(ev, Step):  # the run's counters; tokens live in the rows' accounts
            self.total.add(ev, keep_trace=self.keep_trace)
        for rid in (ev.rows if isinstance(ev, Step) else set(ev.tokens) | set(ev.finished)):
            g = self.rows[rid]
            g.add(ev, row=rid)
            if isinstance(ev, Step):
                g.seconds += seconds / len(ev.rows)
        if isinstance(ev, Emit):
            self.ending += list(ev.finished)


def run(model, prompts: "list[list[int]] | list[Request]", settings: DecodeSettings, *,
        trace: bool = False, on_event: Callable[[Step | Emit], None] | None = None,
        seeds: list[int | None] | None = None, max_new: list[int] | None = None,
        prefix: Prefix | None = None, **kw) -> Generation:
    """Decode a whole batch to the end: one Generation, completions in prompt order, each
    forward counted once (and the trace of Steps with `trace`)."""
    reqs = requests(prompts, settings, seeds, max_new, prefix)
    eng = Engine(model, settings, trace=trace, prefix=prefix, **kw)
    for req in reqs:
        eng.submit(req)
    with torch.inference_mode():
        while eng.busy:
            eng.step(on_event)
    res = eng.result([r.id for r in reqs])
    if trace and res.trace is None:
        res.trace = []
    return res
