"""Request bodies of the OpenAI-compatible routes (pydantic). Unknown fields, wrong types and
out-of-range values are rejected before any work, with a message naming the field.

Decoding extensions beside the OpenAI fields: `mode` (ar | block | verified), `block_size`,
`sub_block`, `threshold`, `confidence`, `top_k`, `repetition_penalty`; unset ones come from
the model's recommended settings. Every decoding field takes its bounds, choices and
description from DecodeSettings' own definition (config.setting): one set of bounds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat
from pydantic import StrictInt, StrictStr, field_validator

from ..config import DecodeSettings

Number = StrictFloat | StrictInt


def _encodable(v: str) -> str:
    """JSON may carry a lone surrogate (\\ud800) that no tokenizer can encode."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate (not valid Unicode text)") from None
    return v


Text = Annotated[StrictStr, AfterValidator(_encodable)]
_SETTINGS = {f.name: f for f in dataclasses.fields(DecodeSettings)}


def setting(name: str, tp=None):
    """The request field of DecodeSettings' `name`: its type (`tp`; choices become a
    Literal), bounds and description from the setting's definition; None when unset."""
    m = _SETTINGS[name].metadata
    if m["choices"]:
        tp = Literal[tuple(m["choices"])]
    bounds = {k: m[k] for k in ("ge", "gt", "le", "lt") if m[k] not in (None, math.inf)}
    return Annotated[tp | None, Field(description=m["help"], **bounds)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart]
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: setting("temperature", Number) = None
    top_p: setting("top_p", Number) = None
    stop: Text | list[Text] | None = None
    seed: setting("seed", StrictInt) = None
    n: StrictInt = Field(1, ge=1, le=8)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    frequency_penalty: Number = 0
    presence_penalty: Number = 0
    logprobs: StrictBool | None = None
    # nextblock extensions
    mode: setting("mode") = None
    block_size: setting("block_size", StrictInt) = None
    sub_block: setting("sub_block", StrictInt) = None
    threshold: setting("threshold", Number) = None
    confidence: setting("confidence") = None
    top_k: setting("top_k", StrictInt) = None
    repetition_penalty: setting("repetition_penalty", Number) = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _zero(cls, v):
        if v != 0:
            raise ValueError("only 0 is supported (use repetition_penalty)")
        return v

    @field_validator("logprobs", "echo", check_fields=False)  # echo: completions only
    @classmethod
    def _off(cls, v, info):
        if v:
            raise ValueError(f"{info.field_name} is not supported")
        return v

    def budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def settings(self) -> dict:
        """Decoding overrides for NextBlockModel.settings()."""
        out = {k: getattr(self, k) for k in _SETTINGS
               if k not in ("seed", "stop") and k in type(self).model_fields
               and getattr(self, k) is not None}
        if self.stop:
            out["stop"] = tuple(self.stop)
        return out


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: Text | list[Text]
    echo: StrictBool = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or list of non-empty strings")
        return prompts
