"""Sampling and policies: HF semantics of the logits processing, confidence measures, and the
batch rule that only rows with masks left transfer tokens."""

import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from nextblock.config import DecodeSettings
from nextblock.decoding.policies import BlockPolicy
from nextblock.decoding.sampling import Sampler, confidence

V, MASK = 50, 49


def test_processing_matches_transformers_processors():
    torch.manual_seed(0)
    logits = torch.randn(3, V) * 3
    history = torch.randint(0, V - 1, (3, 7))
    s = DecodeSettings(temperature=0.7, top_k=12, top_p=0.8, repetition_penalty=1.3).validated()
    got = Sampler(s, MASK, [None] * 3).probs(logits[:, None], history)[:, 0]
    ref = logits.clone()
    ref[:, MASK] = -torch.inf
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                 TopKLogitsWarper(12), TopPLogitsWarper(0.8)):
        ref = proc(history, ref)
    torch.testing.assert_close(got, torch.softmax(ref, -1))
    assert (got > 0).sum(-1).max() <= 12 and got[:, MASK].eq(0).all()


def test_greedy_ignores_warpers_and_never_picks_mask():
    logits = torch.zeros(1, 1, V)
    logits[0, 0, MASK] = 10.0
    logits[0, 0, 3] = 1.0
    s = DecodeSettings(top_k=1).validated()
    sampler = Sampler(s, MASK, [None])
    assert sampler.choose(sampler.probs(logits, None)).item() == 3


def test_sampled_frequencies_follow_the_distribution():
    probs = torch.tensor([[[0.5, 0.3, 0.2]]])
    s = DecodeSettings(temperature=1.0).validated()
    sampler = Sampler(s, 99, [1234])
    counts = torch.zeros(3)
    for _ in range(4000):
        counts[sampler.choose(probs).item()] += 1
    torch.testing.assert_close(counts / 4000, probs[0, 0], atol=0.03, rtol=0)


def test_confidence_measures():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]])
    tokens = torch.tensor([[1, 0]])
    torch.testing.assert_close(confidence(probs, tokens, "prob"), torch.tensor([[0.2, 0.4]]))
    torch.testing.assert_close(confidence(probs, tokens, "margin"), torch.tensor([[0.5, 0.0]]))
    h = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(confidence(probs, tokens, "neg_entropy"), -h)


def test_only_rows_with_masks_transfer_and_only_in_their_sub_block():
    policy = BlockPolicy(block_size=8, sub_block=4, threshold=0.9)
    masked = torch.tensor([
        [False, False, False, False, False, False, False, False],  # done: must fill nothing
        [False, True, True, False, True, True, True, True],  # sub-block 0 still open
        [False, False, False, False, False, True, True, True],  # in sub-block 1
    ])
    conf = torch.tensor([
        [0.99] * 8,
        [0.0, 0.2, 0.3, 0.0, 0.99, 0.99, 0.99, 0.99],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.95, 0.5, 0.92],
    ])
    got = policy.select(conf, masked)
    assert not got[0].any()
    assert got[1].tolist() == [False, False, True, False, False, False, False, False]
    assert got[2].tolist() == [False] * 5 + [True, False, True]
