"""Decoding: the loop (`loop.decode`), what to unmask each step (`policies`), and how a
token is chosen and how sure the model is (`sampling`)."""

from .loop import Result, Step, decode

__all__ = ["decode", "Result", "Step"]
