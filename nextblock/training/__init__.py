"""Adaptation: the training objective over [noisy | clean] and the block-size curriculum."""
