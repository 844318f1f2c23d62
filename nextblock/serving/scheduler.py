"""Continuous batching for the server: one worker thread owns the model and steps one
batching engine (decoding.engine) per decoding shape; requests with the same shape share
an engine, join its batch at a block boundary (between commits) and leave it when done or
cancelled.

    sched = Scheduler(lm, max_batch=8, max_queue=64)
    jobs, queue = sched.submit([prompt_ids], settings, max_new_tokens=64, seed=1, n=1)
    index, kind, value = await queue.get()  # ("tokens", [ids]) ..., ("done", "stop"|"length")
    sched.cancel(jobs[0])                   # a client went away: its row leaves at the next block

Batches with different shapes (mode, block size, sampling settings...) are stepped in turn,
one forward each, so no request waits for another's whole generation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import torch

from .. import text as textlib
from ..config import DecodeSettings
from ..decoding.engine import Engine
from ..decoding.events import Emit, Request

log = logging.getLogger("nextblock.serve")


class QueueFull(Exception):
    pass


class TooLarge(Exception):
    """A request that can never fit the queue (n x prompts > max_queue): not retryable."""


class ShuttingDown(Exception):
    pass


@dataclass
class Job:
    """One completion (one of a request's n choices). Its events go to the request's queue
    as (index, kind, value): ("tokens", [ids]), then ("done", reason) or ("error", text)."""

    id: int
    index: int
    prompt: list[int]
    settings: DecodeSettings
    max_new_tokens: int
    seed: int | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False

    def put(self, kind: str, value) -> None:  # called from the worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, kind, value))
        except RuntimeError:  # the caller's event loop has closed: nobody is listening
            self.cancelled = True


def batch_key(s: DecodeSettings) -> tuple:
    """Requests share a batch when everything but budget, seed and stop strings agrees."""
    return (s.mode, s.effective_block_size, s.effective_sub_block, s.threshold, s.confidence,
            s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.fused_commit)


class _Batch:
    """One batching engine (decoding.engine) and the jobs in it."""

    def __init__(self, sched: "Scheduler", key: tuple, settings: DecodeSettings):
        self.sched, self.key, self.jobs = sched, key, {}
        self.engine = Engine(sched.lm.model, settings, mask_token_id=sched.mask_token_id,
                             stop_token_ids=sched.stop_token_ids,
                             max_context=sched.lm.context_length,
                             mixed_phase=sched.max_batch > 1)  # rows will join

    def add(self, jobs: list[Job]) -> None:
        """Jobs join the running batch at its next block boundary."""
        for j in jobs:
            self.jobs[j.id] = j
            self.engine.submit(Request(j.id, j.prompt, j.max_new_tokens, j.seed),
                               stop_fn=textlib.stop_checker(self.sched.lm.tokenizer,
                                                            j.settings.stop))

    def step(self) -> bool:
        """Run the next forward pass; False when the batch has no job left."""
        for j in self.jobs.values():
            if j.cancelled:
                self.engine.cancel(j.id)
        for ev in self.engine.step():
            if isinstance(ev, Emit):
                self._emit(ev)
            elif ev.kind != "prefill" and not ev.fused and ev.rows:
                self.sched.batch_sizes[len(ev.rows)] += 1  # the rows the forward ran
        for rid, _ in self.engine.finished():
            if rid in self.jobs:  # a queued job cancelled before it ran: no Emit named it
                self.sched._finish(self.jobs.pop(rid), "cancelled")
        return self.engine.busy

    def _emit(self, ev: Emit) -> None:
        for row, toks in ev.tokens.items():
            job = self.jobs[row]
            if toks and not job.cancelled:
                job.tokens.extend(toks)
                job.put("tokens", toks)
        for row, why in ev.finished.items():
            self.sched._finish(self.jobs.pop(row), why)


class Scheduler:
    def __init__(self, lm, max_batch: int = 8, max_queue: int = 64):
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.mask_token_id = lm.config.mask_token_id
        self.stop_token_ids = lm.stop_token_ids
        self.pending: dict[tuple, deque[Job]] = {}
        self.batches: dict[tuple, _Batch] = {}
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.ids = itertools.count()
        self.closing = self.abort = False
        self.paused = False
        self.batch_sizes: Counter = Counter()  # rows per forward pass -> passes
        self.counts: Counter = Counter()  # finished jobs by reason
        self.tokens_generated = 0
        self.thread = threading.Thread(target=self._run, name="nextblock-scheduler",
                                       daemon=True)
        self.thread.start()

    # ---- called from the server's event loop ----------------------------------------
    def submit(self, prompts: list[list[int]], settings: DecodeSettings,
               max_new_tokens: int, seed: int | None, n: int = 1) -> tuple[list[Job],
                                                                           asyncio.Queue]:
        """Queue n jobs per prompt (choice index = prompt * n + j; seeds seed, seed+1, ...)
        and return them with the queue their events arrive on. Raises QueueFull or
        ShuttingDown. Call from the event loop."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        count = len(prompts) * n
        if count > self.max_queue:
            raise TooLarge(f"{count} completions (n={n} x {len(prompts)} prompt(s)) can never "
                           f"fit this server's queue of {self.max_queue}")
        # manual_seed takes [-2^63, 2^64); the schema bounds the seed, the wrap keeps
        # seed + j in range, so no row can fail the batch it joins
        seeds = [None if seed is None else (seed + i % n) % 2 ** 64 for i in range(count)]
        with self.lock:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            if self.queued() + count > self.max_queue:
                raise QueueFull(f"{self.queued()} requests are waiting (limit "
                                f"{self.max_queue}); retry later")
            jobs = [Job(next(self.ids), i, prompts[i // n], settings, max_new_tokens,
                        seeds[i], loop, queue) for i in range(count)]
            self.pending.setdefault(batch_key(settings), deque()).extend(jobs)
            self.wake.notify()
        return jobs, queue

    def cancel(self, job: Job) -> None:
        with self.lock:
            job.cancelled = True
            q = self.pending.get(batch_key(job.settings))
            if q is not None and job in q:  # not started: just forget it
                q.remove(job)
                self._finish(job, "cancelled")
            self.wake.notify()

    def queued(self) -> int:
        return sum(len(q) for q in self.pending.values())

    def active(self) -> int:
        return sum(len(b.jobs) for b in self.batches.values())

    def pause(self, paused: bool = True) -> None:
        """Hold the worker between forwards (tests, maintenance); queued jobs wait."""
        with self.lock:
            self.paused = paused
            self.wake.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting jobs; let running ones finish for up to `timeout` seconds, then
        end every remaining job with an error."""
        with self.lock:
            self.closing = True
            self.wake.notify()
        self.thread.join(timeout)
        with self.lock:
            self.abort = True  # the worker stops after its current forward
            leftover = [j for q in self.pending.values() for j in q]
            leftover += [j for b in list(self.batches.values()) for j in b.jobs.values()]
            self.pending.clear()
            self.wake.notify()
        for j in leftover:
            if not j.done:
                j.done = True
                j.put("error", "the server shut down before this request finished")

    def stats(self) -> dict:
        return {"queued": self.queued(), "active": self.active(),
                "max_batch": self.max_batch, "max_queue": self.max_queue,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_seen": max(self.batch_sizes, default=0),
                "finished": dict(self.counts), "tokens_generated": self.tokens_generated}

    # ---- the worker thread ----------------------------------------------------------
    def _take(self, key: tuple, room: int) -> list[Job]:
        with self.lock:
            if self.closing:
                return []
            q = self.pending.get(key)
            out = []
            while q and room > 0 and self.active() + len(out) < self.max_batch:
                job = q.popleft()
                out.append(job)
                room -= 1
            return out

    def _finish(self, job: Job, why: str) -> None:
        self.counts[why] += 1
        self.tokens_generated += len(job.tokens)
        job.done = True
        job.put("done", why)

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                while (self.paused or not (self.batches or self.queued())) and not (
                        self.abort or (self.closing and not self.batches)):
                    self.wake.wait()
                if self.abort or (self.closing and not self.batches):
                    return
                startable = [] if self.closing else [
                    k for k, q in self.pending.items()
                    if q and k not in self.batches and self.active() < self.max_batch]
            for key in startable:  # a new shape gets its own batch
                first = self._take(key, self.max_batch)
                if first:
                    self.batches[key] = _Batch(self, key, first[0].settings)
                    self.batches[key].add(first)
            for key, batch in list(self.batches.items()):  # one forward per batch in turn
                batch.add(self._take(key, self.max_batch))  # they join at a block boundary
                try:
                    with torch.inference_mode():
                        alive = batch.step()
                except Exception:  # noqa: BLE001 - a failed batch must not stop the server
                    log.exception("decoding failed for jobs %s", sorted(batch.jobs))
                    for job in batch.jobs.values():
                        job.done = True
                        job.put("error", "internal error while decoding")
                    alive = False
                if not alive:
                    del self.batches[key]
