"""The one decoding loop: prefill -> per block (denoise steps -> commit -> next anchor).

    for event in decode(model, prompts, settings, mask_token_id=m):  # Step or Emit events
        ...
    result = run(model, prompts, settings, mask_token_id=m)         # the same, collected
    p = prefill(model, prompt, mask_token_id=m)                     # prefill once ...
    run(model, [prompt + more], settings, mask_token_id=m, prefix=p)  # ... decode many times

A block of B tokens starts with its anchor, chosen from the last logit of the previous causal
pass (the prefill for block 0), followed by B-1 masks. Denoise steps run the block over the
cache without storing it (peek) and a policy fills masked positions; then the finished block
is run once more causally and stored (commit), whose last logit gives the next anchor. With
B = 1 there is nothing to denoise and the loop is exact, cached AR decoding.

verified mode: the commit pass also checks the drafted block against its own causal choices
(`verify`); rejected positions are dropped from the cache. Fused commit: the commit forward
also carries the next block's first denoise step, anchored on a guess (`Rows.mask` with
`noisy_from`); the result is used only if the commit confirms the guess.

Rows of a batch are left-padded and move in lockstep; a row leaves the batch when it ends
(stop token, stop string, length) and its cache rows are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..config import DecodeSettings
from .policies import policy_for
from .rows import Rows
from .sampling import Sampler, confidence


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
    rows: Rows
    logits: torch.Tensor


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
           prefix: Prefix | None = None) -> Iterator[Step | Emit]:
    """Yield a Step per forward pass and an Emit per finished block. Inputs are validated
    by the caller (nextblock.lm); `max_context` caps prompt + generated positions; `max_new`
    gives per-row budgets (default: settings.max_new_tokens). Rows are numbered 0.. in
    events, or carry their own ids when given as Requests. `admit`, called at every block
    boundary, lets rows join the running batch (prefilled, then right-aligned with it) and
    leave it ("cancelled"): continuous batching for the server. `prefix`: a stored
    prefill of the (single) prompt's beginning, so only the rest is prefilled."""
    s = settings
    B = s.effective_block_size
    verified, fuse = s.mode == "verified", s.fused_commit and B > 1
    history = s.repetition_penalty != 1.0
    policy = policy_for(s)
    stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long)
    budget: dict[int, int] = {}
    out: dict[int, list[int]] = {}
    alive: list[int] = []  # row id of each batch row
    rows: Rows | None = None
    sampler: Sampler | None = None
    anchor = None
    block_index, ahead = 0, None  # ahead: the next block's first denoise logits (fused)

    def process(logits, block):  # processed distribution of a forward over `block`
        return sampler.probs(logits, rows.history(block) if history else None)

    def join(new: list[Request]) -> Step:
        """Prefill new rows and add them to the batch; their anchors come from the prefill."""
        nonlocal rows, sampler, anchor, alive, prefix
        P = max(len(r.prompt) for r in new)
        for r in new:
            cap = r.max_new_tokens if max_context is None else max_context - len(r.prompt)
            budget[r.id], out[r.id] = min(r.max_new_tokens, cap), []
        capacity = P + max(budget[r.id] for r in new) + 2 * B
        smp = Sampler(s, mask_token_id, [r.seed for r in new])
        cached = False
        if prefix is not None:  # the first row: a stored prefill (used once)
            part, n = prefix.rows.copy(capacity), len(prefix.tokens)
            cached = len(new[0].prompt) == n
            rest = torch.tensor([new[0].prompt[n:]], dtype=torch.long, device=part.seq.device)
            logits = prefix.logits if cached else part.prefill(rest, s.prefill_chunk)
            prefix = None
        else:
            part = Rows(model, [r.prompt for r in new], capacity, mask_token_id)
            ids = torch.tensor([[r.prompt[0]] * (P - len(r.prompt)) + r.prompt for r in new],
                               device=part.seq.device)
            logits = part.prefill(ids, s.prefill_chunk)
        first = smp.choose(smp.probs(logits, part.history() if history else None))[:, 0]
        if rows is None:
            rows, sampler, anchor = part, smp, first
        else:
            rows.merge(part)
            sampler.extend(smp)
            anchor = torch.cat([anchor, first])
        alive = alive + [r.id for r in new]
        return Step("prefill", block_index, 0, min(B, max(budget[r.id] for r in new)),
                    {r.id: [(0, int(first[i]))] for i, r in enumerate(new)}, cached=cached)

    n_rows = len(prompts)
    if prefix is not None:
        p0 = prompts[0].prompt if isinstance(prompts[0], Request) else prompts[0]
        if n_rows != 1 or p0[:len(prefix.tokens)] != prefix.tokens:
            raise ValueError("a prefix serves one prompt that starts with its tokens")
    first = prompts if isinstance(prompts[0], Request) else [
        Request(i, p, (max_new or [s.max_new_tokens] * n_rows)[i],
                (seeds or [s.seed] * n_rows)[i]) for i, p in enumerate(prompts)]
    yield join(first)
    stop_ids = stop_ids.to(rows.seq.device)

    while True:
        if admit is not None:  # block boundary: rows may leave and join
            new, cancel = admit()
            gone = {r: "cancelled" for r in alive if r in cancel}
            if gone:
                yield Emit({}, gone)
                idx = _drop(gone, alive, rows, sampler)
                if idx is None:
                    alive, rows, ahead = [], None, None
                elif idx is not False:
                    anchor, alive = anchor[idx], [alive[i] for i in idx.tolist()]
                    ahead = None
            if new:
                yield join(new)
                ahead = None
            if not alive:
                return
        done = [len(out[r]) for r in alive]
        lens = torch.tensor([min(B, budget[r] - d) for r, d in zip(alive, done)],
                            device=rows.seq.device)
        b = int(lens.max())
        ragged = None if int(lens.min()) == b else lens  # some rows end with a shorter block
        block = torch.full((len(alive), b), mask_token_id, dtype=torch.long,
                           device=rows.seq.device)
        block[:, 0] = anchor
        guess = None  # the last denoise step's choice for the token after the block

        if b > 1:  # denoise: peek at the cache, fill masks until the block is done
            dmask = rows.mask(b, causal=False, lengths=ragged)
            while True:
                need = _still_needed(block, mask_token_id, stop_ids, ragged)
                rows_left = need.any(dim=1)
                if not rows_left.any():
                    break
                fused_step = ahead is not None
                logits = ahead if fused_step else rows.forward(block, dmask)
                ahead = None
                probs = process(logits, block)  # position j predicts token j + 1
                fill = probs[:, :-1]
                draft = fill.argmax(-1) if verified else sampler.choose(
                    fill, draw=rows_left, sizes=None if ragged is None else
                    [max(0, n - 1) for n in ragged.tolist()])
                tokens = torch.cat([block[:, :1], draft], dim=1)
                conf = confidence(fill, draft, policy.confidence)
                conf = torch.cat([torch.full_like(conf[:, :1], -torch.inf), conf], dim=1)
                transfer = policy.select(conf, need)
                block = torch.where(transfer, tokens, block)
                guess = probs[:, -1].argmax(-1)
                yield Step("denoise", block_index, done[0], b,
                           _filled(alive, transfer, tokens, done), fused=fused_step)

        block_index += 1
        if verified:  # the commit pass verifies the draft; rejected columns become holes
            nxt = {min(B, budget[r] - d - b) for r, d in zip(alive, done)}
            b2 = nxt.pop() if len(nxt) == 1 and ragged is None else 0
            logits, ahead = _commit(rows, block, guess if fuse else None, b2, mask_token_id, 0,
                                    causal=True)
            kept, anchor = _verify(sampler, rows, block, logits, history)
            rows.reject(kept, b)
            kept_list = kept.tolist()
            emitted, finished = _emit(alive, [block[i, :k] for i, k in enumerate(kept_list)],
                                      done, out, budget, stop_token_ids, stop_fn)
            confirmed = (ahead is not None and all(k == b for k in kept_list)
                         and bool((anchor == guess).all()))
            step = Step("verify", block_index, done[0] + kept_list[0],
                        0, {r: [(done[i] + kept_list[i], int(anchor[i]))]
                            for i, r in enumerate(alive)},
                        drafted={r: (n - 1, min(kept_list[i], n) - 1) for i, (r, n)
                                 in enumerate(zip(alive, lens.tolist()))})
            yield Emit(emitted, finished)
            idx = _drop(finished, alive, rows, sampler)
            if idx is None:  # everyone is done; the verify pass still counts as a forward
                yield step
                if admit is None:
                    return
                alive, rows, ahead = [], None, None
                continue
            if idx is not False:
                anchor, ahead = anchor[idx], (None if ahead is None else ahead[idx])
                alive = [alive[i] for i in idx.tolist()]
            step.size = min(B, max(budget[r] - len(out[r]) for r in alive))
            ahead = ahead if confirmed and step.size == b2 else None
            yield step
            continue

        emitted, finished = _emit(alive, list(block), done, out, budget, stop_token_ids,
                                  stop_fn)
        yield Emit(emitted, finished)
        idx = _drop(finished, alive, rows, sampler)
        if idx is None:
            if admit is None:
                return
            alive, rows, ahead = [], None, None
            continue
        if idx is not False:
            block, alive = block[idx], [alive[i] for i in idx.tolist()]
            guess = None if guess is None else guess[idx]
        nxt = {min(B, budget[r] - len(out[r])) for r in alive}
        b2 = nxt.pop() if len(nxt) == 1 else 0  # fuse only when every row's next block fits
        logits, ahead = _commit(rows, block, guess if fuse else None, b2, mask_token_id, b - 1)
        anchor = sampler.choose(process(logits, None))[:, 0]
        if ahead is not None and not bool((anchor == guess).all()):
            ahead = None
        n = len(out[alive[0]])
        yield Step("commit", block_index, n, min(B, budget[alive[0]] - n),
                   {r: [(len(out[r]), int(anchor[i]))] for i, r in enumerate(alive)})


