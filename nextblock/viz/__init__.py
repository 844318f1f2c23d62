"""Seeing block diffusion decode: a live terminal view (`LiveView`, an `on_event` callback),
one line per forward (`render_steps`), and a self-contained HTML replay (`write_html`).

    with LiveView(lm.tokenizer) as view:
        out = lm.generate("Tell me a joke", trace=True, on_event=view)
    write_html(out, lm.tokenizer, "replay.html")
"""

from .html import trace_to_html, write_html
from .live import LiveView, render_steps

__all__ = ["LiveView", "render_steps", "trace_to_html", "write_html"]
