"""The state of the rows decoding together, and the fused commit's lookahead.

    batch = Batch(model, settings, mask_token_id, stop_token_ids=[2])
    step = batch.join(requests)          # prefill new rows; their anchors come from it
    done, block, ragged = batch.start_block()
    emit = batch.emit(list(block), done)  # final tokens, rows that ended
    keep = batch.drop(emit.finished)      # the batch positions kept, in their new order

`Batch` owns every per-row thing (cache rows, sampler streams, ids, anchors, budgets,
outputs, the lookahead), so leaving and joining re-index them all in one place.
"""

from __future__ import annotations

import torch

from ..config import DecodeSettings
from .events import Emit, Prefix, Request, Step, StopFn
from .rows import Rows
from .sampling import Sampler


class Lookahead:
    """The fused commit's by-product: the next block's first denoise logits, run by the
    commit forward on a guessed anchor. Made only while it pays (`worth`), kept only when
    the commit confirms the guess, used once by the next denoise step, invalidated whenever
    the batch changes under it."""

    def __init__(self, device: torch.device | None = None):
        self.logits: torch.Tensor | None = None
        # A fused commit runs 2b tokens instead of b and saves a b-token denoise forward when
        # the guess is confirmed: it pays when P(confirmed) > (cost(2b) - cost(b)) / cost(b).
        # On the CPU engine cost(8) / cost(4) is about 1.25 (bench/forward_cost.py: T=4 1.15,
        # T=8 1.45 one-token forwards), so below 0.25 the fused half is a loss; on an
        # accelerator a few more tokens are nearly free and fusing always pays.
        self.pays_above = 0.25 if device is None or device.type == "cpu" else 0.0
        # P(confirmed), estimated from this decode's own blocks (fused or not, every commit
        # tells whether it would have confirmed): a moving average, starting optimistic.
        self.rate = 1.0

    def worth(self) -> bool:
        """Whether the next commit should carry the next block's first denoise step."""
        return self.rate >= self.pays_above

    def offer(self, logits: torch.Tensor | None, confirmed: bool) -> None:
        """A commit's outcome: keep its lookahead logits (if any) when it confirmed."""
        self.rate = 0.8 * self.rate + 0.2 * confirmed
        self.logits = logits if confirmed else None

    def take(self) -> torch.Tensor | None:
        logits, self.logits = self.logits, None
        return logits

    def invalidate(self) -> None:
        self.logits = None

    def keep_rows(self, idx: torch.Tensor) -> None:
        if self.logits is not None:
            self.logits = self.logits[idx]


