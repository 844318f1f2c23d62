"""Text around the token loop: prompt rendering (chat template), stop strings, and
incremental detokenisation for streaming."""

from __future__ import annotations

import re

from .errors import InputError


def render(tokenizer, prompt, chat: bool | None = None) -> list[int]:
    """Token ids for a prompt: a string, or a list of {"role", "content"} messages.
    Chat models get their chat template unless chat=False."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("empty prompt")
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        messages = prompt
        for i, m in enumerate(messages):
            if not isinstance(m.get("content"), str) or "role" not in m:
                raise InputError(f"message {i} needs a 'role' and a string 'content'")
        chat = True if chat is None else chat
        if not chat:
            raise InputError("a list of messages needs the chat template (chat=True)")
    else:
        raise InputError("a prompt is a non-empty string or a non-empty list of messages")
    use_chat = tokenizer.chat_template is not None if chat is None else chat
    if use_chat:
        if tokenizer.chat_template is None:
            raise InputError("this tokenizer has no chat template; use chat=False (--no-chat)")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def decode(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True)


def find_stop(text: str, stops) -> int | None:
    """Where the text ends: the start of the earliest stop string (OpenAI semantics), or
    for a compiled regex among `stops` the end of its first match (text up to and including
    it is kept: "stop once a fenced code block is closed"); None if nothing matched."""
    hits = []
    for s in stops:
        if isinstance(s, re.Pattern):
            m = s.search(text)
            if m:
                hits.append(m.end())
        elif (i := text.find(s)) >= 0:
            hits.append(i)
    return min(hits) if hits else None


def stop_checker(tokenizer, stops):
    """A loop stop_fn: given a row's generated tokens, return how many to keep if a stop
    string appeared (the fewest tokens whose text contains it), else None."""
    if not stops:
        return None

    def check(row: int, tokens: list[int]):
        if find_stop(decode(tokenizer, tokens), stops) is None:
            return None
        keep = len(tokens)
        while keep > 1 and find_stop(decode(tokenizer, tokens[:keep - 1]), stops) is not None:
            keep -= 1
        return keep

    return check


def final_text(tokenizer, tokens: list[int], stops) -> str:
    """The completion text: special tokens removed, cut before a stop string (OpenAI)."""
    text = decode(tokenizer, tokens)
    cut = find_stop(text, stops) if stops else None
    return text if cut is None else text[:cut]


class TextStream:
    """Turns growing token lists into text deltas, holding back an incomplete UTF-8
    character and anything that could be the start of a stop string."""

    def __init__(self, tokenizer, stops=()):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.tokens: list[int] = []
        self.sent = 0

    def push(self, tokens: list[int], final: bool = False) -> str:
        self.tokens.extend(tokens)
        text = final_text(self.tokenizer, self.tokens, self.stops)
        if not final:
            if text.endswith("\ufffd"):
                text = text.rstrip("\ufffd")
            hold = max((k for s in self.stops for k in range(1, len(s))
                        if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
        delta = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return delta


class ReasoningSplitter:
    """Routes streamed text into reasoning (between `open` and `close` markers, e.g.
    <think>...</think>) and content; holds back a partial marker at a chunk's end.

        sp = ReasoningSplitter("<think>", "</think>")
        sp.push("<think>hm</thi") -> [("reasoning", "hm")];  sp.push("nk>Hi") -> [("content", "Hi")]
    """

    def __init__(self, open: str = "<think>", close: str = "</think>"):
        self.markers = {"content": open, "reasoning": close}
        self.state, self.buf = "content", ""

    def push(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            marker = self.markers[self.state]
            i = self.buf.find(marker)
            if i < 0:
                break
            if i:
                out.append((self.state, self.buf[:i]))
            self.buf = self.buf[i + len(marker):]
            self.state = "reasoning" if self.state == "content" else "content"
        marker = self.markers[self.state]
        hold = 0 if final else max((k for k in range(1, len(marker))
                                    if self.buf.endswith(marker[:k])), default=0)
        if len(self.buf) > hold:
            out.append((self.state, self.buf[:len(self.buf) - hold]))
            self.buf = self.buf[len(self.buf) - hold:]
        return out

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole text."""
        parts = self.push(text, final=True)
        return ("".join(t for k, t in parts if k == "reasoning"),
                "".join(t for k, t in parts if k == "content"))
