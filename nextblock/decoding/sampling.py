"""Choosing tokens from logits, and measuring confidence.

Processing follows Hugging Face semantics and order: repetition penalty, temperature, top-k,
top-p. Greedy (temperature 0) takes the argmax. Each row has its own random generator, seeded
from the row's seed, and draws only when it has something to fill: a row's samples therefore
do not depend on what else is in the batch.
"""

from __future__ import annotations

import torch

from ..config import DecodeSettings


class Sampler:
    def __init__(self, settings: DecodeSettings, mask_token_id: int, seeds: list[int | None]):
        self.s = settings
        self.mask_token_id = mask_token_id
        self.generators = [None if seed is None else torch.Generator().manual_seed(seed)
                           for seed in seeds]
        self.engine = None  # the int8 engine, whose C argmax greedy choices use (`pick`)

    def keep_rows(self, rows: list[int]) -> None:
        self.generators = [self.generators[r] for r in rows]

    def extend(self, other: "Sampler") -> None:
        """Add the rows of another sampler (rows joining a running batch)."""
        self.generators = self.generators + other.generators

    def _mask_index(self, logits):  # [MASK] is never an output
        return torch.tensor([self.mask_token_id], device=logits.device)

    def probs(self, logits: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Processed distribution [B, T, V] for logits [B, T, V]; history [B, N] holds the
        token ids already in each row (for the repetition penalty)."""
        logits = logits.float().index_fill(-1, self._mask_index(logits), -torch.inf)
        s = self.s
        if s.repetition_penalty != 1.0 and history is not None:
            idx = history[:, None, :].expand(-1, logits.shape[1], -1)
            score = logits.gather(2, idx)
            score = torch.where(score < 0, score * s.repetition_penalty,
                                score / s.repetition_penalty)
            logits = logits.scatter(2, idx, score)
        if s.greedy:
            return torch.softmax(logits, dim=-1)
        logits = logits / s.temperature
        if s.top_k:
            kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if s.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cum <= 1 - s.top_p
            drop_sorted[..., -1] = False  # always keep the most likely token
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, -torch.inf)
        return torch.softmax(logits, dim=-1)

    def pick(self, logits: torch.Tensor, history: torch.Tensor | None = None,
             draw: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens [B, T] an AR step takes from logits [B, T, V]: `choose(probs(...))`,
        except greedy decoding without a repetition penalty, which takes the argmax of the
        logits themselves (the mask token excluded) as transformers' greedy search does,
        with no processed copy of the vocabulary-wide rows. Every AR choice of every mode
        (prefill, commit, verify) goes through here, so verified mode stays AR's. `draw`:
        the rows that choose (the others take no randomness), as in `choose`."""
        if not (self.s.greedy and (self.s.repetition_penalty == 1.0 or history is None)):
            return self.choose(self.probs(logits, history), draw=draw)
        return self.argmax(logits, exclude=self.mask_token_id)

    def argmax(self, x: torch.Tensor, exclude: int = -1) -> torch.Tensor:
        """x.argmax(-1) with column `exclude` never chosen (-1: none); in the int8 engine's
        C when there is one (the same indices, faster than torch's over a vocabulary)."""
        if self.engine is not None and x.device.type == "cpu":
            return self.engine.argmax(x, exclude)
        tokens = x.argmax(dim=-1)
        if exclude >= 0 and bool((tokens == exclude).any()):  # rare: recompute without it
            tokens = x.float().index_fill(-1, torch.tensor([exclude], device=x.device),
                                          -torch.inf).argmax(dim=-1)
        return tokens

    def choose(self, probs: torch.Tensor, draw: torch.Tensor | None = None,
               sizes: list[int] | None = None) -> torch.Tensor:
        """Token ids [B, T]. Greedy: argmax. Sampled: one draw per position, only for rows
        where `draw` is True (other rows get their argmax and use no randomness), and only
        for a row's first `sizes[r]` positions (a shorter last block draws what it would
        draw alone)."""
        tokens = self.argmax(probs)
        if self.s.greedy:
            return tokens
        for r, g in enumerate(self.generators):
            if draw is not None and not bool(draw[r]):
                continue
            p = probs[r] if sizes is None else probs[r, :sizes[r]]
            noise = torch.empty_like(p).exponential_(1.0, generator=g)
            tokens[r, :p.shape[0]] = (p / noise).argmax(dim=-1)  # exponential race
        return tokens

    def accept_point_draft(self, p: torch.Tensor, draft: torch.Tensor | None,
                           rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Speculative sampling against a deterministic draft (verified mode). p: [B, V] the
        target distribution; draft: [B] proposed ids (None: nothing proposed, just sample).
        For each row in `rows`: accept with probability p(draft); otherwise draw from p with
        the draft removed. Returns (accepted [B], the drawn token [B])."""
        accepted = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        choice = p.argmax(-1)
        for r in rows.nonzero().squeeze(1).tolist():
            g = self.generators[r]
            q = p[r]
            if draft is not None:
                d = int(draft[r])
                u = torch.rand((), generator=g, device=p.device)
                if bool(u < q[d]):
                    accepted[r], choice[r] = True, d
                    continue
                q = q.clone()
                q[d] = 0.0
            noise = torch.empty_like(q).exponential_(1.0, generator=g)
            choice[r] = (q / noise).argmax()
        return accepted, choice


def confidence(probs: torch.Tensor, tokens: torch.Tensor, measure: str) -> torch.Tensor:
    """How sure the model is at each position [B, T]: `prob` of the chosen token, `margin`
    between the two most likely tokens, or `neg_entropy` (-H, <= 0)."""
    if measure == "prob":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if measure == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if measure == "neg_entropy":
        return (probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    raise ValueError(f"unknown confidence measure {measure!r}")
