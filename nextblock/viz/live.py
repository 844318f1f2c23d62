"""Watching block diffusion in the terminal: the text so far, then the current block with
its masks (░░), the tokens the latest forward filled (highlighted) and those filled before.

    with LiveView(lm.tokenizer, delay=0.1) as view:          # one prompt (batch row 0)
        out = lm.generate("Tell me a joke", trace=True, on_event=view)

    for line in render_steps(out.trace, lm.tokenizer):       # not a terminal: one line a step
        console.print(line)
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .. import text as textlib
from ..decoding.loop import Emit, Step
from .replay import MASK, Pieces, Replay, frames

STYLE_MASK = "grey50"
STYLE_NEW = "bold black on bright_green"
STYLE_OLD = "black on grey70"
STYLE_STATUS = "dim"


def block_text(cells: list[int | None], new: list[int], pieces: Pieces) -> Text:
    """The current block as styled text: masks, earlier tokens, newly filled tokens."""
    out = Text()
    for j, tok in enumerate(cells):
        if j:
            out.append(" ")
        if tok is None:
            out.append(MASK, STYLE_MASK)
        else:
            out.append(pieces(tok), STYLE_NEW if j in new else STYLE_OLD)
    return out


def render_steps(trace: list[Step], tokenizer, row: int = 0) -> list[Text]:
    """One line per forward pass: forward number, kind, block index, the block's state. A
    fused step ran inside the commit forward before it, so it replaces that line
    ("commit+denoise"): the numbers are the forwards the summary counts."""
    pieces = Pieces(tokenizer)
    lines = []
    for f, st in zip(frames(trace, row), trace):
        fused = st.fused and bool(lines)
        kind = "commit+" + f.kind if fused else f.kind
        line = Text()
        line.append(f"{f.forwards if not st.cached else '-':>4} {kind:<7} b{f.block:<3} ",
                    STYLE_STATUS)
        line.append_text(block_text(f.cells, f.new, pieces))
        if fused:
            lines[-1] = line
        else:
            lines.append(line)
    return lines


class LiveView:
    """An `on_event` callback that redraws row 0's decoding after every event."""

    def __init__(self, tokenizer, console: Console | None = None, *, delay: float = 0.0,
                 row: int = 0, prompt: str | None = None):
        self.tokenizer, self.delay, self.prompt = tokenizer, delay, prompt
        self.console = console or Console()
        self.state = Replay(row)
        self.pieces = Pieces(tokenizer)
        self._live = Live(console=self.console, auto_refresh=False)
        self._started = False

    def __enter__(self) -> "LiveView":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not self._started:
            self._live.start()
            self._started = True
            self._live.update(self.render(), refresh=True)

    def stop(self) -> None:
        if self._started:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._started = False

    def __call__(self, ev: Step | Emit) -> None:
        if isinstance(ev, Step):
            self.state.step(ev)
        else:
            self.state.emit(ev)
        self.start()
        self._live.update(self.render(), refresh=True)
        if isinstance(ev, Step) and self.delay > 0:
            time.sleep(self.delay)

    def status(self) -> Text:
        s = self.state
        if not s.steps:
            return Text("waiting for the first forward…", STYLE_STATUS)
        n = len(s.committed) + sum(t is not None for t in s.cells)
        msg = (f"step {s.steps} · {s.kind} · block {s.block} · {n} tokens / {s.forwards} "
               f"forwards = {n / max(1, s.forwards):.2f} tokens/forward")
        if s.finished:
            msg += f" · done ({s.finished})"
        return Text(msg, STYLE_STATUS)

    def render(self) -> Group:
        s = self.state
        body = Text()
        if self.prompt:
            body.append(self.prompt + "\n", "dim")
        body.append(textlib.decode(self.tokenizer, s.committed))
        body.append_text(block_text(s.cells, s.new, self.pieces))
        lines = list(body.wrap(self.console, self.console.width))
        keep = max(3, self.console.height - 2)  # keep the newest lines on screen
        return Group(*lines[-keep:], self.status())
