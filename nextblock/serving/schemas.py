"""Request bodies of the OpenAI-compatible routes (pydantic). Unknown fields, wrong types and
out-of-range values are rejected before any work, with a message naming the field.

Decoding extensions beside the OpenAI fields: `mode` (ar | block | verified), `block_size`,
`sub_block`, `threshold`, `confidence`, `top_k`, `repetition_penalty`; unset ones come from
the model's recommended settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat
from pydantic import StrictInt, StrictStr, field_validator

Number = StrictFloat | StrictInt


def _encodable(v: str) -> str:
    """JSON may carry a lone surrogate (\\ud800) that no tokenizer can encode."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate (not valid Unicode text)") from None
    return v


Text = Annotated[StrictStr, AfterValidator(_encodable)]
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 64 - 1  # what torch.Generator.manual_seed takes


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
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: StrictInt = Field(1, ge=1, le=8)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    frequency_penalty: Number = 0
    presence_penalty: Number = 0
    logprobs: StrictBool | None = None
    # nextblock extensions
    mode: Literal["ar", "block", "verified"] | None = None
    block_size: StrictInt | None = Field(None, ge=1, le=256)
    sub_block: StrictInt | None = Field(None, ge=1)
    threshold: Number | None = None
    confidence: Literal["prob", "margin", "neg_entropy"] | None = None
    top_k: StrictInt | None = Field(None, ge=0)
    repetition_penalty: Number | None = Field(None, gt=0)

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
        names = ("mode", "block_size", "sub_block", "threshold", "confidence", "temperature",
                 "top_p", "top_k", "repetition_penalty")
        out = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
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
