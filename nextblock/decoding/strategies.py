"""One block of decoding per mode, over a `Batch`: the strategies `decode` drives.

    ar(batch)        B = 1: emit the anchor, commit it, choose the next one (exact AR)
    block(batch)     denoise steps fill the block's masks (policies), emit, commit
    verified(batch)  denoise greedily (a draft), then one causal pass stores the block and
                     keeps the longest prefix the AR model agrees with

Each is a generator of events (events.py gives their order). The plain functions below
are the forwards they share: `denoise` (the steps of one block), `commit` (store a block,
optionally running the next block's first denoise step on a guessed anchor: the fused
commit, whose result the batch's Lookahead keeps) and `verify_draft`.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .batch import Batch
from .events import Emit, Step
from .policies import policy_for
from .rows import Rows
from .sampling import Sampler, confidence


def commit(rows: Rows, block, guess, b2: int, mask_token_id: int, logits_from: int,
           causal: bool = False):
    """Store `block` (causally, or, for a block-causal model unless `causal`, the block
    bidirectional); return its logits from `logits_from` on. With a guess of the next anchor,
    the same forward runs the next block's first denoise step (b2 tokens), whose logits come
    back second (else None). Verified mode stores causally: its check is the AR model's."""
    b = block.shape[1]
    c = 0 if causal else b
    if guess is None or b2 < 2:
        return (rows.forward(block, rows.mask(b, True, commit=c), store=b,
                             logits_from=logits_from), None)
    nxt = torch.full((block.shape[0], b2), mask_token_id, dtype=block.dtype,
                     device=block.device)
    nxt[:, 0] = guess
    chunk = torch.cat([block, nxt], dim=1)
    logits = rows.forward(chunk, rows.mask(b + b2, True, noisy_from=b, commit=c), store=b,
                          logits_from=logits_from)
    return logits[:, :b - logits_from], logits[:, b - logits_from:]


def denoise(batch: Batch, block, ragged, done: list[int], greedy_draft: bool
            ) -> Iterator[Step]:
    """Denoise steps until every needed mask of `block` is filled (in place). Returns, as
    the generator's value, the last step's guess of the token after the block (or None)."""
    policy, guess = policy_for(batch.s), None
    dmask = batch.rows.mask(block.shape[1], causal=False, lengths=ragged)
    sizes = None if ragged is None else [max(0, n - 1) for n in ragged.tolist()]
    # a greedy draft that fills every mask of one sub-block spanning the block: one step,
    # after which nothing is left to check (the draft never picks the mask token)
    whole = greedy_draft and policy.fills_all(True) and policy.sub_block >= block.shape[1]
    while True:
        need = batch.still_needed(block, ragged)
        rows_left = need.any(dim=1)
        if not rows_left.any():
            return guess
        ahead = batch.look.take()
        logits = ahead if ahead is not None else batch.rows.forward(block, dmask)
        if greedy_draft and policy.fills_all(True):  # verified, threshold 0: no softmax
            choice = batch.sampler.pick(logits, batch.rows.history(block) if batch.history
                                        else None)  # position j predicts token j + 1
            tokens = torch.cat([block[:, :1], choice[:, :-1]], dim=1)
            transfer, guess = need if whole else policy.candidates(need), choice[:, -1]
        else:
            tokens, transfer, guess = fill_step(batch, policy, logits, block, need, rows_left,
                                            sizes, greedy_draft)
        block.copy_(torch.where(transfer, tokens, block))
        yield Step("denoise", batch.block_index, done[0], block.shape[1],
                   filled_of(batch.alive, transfer, tokens, done), fused=ahead is not None,
                   rows=tuple(batch.alive))
        if whole:
            return guess


def fill_step(batch: Batch, policy, logits, block, need, rows_left, sizes, greedy_draft):
    """A denoise step's choice (block mode, and mixed.py's denoising rows): draft tokens,
    the positions the policy fills, the guess of the token after the block."""
    probs = batch.probs(logits, block)  # position j predicts token j + 1
    fill = probs[:, :-1]
    draft = batch.sampler.argmax(fill) if greedy_draft else batch.sampler.choose(
        fill, draw=rows_left, sizes=sizes)
    tokens = torch.cat([block[:, :1], draft], dim=1)
    conf = confidence(fill, draft, policy.confidence)
    conf = torch.cat([torch.full_like(conf[:, :1], -torch.inf), conf], dim=1)
    return tokens, policy.select(conf, need), batch.sampler.argmax(probs[:, -1])


def _commit_step(batch: Batch, block, guess) -> Step:
    """Commit the (finished, emitted) block of the remaining rows and choose their next
    anchors; with the fused commit, keep the next block's first denoise step if it fits
    every row and the anchors confirm the guess."""
    sizes = {batch.left(r) for r in batch.alive}
    b2 = sizes.pop() if len(sizes) == 1 else 0  # fuse only when every next block fits
    fuse = batch.s.fused_commit and guess is not None and batch.look.worth()
    logits, ahead = commit(batch.rows, block, guess if fuse else None, b2,
                           batch.mask_token_id, block.shape[1] - 1)
    batch.anchor = batch.sampler.pick(logits, batch.rows.history() if batch.history else None
                                      )[:, 0]
    if guess is not None:
        batch.look.offer(ahead, bool((batch.anchor == guess).all()))
    r0, n = batch.alive[0], len(batch.out[batch.alive[0]])
    return Step("commit", batch.block_index, n, batch.left(r0),
                {r: [(len(batch.out[r]), int(batch.anchor[i]))]
                 for i, r in enumerate(batch.alive)}, rows=tuple(batch.alive))


