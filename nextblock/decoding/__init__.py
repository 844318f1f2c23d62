"""Decoding: the batching engine (`engine.Engine`, `engine.run`) over the loop
(`loop.decode`), what to unmask each step (`policies`), and how a token is chosen and how
sure the model is (`sampling`)."""

from .engine import Engine, run
from .events import Completion, Emit, Generation, Request, Step
from .loop import decode

__all__ = ["Engine", "run", "decode", "Completion", "Emit", "Generation", "Request", "Step"]
