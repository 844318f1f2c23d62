"""The terminal view: LiveView as an on_event callback, and render_steps."""

import io
import re

from rich.console import Console

from nextblock.viz import LiveView, render_steps
from nextblock.viz.live import STYLE_NEW, STYLE_OLD
from nextblock.viz.replay import MASK, Pieces

from .conftest import expected_masks


def console():
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def plain(c):
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", c.file.getvalue())


def test_live_block_mode_shows_masks_and_final_text(generate, tok):
    c = console()
    events = []
    with LiveView(tok, console=c) as view:
        out = generate("block", on_event=lambda ev: (events.append(ev), view(ev)))
    text = plain(c)
    assert MASK in text
    assert out.text.strip() and out.text.strip() in text
    assert f"{out.forwards} forwards" in text and "done (length)" in text
    assert view.state.committed == out.tokens and view.state.cells == []
    assert len(events) > out.forwards  # steps and emits both arrived


def test_live_ar_mode_has_no_masks(generate, tok):
    c = console()
    with LiveView(tok, console=c, delay=0.001) as view:
        out = generate("ar", on_event=view)
    text = plain(c)
    assert MASK not in text
    assert out.text.strip() in text
    assert view.state.steps == out.forwards == len(out.tokens)


def test_live_stop_token_cuts_text(generate, tok):
    first = generate("block", block_size=4, max_new_tokens=12).tokens
    stop = first[5]  # inside the second block
    c = console()
    with LiveView(tok, console=c) as view:
        out = generate("block", stop_token_ids=[stop], on_event=view)
    assert out.completions[0].finish_reason == "stop"
    assert view.state.committed == out.tokens == first[:first.index(stop) + 1]
    assert "done (stop)" in plain(c)


def test_render_steps_one_line_per_forward_with_masks_and_highlights(generate, tok):
    out = generate("block", block_size=4, max_new_tokens=12)
    lines = render_steps(out.trace, tok)
    shown = []  # a fused step ran inside the commit forward before it: it takes that line
    for st, masks in zip(out.trace, expected_masks(out.trace)):
        if st.fused and shown:
            shown[-1] = (st, masks)
        else:
            shown.append((st, masks))
    assert len(lines) == len(shown) == out.forwards
    assert [int(ln.plain.split()[0]) for ln in lines] == list(range(1, len(lines) + 1))
    for line, (st, masks) in zip(lines, shown):
        assert line.plain.count(MASK) == masks
        assert st.kind in line.plain
        new = [line.plain[s.start:s.end] for s in line.spans if s.style == STYLE_NEW]
        assert new == [Pieces(tok)(t) for _, t in sorted(st.filled[0])]
        old = [s for s in line.spans if s.style == STYLE_OLD]
        assert len(new) + len(old) + masks == st.size


def test_render_steps_ar_never_masks(generate, tok):
    out = generate("ar", max_new_tokens=6)
    lines = render_steps(out.trace, tok)
    assert [ln.plain.count(MASK) for ln in lines] == [0] * 6
    assert all(Pieces(tok)(st.filled[0][0][1]) in ln.plain for ln, st in zip(lines, out.trace))


def test_pieces_show_whitespace(tok):
    p = Pieces(tok)
    assert p(5) == "↵" and p(6) == "·x→" and p(7) == "t7·"


def test_fused_steps_are_not_counted_as_forwards(generate, tok):
    """A fused step runs inside the commit forward: the footer and the step lines count
    forwards as the summary does, not trace steps."""
    c = console()
    with LiveView(tok, console=c) as view:
        out = generate("block", block_size=4, threshold=0.5, max_new_tokens=16, on_event=view)
    fused = sum(st.fused for st in out.trace)
    assert fused > 0 and out.forwards == len(out.trace) - fused
    assert view.state.forwards == out.forwards
    assert f"/ {out.forwards} forwards" in plain(c)
    lines = render_steps(out.trace, tok)
    assert len(lines) == out.forwards and lines[-1].plain.split()[0] == str(out.forwards)
