"""Text helpers: reasoning sections split from content, whatever the chunking."""

import pytest

from nextblock.text import ReasoningSplitter

TEXT = "Hmm <think>first, add 2 and 3</think>The answer is 5. <think>x</think>Done."


def test_split_whole_text():
    assert ReasoningSplitter().split(TEXT) == ("first, add 2 and 3x",
                                              "Hmm The answer is 5. Done.")
    assert ReasoningSplitter().split("no markers") == ("", "no markers")
    assert ReasoningSplitter("[r]", "[/r]").split("[r]a[/r]b") == ("a", "b")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_streamed_chunks_give_the_same_split(size):
    sp, parts = ReasoningSplitter(), []
    chunks = [TEXT[i:i + size] for i in range(0, len(TEXT), size)]
    for i, c in enumerate(chunks):
        parts += sp.push(c, final=i == len(chunks) - 1)
    reasoning = "".join(t for k, t in parts if k == "reasoning")
    content = "".join(t for k, t in parts if k == "content")
    assert (reasoning, content) == ReasoningSplitter().split(TEXT)
    assert all("<" not in t or "think" not in t for _, t in parts)  # no marker leaks


def test_unfinished_marker_prefix_is_text_at_the_end():
    sp = ReasoningSplitter()
    assert sp.push("a <thi") == [("content", "a ")]
    assert sp.push("", final=True) == [("content", "<thi")]
