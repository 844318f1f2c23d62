"""The decoding driver: prefill, then one block at a time by the mode's strategy.

    for event in decode(model, prompts, settings, mask_token_id=m):  # Step or Emit events
        ...
    p = prefill(model, prompt, mask_token_id=m)                     # prefill once ...
    decode(model, [prompt + more], settings, mask_token_id=m, prefix=p)  # ... decode from it

Callers do not drive this generator themselves: the batching engine (engine.py: submit /
step / cancel, per-row accounts, `run` to collect a whole batch) does, for all of them.

A block of B tokens starts with its anchor, chosen from the last logit of the previous causal
pass (the prefill for block 0), followed by B-1 masks. Denoise steps run the block over the
cache without storing it (peek) and a policy fills masked positions; then the finished block
is run once more causally and stored (commit), whose last logit gives the next anchor. With
B = 1 there is nothing to denoise: exact, cached AR decoding (strategies.ar).

verified mode: the commit pass also checks the drafted block against its own causal choices
(`verify`); rejected positions are dropped from the cache. Fused commit: the commit forward
also carries the next block's first denoise step, anchored on a guess; the result is used
only if the commit confirms the guess (batch.Lookahead).

Rows of a batch are left-padded and move in lockstep (batch.Batch); a row leaves the batch
when it ends (stop token, stop string, length) and its cache rows are dropped; with
`admit`, rows join and leave at block boundaries (continuous batching).
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..config import DecodeSettings
from .batch import Batch
from .events import Admit, Emit, Prefix, Request, Step, StopFn
from .mixed import mixed
from .rows import Rows
from .strategies import STRATEGIES as LOCKSTEP

STRATEGIES = {**LOCKSTEP, "mixed": mixed}

__all__ = ["Admit", "Emit", "Prefix", "Request", "Step", "StopFn", "decode", "prefill",
           "requests"]


def prefill(model, prompt: list[int], *, mask_token_id: int, chunk: int = 2048) -> Prefix:
    """Prefill one prompt (chunked) and keep it, for `decode(..., prefix=)`."""
    with torch.inference_mode():
        rows = Rows(model, [prompt], len(prompt), mask_token_id)
        logits = rows.prefill(torch.tensor([prompt], device=rows.seq.device), chunk)
    return Prefix(list(prompt), rows, logits)


def decode(model, prompts: "list[list[int]] | list[Request]", settings: DecodeSettings, *,
           mask_token_id: int, stop_token_ids=(), seeds: list[int | None] | None = None,
           stop_fn: StopFn | None = None, max_context: int | None = None,
           max_new: list[int] | None = None, admit: Admit | None = None,
           prefix: Prefix | None = None, mixed_phase: bool = False) -> Iterator[Step | Emit]:
    """Yield a Step per forward pass and an Emit per finished block (events.py). Inputs
    are validated by the caller (nextblock.lm); `max_context` caps prompt + generated
    positions; `max_new` gives per-row budgets (default: settings.max_new_tokens). Rows
    are numbered 0.. in events, or carry their own ids when given as Requests. `admit`,
    called at every block boundary, lets rows join the running batch and leave it
    ("cancelled"). `prefix`: a stored prefill of the (single) prompt's beginning.
    `mixed_phase`: block mode with rows in phases of their own (mixed.py; for batches: at
    batch 1 the lockstep strategy, which can fuse commits, makes fewer forwards)."""
    s = settings
    strategy = STRATEGIES["verified" if s.mode == "verified" else
                          "ar" if s.effective_block_size == 1 else
                          "mixed" if mixed_phase else "block"]
    batch = Batch(model, s, mask_token_id, stop_token_ids, stop_fn, max_context, prefix)
    yield batch.join(requests(prompts, s, seeds, max_new, prefix))
    while True:
        if admit is not None:
            yield from _admit(batch, admit)
        if batch.empty:
            return
        yield from strategy(batch)
        if batch.empty and admit is None:
            return


def requests(prompts, s: DecodeSettings, seeds=None, max_new=None, prefix=None) -> list[Request]:
    """Requests numbered 0.. for plain prompts (per-row budgets and seeds, default the
    settings'); Requests pass through. A prefix serves a single prompt it begins."""
    if isinstance(prompts[0], Request):
        reqs = prompts
    else:
        n = len(prompts)
        reqs = [Request(i, p, (max_new or [s.max_new_tokens] * n)[i], (seeds or [s.seed] * n)[i])
                for i, p in enumerate(prompts)]
    if prefix is not None and (len(reqs) != 1
                               or reqs[0].prompt[:len(prefix.tokens)] != prefix.tokens):
        raise ValueError("a prefix serves one prompt that starts with its tokens")
    return reqs


def _admit(batch: Batch, admit: Admit) -> Iterator[Step | Emit]:
    """A block boundary: rows the caller cancelled leave, new rows join (prefilled)."""
    new, cancel = admit()
    gone = {r: "cancelled" for r in batch.alive if r in cancel}
    if gone:
        yield Emit({}, gone)
        batch.drop(gone)
        batch.look.invalidate()
    if new:
        yield batch.join(new)