def _commit(rows: Rows, block, guess, b2: int, mask_token_id: int, logits_from: int,
            causal: bool = False):
    """Store `block` (causally, or, for a block-causal model unless `causal`, the block
    bidirectional); return its logits from `logits_from` on. With a guess of the next anchor,
    the same forward runs the next block's first denoise step, whose logits come back as the
    second value. Verified mode stores causally: its check is the AR model's."""
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


def _verify(sampler: Sampler, rows: Rows, block, logits, history: bool):
    """Accept, per row, the longest prefix of drafted tokens the causal model agrees with.
    Greedy: a draft is kept when it equals the causal argmax. Sampled: the drafts are
    deterministic (greedy) proposals, so the speculative-sampling rule with a point-mass
    proposal applies: keep draft d with probability p(d), else draw from p without d; the
    output then follows the AR sampling distribution exactly. Returns (tokens kept per
    row, counting the anchor; the next anchor)."""
    n, b = block.shape
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


def _emit(alive, blocks, done, out, budget, stop_token_ids, stop_fn):
    """Append each row's final tokens; end rows at a stop token, stop string or the limit."""
    emitted, finished = {}, {}
    for i, r in enumerate(alive):
        toks = blocks[i].tolist()[:budget[r] - done[i]]
        hit = [j for j, t in enumerate(toks) if t in stop_token_ids]
        if hit:
            toks = toks[:hit[0] + 1]
            finished[r] = "stop"
        out[r].extend(toks)
        emitted[r] = toks
        if stop_fn is not None and r not in finished:
            keep = stop_fn(r, out[r])
            if keep is not None:
                cut = len(out[r]) - keep
                del out[r][keep:]
                emitted[r] = toks[:max(0, len(toks) - cut)]
                finished[r] = "stop"
        if r not in finished and len(out[r]) >= budget[r]:
            finished[r] = "length"
    return emitted, finished