class Batch:
    """Rows in lockstep over one static KV cache (decoding.rows), numbered by request id."""

    def __init__(self, model, settings: DecodeSettings, mask_token_id: int,
                 stop_token_ids=(), stop_fn: StopFn | None = None,
                 max_context: int | None = None, prefix: Prefix | None = None):
        self.model, self.s, self.mask_token_id = model, settings, mask_token_id
        self.B = settings.effective_block_size
        self.stop_token_ids, self.stop_fn, self.max_context = stop_token_ids, stop_fn, max_context
        self.stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long)
        self.prefix, self.history = prefix, settings.repetition_penalty != 1.0
        self.rows: Rows | None = None
        self.sampler: Sampler | None = None
        self.anchor: torch.Tensor | None = None
        self.alive: list[int] = []  # request id of each batch position
        self.budget: dict[int, int] = {}
        self.out: dict[int, list[int]] = {}
        self.block_index = 0
        self.look = Lookahead(next(model.parameters()).device)
        # mixed-phase decoding (mixed.py): each row's own current block [n, B], its length,
        # and how many blocks each row has started
        self.blocks: torch.Tensor | None = None
        self.lens: torch.Tensor | None = None
        self.row_block: dict[int, int] = {}

    @property
    def empty(self) -> bool:
        return not self.alive

    def probs(self, logits: torch.Tensor, block: torch.Tensor | None) -> torch.Tensor:
        """The processed distribution of a forward over `block` (None: a commit's last)."""
        hist = self.rows.history(block) if self.history else None
        return self.sampler.probs(logits, hist)

    def join(self, new: list[Request]) -> Step:
        """Prefill new rows and add them to the batch; their anchors come from the prefill."""
        for r in new:
            cap = r.max_new_tokens if self.max_context is None else self.max_context - len(r.prompt)
            self.budget[r.id], self.out[r.id] = min(r.max_new_tokens, cap), []
        capacity = max(len(r.prompt) for r in new) + max(self.budget[r.id] for r in new) \
            + 2 * self.B
        smp = Sampler(self.s, self.mask_token_id, [r.seed for r in new])
        smp.engine = getattr(self.model, "nextblock_engine", None)
        part, logits, cached = self._prefill(new, capacity)
        first = smp.pick(logits, part.history() if self.history else None)[:, 0]
        if self.rows is None:
            self.rows, self.sampler, self.anchor = part, smp, first
            self.stop_ids = self.stop_ids.to(part.seq.device)
        else:
            self.rows.merge(part)
            self.sampler.extend(smp)
            self.anchor = torch.cat([self.anchor, first])
        self.alive = self.alive + [r.id for r in new]
        self.look.invalidate()
        return Step("prefill", self.block_index, 0,
                    min(self.B, max(self.budget[r.id] for r in new)),
                    {r.id: [(0, int(first[i]))] for i, r in enumerate(new)}, cached=cached,
                    rows=tuple(r.id for r in new))

    def _prefill(self, new: list[Request], capacity: int) -> tuple[Rows, torch.Tensor, bool]:
        """The new rows' cache and last logits; a stored prefix serves the first (once)."""
        chunk = self.s.prefill_chunk
        if self.prefix is not None:
            part, n = self.prefix.rows.copy(capacity), len(self.prefix.tokens)
            cached = len(new[0].prompt) == n
            rest = torch.tensor([new[0].prompt[n:]], dtype=torch.long, device=part.seq.device)
            logits = self.prefix.logits if cached else part.prefill(rest, chunk)
            self.prefix = None
            return part, logits, cached
        P = max(len(r.prompt) for r in new)
        part = Rows(self.model, [r.prompt for r in new], capacity, self.mask_token_id)
        ids = torch.tensor([[r.prompt[0]] * (P - len(r.prompt)) + r.prompt for r in new],
                           device=part.seq.device)
        return part, part.prefill(ids, chunk), False

    def start_block(self) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """(tokens each row has, the new block [n, b]: anchor then masks, per-row block
        lengths when some rows end with a shorter one, else None)."""
        done = [len(self.out[r]) for r in self.alive]
        lens = torch.tensor([min(self.B, self.budget[r] - d) for r, d in zip(self.alive, done)],
                            device=self.rows.seq.device)
        b = int(lens.max())
        block = torch.full((len(self.alive), b), self.mask_token_id, dtype=torch.long,
                           device=self.rows.seq.device)
        block[:, 0] = self.anchor
        return done, block, (None if int(lens.min()) == b else lens)

    def left(self, r: int, extra: int = 0) -> int:
        """The size of row r's next block (after `extra` more of its tokens are final)."""
        return min(self.B, self.budget[r] - len(self.out[r]) - extra)

    def still_needed(self, block: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Masked positions that still matter: those before the row's first stop token (and
        inside the row's block, when `lengths` gives shorter last blocks)."""
        masked = block == self.mask_token_id
        T = block.shape[1]
        steps = torch.arange(T, device=block.device)[None, :]
        if lengths is not None:
            masked &= steps < lengths[:, None]
        if self.stop_ids.numel() == 0:
            return masked
        is_stop = torch.isin(block, self.stop_ids)
        first_stop = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1), T)
        return masked & (steps < first_stop[:, None])

    def emit(self, blocks: list[torch.Tensor], done: list[int],
             only: list[int] | None = None) -> Emit:
        """Append each row's final tokens; end rows at a stop token, stop string or limit.
        `only`: the batch positions whose block is final (default: every row)."""
        ev = Emit({}, {})
        for i, r in enumerate(self.alive):
            if only is not None and i not in only:
                continue
            toks = blocks[i].tolist()[:self.budget[r] - done[i]]
            hit = [j for j, t in enumerate(toks) if t in self.stop_token_ids]
            if hit:
                toks = toks[:hit[0] + 1]
                ev.finished[r] = "stop"
            self.out[r].extend(toks)
            ev.tokens[r] = toks
            if self.stop_fn is not None and r not in ev.finished:
                keep = self.stop_fn(r, self.out[r])
                if keep is not None:
                    cut = len(self.out[r]) - keep
                    del self.out[r][keep:]
                    ev.tokens[r] = toks[:max(0, len(toks) - cut)]
                    ev.finished[r] = "stop"
            if r not in ev.finished and len(self.out[r]) >= self.budget[r]:
                ev.finished[r] = "length"
        return ev

    def drop(self, finished) -> list[int]:
        """Remove finished rows; returns the batch positions kept, in their new order (for
        the caller's own per-row tensors; empty when no row is left). A finished row's
        place goes to one of the last rows, so only rows that move are copied."""
        gone = {i for i, r in enumerate(self.alive) if r in finished}
        n = len(self.alive) - len(gone)
        keep = list(range(n))
        if not gone:
            return keep
        if not n:
            self.alive, self.rows, self.anchor = [], None, None
            self.blocks = self.lens = None
            self.look.invalidate()
            return keep
        movers = [i for i in range(n, len(self.alive)) if i not in gone]
        for hole, m in zip(sorted(gone & set(range(n))), movers):
            keep[hole] = m
        idx = torch.tensor(keep, device=self.rows.seq.device)
        self.rows.keep_rows(idx)
        self.sampler.keep_rows(keep)
        self.anchor, self.alive = self.anchor[idx], [self.alive[i] for i in keep]
        if self.blocks is not None:
            self.blocks, self.lens = self.blocks[idx], self.lens[idx]
        self.look.keep_rows(idx)
        return keep
