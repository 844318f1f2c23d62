"""The HTML replay page: embedded data, frames, safety, self-containment."""

import json
import re

from nextblock.viz import trace_to_html, write_html

from .conftest import NASTY, expected_masks


def page_data(page):
    m = re.search(r'<script type="application/json" id="nb-data">(.*?)</script>', page, re.S)
    assert m, "embedded data not found"
    return json.loads(m.group(1))


def frame_tokens(data, frame):
    return data["tokens"][:frame["m"]] + [t for t in frame["ids"] if t is not None]


def committed_texts(data):
    out = []
    for t in data["texts"]:
        out.append(t["set"] if "set" in t else (out[-1] if out else "") + t["add"])
    return out


def test_frames_follow_the_trace(generate, tok):
    out = generate("block", block_size=4, max_new_tokens=12)
    data = page_data(trace_to_html(out, tok))
    frames = data["frames"]
    assert len(frames) == len(out.trace)
    assert [f["k"] for f in frames] == [st.kind for st in out.trace]
    assert [f["ids"].count(None) for f in frames] == expected_masks(out.trace)
    assert frame_tokens(data, frames[-1]) == out.tokens
    texts = committed_texts(data)
    for f, st in zip(frames, out.trace):
        assert [f["ids"][j] for j in f["new"]] == [t for _, t in st.filled[0]]
        assert texts[f["c"]] == tok.decode(out.tokens[:f["m"]])
        assert f["n"] == len(frame_tokens(data, f))
    assert set(data["pieces"]) >= {str(t) for t in out.tokens[4:]}


def test_ar_frames_are_single_tokens(generate, tok):
    out = generate("ar", max_new_tokens=8)
    frames = page_data(trace_to_html(out, tok))["frames"]
    assert len(frames) == 8
    assert all(len(f["ids"]) == 1 and None not in f["ids"] and f["new"] == [0] for f in frames)


def test_stop_token_hides_positions_past_the_end(generate, tok):
    first = generate("block").tokens
    stop = first[5]
    out = generate("block", stop_token_ids=[stop])
    data = page_data(trace_to_html(out, tok))
    assert frame_tokens(data, data["frames"][-1]) == out.tokens
    assert None not in data["frames"][-1]["ids"]


def test_page_is_self_contained_and_escaped(generate, tok, tmp_path):
    out = generate("block")
    path = write_html(out, tok, tmp_path / "replay.html", title="a <b> & c")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script src" not in page.lower() and "http" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page
    assert page.count("</script>") == 2 and NASTY not in page
    assert "<title>a &lt;b&gt; &amp; c</title>" in page
    data = page_data(page)
    assert NASTY in data["prompt"]
    summary = dict(data["summary"])
    assert summary["mode"] == "block" and summary["block_size"] == "4"
    assert summary["forwards"] == str(out.forwards)
    assert summary["new tokens"] == str(out.new_tokens)
    assert summary["tokens per forward"] == f"{out.tokens_per_forward:.2f}"
