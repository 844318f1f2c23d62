"""The batch's Lookahead: the fused commit is made only while the guesses it bets on get
confirmed often enough to pay for its extra tokens (decoding/batch.py)."""

import torch

from nextblock.decoding.batch import Lookahead


def test_fusing_stops_after_unconfirmed_guesses_and_resumes_after_confirmed_ones():
    look = Lookahead(torch.device("cpu"))
    assert look.worth()  # optimistic start: the first commit is fused
    misses = 0
    while look.worth():
        look.offer(torch.zeros(1), confirmed=False)
        misses += 1
        assert look.take() is None  # an unconfirmed lookahead is never used
    assert 3 <= misses <= 8  # a handful of misses, not one, not forever
    hits = 0
    while not look.worth():
        look.offer(None, confirmed=True)
        hits += 1
    assert hits <= 3
    logits = torch.ones(1)
    look.offer(logits, confirmed=True)
    assert look.take() is logits and look.take() is None  # used once


def test_on_an_accelerator_fusing_always_pays():
    look = Lookahead(torch.device("meta"))
    for _ in range(20):
        look.offer(None, confirmed=False)
    assert look.worth()
