"""Mixed-phase block decoding: rows of a batch in different phases share each forward.

In lockstep (strategies.block) a batch moves through a block together, so every row waits
for the slowest row's denoising steps: at batch 16 each row made about 1.0 tokens per
forward against 1.3-1.4 alone. Here each row keeps its own current block, and one forward
serves every row in whatever phase it is in, as vLLM does for its diffusion models:

- a row whose block still has masks runs a *denoise* step on it (bidirectional inside the
  block, nothing stored);
- a row whose block is complete has emitted it already (before the forward, so a row that
  ends leaves without one) and now *commits* it: the block is stored causally and its last
  logit gives the row's next anchor, from which its next block starts.

One mask holds both patterns, row by row. The forward stores B columns when any row
commits; for the rows that only denoised, those columns become holes (never keys, as
verified mode's rejected drafts), and their positions do not move. Every row therefore sees
exactly the keys, positions and random draws of its own batch-1 run: its tokens are those of
lockstep decoding and of decoding alone (tested), and its forwards are its own denoise steps
plus one commit per block. The fused commit is not used here (a commit and the next
block's first denoise step would need a chunk twice as wide for every row).

    mixed(batch)   one forward for every row; decode() calls it until the batch is empty
"""

from __future__ import annotations

from typing import Iterator

import torch

from .batch import Batch
from .events import Emit, Step
from .policies import policy_for
from .strategies import fill_step, filled_of


def start_blocks(batch: Batch, rows: list[int]) -> None:
    """Start a new block (the anchor, then masks) for batch positions `rows`."""
    n, B = len(batch.alive), batch.B
    if batch.blocks is None or batch.blocks.shape[0] < n:  # rows that joined: no block yet
        have = 0 if batch.blocks is None else batch.blocks.shape[0]
        dev = batch.rows.seq.device
        extra = torch.full((n - have, B), batch.mask_token_id, dtype=torch.long, device=dev)
        lens = torch.zeros(n - have, dtype=torch.long, device=dev)
        batch.blocks = extra if have == 0 else torch.cat([batch.blocks, extra])
        batch.lens = lens if have == 0 else torch.cat([batch.lens, lens])
        rows = sorted(set(rows) | set(range(have, n)))
    for i in rows:
        r = batch.alive[i]
        batch.blocks[i] = batch.mask_token_id
        batch.blocks[i, 0] = batch.anchor[i]
        batch.lens[i] = batch.left(r)
        batch.row_block[r] = batch.row_block.get(r, -1) + 1


def mixed(batch: Batch) -> Iterator[Step | Emit]:
    """Emit the rows whose block is complete, then one forward: they commit, the rest
    denoise. Yields the Emit (if any row's block was complete) and the forward's Step."""
    if batch.blocks is None or batch.blocks.shape[0] < len(batch.alive):
        start_blocks(batch, [])
    need = batch.still_needed(batch.blocks, batch.lens)
    ready = [i for i in range(len(batch.alive)) if not bool(need[i].any())]
    if ready:
        done = [len(batch.out[r]) for r in batch.alive]
        ev = batch.emit(list(batch.blocks), done, only=ready)
        yield ev
        keep = batch.drop(ev.finished)
        if batch.empty:
            return
        ready = [j for j, i in enumerate(keep) if i in ready]
        need = need[torch.tensor(keep, device=need.device)]
    yield _forward(batch, ready, need)


def _mask(batch: Batch, commit: torch.Tensor) -> torch.Tensor:
    """Per row: causal over its block where it commits, bidirectional where it denoises."""
    B, full = batch.B, bool((batch.lens == batch.B).all())
    lengths = None if full else batch.lens
    noisy = batch.rows.mask(B, causal=False, lengths=lengths)
    if not bool(commit.any()):
        return noisy
    causal = batch.rows.mask(B, causal=True, commit=B)
    return torch.where(commit.view(-1, 1, 1, 1), causal, noisy)


def _forward(batch: Batch, ready: list[int], need: torch.Tensor) -> Step:
    """The shared forward; then the committing rows start new blocks, the others fill."""
    n, B, dev = len(batch.alive), batch.B, batch.blocks.device
    commit = torch.zeros(n, dtype=torch.bool, device=dev)
    commit[ready] = True
    logits = batch.rows.forward(batch.blocks, _mask(batch, commit), store=B if ready else 0)
    filled: dict[int, list[tuple[int, int]]] = {}
    if ready:
        batch.rows.reject(torch.where(commit, B, 0), B)  # denoising rows: holes, no move
        hist = batch.rows.history() if batch.history else None
        anchor = batch.sampler.pick(logits[:, B - 1:], hist, draw=commit)[:, 0]
        batch.anchor = torch.where(commit, anchor, batch.anchor)
        start_blocks(batch, ready)
        filled = {batch.alive[i]: [(len(batch.out[batch.alive[i]]), int(anchor[i]))]
                  for i in ready}
    denoise = ~commit & need.any(dim=1)
    if bool(denoise.any()):
        filled.update(_fill(batch, logits, need & denoise[:, None], denoise))
    return Step("mixed", batch.block_index, 0, B, filled, rows=tuple(batch.alive),
                row_blocks={r: (batch.row_block[r], int(batch.lens[i]))
                            for i, r in enumerate(batch.alive)})


def _fill(batch: Batch, logits, need, rows) -> dict[int, list[tuple[int, int]]]:
    """A denoise step for `rows`: the policy fills masked positions of their blocks."""
    sizes = [max(0, int(x) - 1) for x in batch.lens]
    tokens, transfer, _ = fill_step(batch, policy_for(batch.s), logits, batch.blocks, need,
                                    rows, sizes, greedy_draft=False)
    batch.blocks.copy_(torch.where(transfer, tokens, batch.blocks))
    return filled_of(batch.alive, transfer, tokens, [len(batch.out[r]) for r in batch.alive])