def _drop(finished, alive, rows: Rows, sampler: Sampler):
    """Remove finished rows; None when no row is left, False when none finished, else the
    index tensor of the rows kept (for the caller's own per-row tensors). A finished row's
    place goes to one of the last rows, so only rows that move are copied in the cache."""
    if not finished:
        return False
    gone = {i for i, r in enumerate(alive) if r in finished}
    n = len(alive) - len(gone)
    if not n:
        return None
    keep = list(range(n))
    movers = [i for i in range(n, len(alive)) if i not in gone]
    for hole, m in zip(sorted(gone & set(range(n))), movers):
        keep[hole] = m
    idx = torch.tensor(keep, device=rows.seq.device)
    rows.keep_rows(idx)
    sampler.keep_rows(keep)
    return idx


def _still_needed(block, mask_token_id, stop_ids, lengths=None):
    """Masked positions that still matter: those before the row's first stop token (and
    inside the row's block, when `lengths` gives shorter last blocks)."""
    masked = block == mask_token_id
    if lengths is not None:
        masked &= torch.arange(block.shape[1], device=block.device)[None, :] < lengths[:, None]
    if stop_ids.numel() == 0:
        return masked
    is_stop = torch.isin(block, stop_ids)
    T = block.shape[1]
    first_stop = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1), T)
    return masked & (torch.arange(T, device=block.device)[None, :] < first_stop[:, None])


def _filled(alive, transfer, tokens, offsets):
    rows, cols = transfer.nonzero(as_tuple=True)
    filled: dict[int, list[tuple[int, int]]] = {}
    for i, j, t in zip(rows.tolist(), cols.tolist(), tokens[rows, cols].tolist()):
        filled.setdefault(alive[i], []).append((offsets[i] + j, t))
    return filled


def run(model, prompts: list[list[int]], settings: DecodeSettings, *, trace: bool = False,
        on_event: Callable[[Step | Emit], None] | None = None, **kw) -> Result:
    """Run `decode` to the end and collect tokens, finish reasons, counters (and the trace)."""
    res = Result.empty(prompts)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ev in decode(model, prompts, settings, **kw):
            res.add(ev, keep_trace=trace)
            if on_event is not None:
                on_event(ev)
    res.seconds = time.perf_counter() - t0
    if trace and res.trace is None:
        res.trace = []
    return res
