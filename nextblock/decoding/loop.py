"""The one decoding loop: prefill -> per block (denoise steps -> commit -> next anchor).

    for event in decode(model, prompts, settings, mask_token_id=m):  # Step or Emit events
        ...
    result = run(model, prompts, settings, mask_token_id=m)         # the same, collected

A block of B tokens starts with its anchor, chosen from the last logit of the previous causal
pass (the prefill for block 0), followed by B-1 masks. Denoise steps run the block over the
cache without storing it (peek) and a policy fills masked positions; then the finished block
is run once more causally and stored (commit), whose last logit gives the next anchor. With
B = 1 there is nothing to denoise and the loop is exact, cached AR decoding.

Rows of a batch are left-padded and move in lockstep; a row leaves the batch when it ends
(stop token, stop string, length) and its cache rows are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .. import masks
from ..cache import KVCache
from ..config import DecodeSettings
from ..modeling import forward
from .policies import policy_for
from .sampling import Sampler, confidence


@dataclass
class Step:
    """One forward pass. `filled[row]` lists (generated index, token id) it decided."""

    kind: str  # "prefill" | "denoise" | "commit"
    block: int  # index of the block being decoded (the next block's anchor for commit)
    start: int  # generated index of that block's first token
    size: int  # tokens in that block
    filled: dict[int, list[tuple[int, int]]]


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

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


StopFn = Callable[[int, list[int]], "int | None"]  # (row, generated so far) -> tokens to keep


def decode(model, prompts: list[list[int]], settings: DecodeSettings, *, mask_token_id: int,
           stop_token_ids=(), seeds: list[int | None] | None = None,
           stop_fn: StopFn | None = None, max_context: int | None = None
           ) -> Iterator[Step | Emit]:
    """Yield a Step per forward pass and an Emit per finished block. Inputs are validated
    by the caller (nextblock.lm); `max_context` caps prompt + generated positions."""
    s = settings
    dev = next(model.parameters()).device
    n_rows = len(prompts)
    P = max(len(p) for p in prompts)
    max_new = s.max_new_tokens if max_context is None else min(s.max_new_tokens, max_context - P)
    total = P + max_new
    pad = torch.tensor([P - len(p) for p in prompts], device=dev)

    # Sequence buffer (prompt + generated, for the repetition penalty); pad slots repeat the
    # row's first token so they change nothing. key_valid marks the pad slots.
    seq = torch.full((n_rows, total), mask_token_id, dtype=torch.long, device=dev)
    for r, p in enumerate(prompts):
        seq[r, :P] = torch.tensor([p[0]] * (P - len(p)) + list(p), device=dev)
    slot = torch.arange(total, device=dev)
    key_valid = slot[None, :] >= pad[:, None]
    positions = (slot[None, :] - pad[:, None]).clamp(min=0)
    stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=dev)
    history = s.repetition_penalty != 1.0

    cache = KVCache.for_model(model, n_rows, total)
    sampler = Sampler(s, mask_token_id, seeds or [s.seed] * n_rows)
    policy = policy_for(s)
    alive = list(range(n_rows))  # original row index of each batch row
    out: list[list[int]] = [[] for _ in range(n_rows)]

    def causal_pass(tokens, start):
        """Run tokens at [start, start+T) causally, store them, choose the next token."""
        T = tokens.shape[1]
        mask = masks.decode_mask(key_valid[:, :start + T], start, T, causal=True)
        logits = forward(model, tokens, positions[:, start:start + T], mask, cache,
                         logits_from=T - 1)
        cache.commit(T)
        probs = sampler.probs(logits, seq[:, :start + T] if history else None)
        return sampler.choose(probs)[:, 0]

    anchor = causal_pass(seq[:, :P], 0)
    n, block_index = 0, 0  # generated tokens so far (all alive rows), blocks done
    yield Step("prefill", 0, 0, min(s.effective_block_size, max_new),
               {r: [(0, int(anchor[i]))] for i, r in enumerate(alive)})

    while True:
        b = min(s.effective_block_size, max_new - n)
        start = P + n
        block = torch.full((len(alive), b), mask_token_id, dtype=torch.long, device=dev)
        block[:, 0] = anchor
        seq[:, start:start + b] = block

        if b > 1:  # denoise: peek at the cache, fill masks until the block is done
            dmask = masks.decode_mask(key_valid[:, :start + b], start, b, causal=False)
            pos = positions[:, start:start + b]
            while True:
                need = _still_needed(block, mask_token_id, stop_ids)
                rows_left = need.any(dim=1)
                if not rows_left.any():
                    break
                logits = forward(model, block, pos, dmask, cache)[:, :-1]
                probs = sampler.probs(logits, seq[:, :start + b] if history else None)
                tokens = sampler.choose(probs, draw=rows_left)
                conf = confidence(probs, tokens, policy.confidence)
                conf = torch.cat([torch.full_like(conf[:, :1], -torch.inf), conf], dim=1)
                tokens = torch.cat([block[:, :1], tokens], dim=1)
                transfer = policy.select(conf, need)
                block = torch.where(transfer, tokens, block)
                seq[:, start:start + b] = block
                yield Step("denoise", block_index, n, b, _filled(alive, transfer, tokens, n))

        # the block is final: emit it, end rows that stopped
        n += b
        block_cpu = block.tolist()
        emitted, finished = {}, {}
        for i, r in enumerate(alive):
            toks = block_cpu[i]
            hit = [j for j, t in enumerate(toks) if t in stop_token_ids]
            if hit:
                toks = toks[:hit[0] + 1]
                finished[r] = "stop"
            out[r].extend(toks)
            emitted[r] = toks
            if stop_fn is not None and r not in finished:
                keep = stop_fn(r, out[r])
                if keep is not None:
                    del out[r][keep:]
                    emitted[r] = toks[:max(0, len(toks) - (n - keep))]
                    finished[r] = "stop"
            if r not in finished and n >= max_new:
                finished[r] = "length"
        yield Emit(emitted, finished)
        if finished:
            keep_idx = [i for i, r in enumerate(alive) if r not in finished]
            if not keep_idx:
                return
            idx = torch.tensor(keep_idx, device=dev)
            alive = [alive[i] for i in keep_idx]
            seq, key_valid, positions = seq[idx], key_valid[idx], positions[idx]
            block = block[idx]
            cache.keep_rows(idx)
            sampler.keep_rows(keep_idx)

        # commit: store the block causally; its last logit is the next anchor
        anchor = causal_pass(block, start)
        block_index += 1
        yield Step("commit", block_index, n, min(s.effective_block_size, max_new - n),
                   {r: [(n, int(anchor[i]))] for i, r in enumerate(alive)})


def _still_needed(block, mask_token_id, stop_ids):
    """Masked positions that still matter: those before the row's first stop token."""
    masked = block == mask_token_id
    if stop_ids.numel() == 0:
        return masked
    is_stop = torch.isin(block, stop_ids)
    T = block.shape[1]
    first_stop = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1), T)
    return masked & (torch.arange(T, device=block.device)[None, :] < first_stop[:, None])


def _filled(alive, transfer, tokens, offset):
    rows, cols = transfer.nonzero(as_tuple=True)
    filled: dict[int, list[tuple[int, int]]] = {}
    for i, j, t in zip(rows.tolist(), cols.tolist(), tokens[rows, cols].tolist()):
        filled.setdefault(alive[i], []).append((offset + j, t))
    return filled


def run(model, prompts: list[list[int]], settings: DecodeSettings, *, trace: bool = False,
        on_event: Callable[[Step | Emit], None] | None = None, **kw) -> Result:
    """Run `decode` to the end and collect tokens, finish reasons, counters (and the trace)."""
    steps: list[Step] = []
    forwards = 0
    reasons = ["length"] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ev in decode(model, prompts, settings, **kw):
            if isinstance(ev, Step):
                forwards += 1
                if trace:
                    steps.append(ev)
            else:
                for r, toks in ev.tokens.items():
                    tokens[r].extend(toks)
                reasons_update = ev.finished
                for r, why in reasons_update.items():
                    reasons[r] = why
            if on_event is not None:
                on_event(ev)
    return Result(tokens, reasons, [len(p) for p in prompts], forwards,
                  time.perf_counter() - t0, steps if trace else None)