def ar(batch: Batch) -> Iterator[Step | Emit]:
    """One token: the anchor is final as soon as it is chosen; store it, choose the next."""
    done, block, _ = batch.start_block()
    batch.block_index += 1
    ev = batch.emit(list(block), done)
    yield ev
    keep = batch.drop(ev.finished)
    if not batch.empty:
        yield _commit_step(batch, block[keep], None)


def block(batch: Batch) -> Iterator[Step | Emit]:
    """Threshold decoding of one block: denoise steps, then emit and commit."""
    done, blk, ragged = batch.start_block()
    guess = (yield from denoise(batch, blk, ragged, done, greedy_draft=False)
             ) if blk.shape[1] > 1 else None
    batch.block_index += 1
    ev = batch.emit(list(blk), done)
    yield ev
    keep = batch.drop(ev.finished)
    if not batch.empty:
        yield _commit_step(batch, blk[keep], None if guess is None else guess[keep])


def verified(batch: Batch) -> Iterator[Step | Emit]:
    """Draft the block greedily, then one causal pass stores it and checks it: each row
    keeps its longest agreeing prefix (the rest is dropped from the cache) and gets its next
    anchor from the same pass. Tokens are exactly AR's."""
    done, blk, ragged = batch.start_block()
    b, lens = blk.shape[1], [blk.shape[1]] * len(done) if ragged is None else ragged.tolist()
    guess = (yield from denoise(batch, blk, ragged, done, greedy_draft=True)) if b > 1 else None
    batch.block_index += 1
    nxt = {min(batch.B, batch.budget[r] - d - b) for r, d in zip(batch.alive, done)}
    b2 = nxt.pop() if len(nxt) == 1 and ragged is None else 0
    fuse = batch.s.fused_commit and guess is not None and batch.look.worth()
    logits, ahead = commit(batch.rows, blk, guess if fuse else None, b2, batch.mask_token_id,
                           0, causal=True)
    kept, batch.anchor = verify_draft(batch.sampler, batch.rows, blk, logits, batch.history)
    batch.rows.reject(kept, b)
    kept = kept.tolist()
    confirmed = guess is not None and all(k == b for k in kept) and bool(
        (batch.anchor == guess).all())
    step = Step("verify", batch.block_index, done[0] + kept[0], 0,
                {r: [(done[i] + kept[i], int(batch.anchor[i]))] for i, r in enumerate(batch.alive)},
                drafted={r: (n - 1, min(kept[i], n) - 1) for i, (r, n)
                         in enumerate(zip(batch.alive, lens))}, rows=tuple(batch.alive))
    ev = batch.emit([blk[i, :k] for i, k in enumerate(kept)], done)
    yield ev
    if guess is not None:
        batch.look.offer(ahead, confirmed)
    batch.drop(ev.finished)
    if not batch.empty:
        step.size = max(batch.left(r) for r in batch.alive)
        if step.size != b2:
            batch.look.invalidate()
    yield step  # the verify pass counts as a forward even when no row is left


STRATEGIES = {"ar": ar, "block": block, "verified": verified}


def verify_draft(sampler: Sampler, rows: Rows, block, logits, history: bool):
    """Accept, per row, the longest prefix of drafted tokens the causal model agrees with.
    Greedy: a draft is kept when it equals the causal argmax. Sampled: the drafts are
    deterministic (greedy) proposals, so the speculative-sampling rule with a point-mass
    proposal applies: keep draft d with probability p(d), else draw from p without d; the
    output then follows the AR sampling distribution exactly. Returns (tokens kept per
    row, counting the anchor; the next anchor)."""
    n, b = block.shape
    if sampler.s.greedy and not history:  # all positions at once (the same per-row softmax)
        choice = sampler.pick(logits[:, :b])
        ok = (choice[:, :-1] == block[:, 1:]).long().cumprod(1)
        kept = 1 + ok.sum(1)
        return kept, choice.gather(1, (kept - 1)[:, None])[:, 0]
    kept = torch.ones(n, dtype=torch.long, device=block.device)
    anchor = torch.zeros(n, dtype=torch.long, device=block.device)
    open_rows = torch.ones(n, dtype=torch.bool, device=block.device)
    stored = rows.cols - b
    for j in range(b):  # position j predicts block token j+1 (or the next anchor)
        hist = rows.seq[:, :stored + j + 1] if history else None
        p = sampler.probs(logits[:, j:j + 1], hist)[:, 0]
        nxt = block[:, j + 1] if j + 1 < b else None
        if sampler.s.greedy:
            choice = p.argmax(-1)
            ok = (choice == nxt) if nxt is not None else torch.zeros_like(open_rows)
        else:
            ok, choice = sampler.accept_point_draft(p, nxt, open_rows)
        anchor = torch.where(open_rows & ~ok, choice, anchor)
        if nxt is None:
            break
        kept += (open_rows & ok).long()
        open_rows &= ok
        if not open_rows.any():
            break
    return kept, anchor


def filled_of(alive, transfer, tokens, offsets):
    """A Step's `filled`: row id -> (generated index, token) of each position filled."""
    rows, cols = transfer.nonzero(as_tuple=True)
    filled: dict[int, list[tuple[int, int]]] = {}
    for i, j, t in zip(rows.tolist(), cols.tolist(), tokens[rows, cols].tolist()):
        filled.setdefault(alive[i], []).append((offsets[i] + j, t))
    return filled
