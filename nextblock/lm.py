"""NextBlockModel: a loaded model with its tokenizer and block-diffusion settings, and the
generation API on top of the decoding loop.

    lm = nextblock.load()
    out = lm.generate("What is 7 * 8?", mode="block", block_size=4, threshold=0.9)
    print(out.text, out.forwards, out.new_tokens)
    for i, g in lm.generate_each(prompts, batch_size=8, mode="ar"):  # offline batches
        print(i, g.text)
    for piece in lm.stream("Tell me a joke", mode="ar"):
        print(piece, end="")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from . import text as textlib
from .config import BlockConfig, DecodeSettings
from .decoding.engine import Engine, run
from .decoding.events import Emit, Generation, Prefix, Request, Step
from .decoding.loop import prefill
from .errors import InputError
from .modeling import context_limit


@dataclass
class NextBlockModel:
    model: object
    tokenizer: object
    config: BlockConfig
    name: str = "model"
    quantization: str | None = None  # "int8" when the int8 engine runs its forwards

    def __post_init__(self):
        # how the decoding rows store a committed block (nextblock.decoding.rows)
        self.model.nextblock_attention = self.config.attention

    @property
    def context_length(self) -> int:
        return context_limit(self.model.config)

    @property
    def stop_token_ids(self) -> list[int]:
        ids = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(src, "eos_token_id", None) if src is not None else None
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def settings(self, settings: DecodeSettings | None = None, **overrides) -> DecodeSettings:
        """The model's recommended settings, then `settings`, then keyword overrides."""
        base = settings or self.config.recommended()
        return base.replace(**overrides).validated()

    def encode(self, prompt, chat: bool | None = None) -> list[int]:
        ids = textlib.render(self.tokenizer, prompt, chat)
        if len(ids) >= self.context_length:
            raise InputError(f"prompt is {len(ids)} tokens long but the model's context is "
                             f"{self.context_length} tokens")
        return ids

    def _loop_kw(self) -> dict:
        return dict(mask_token_id=self.config.mask_token_id, stop_token_ids=self.stop_token_ids,
                    max_context=self.context_length)

    def _prepare(self, prompts, chat, settings, overrides, prefix=None):
        single = isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
        if not single and not (isinstance(prompts, (list, tuple)) and prompts):
            raise InputError("prompts: expected a string, a list of messages, or a non-empty "
                             "list of those")
        batch = [prompts] if single else list(prompts)
        ids = [self.encode(p, chat) for p in batch]
        s = self.settings(settings, **overrides)
        kw = dict(self._loop_kw(), stop_fn=textlib.stop_checker(self.tokenizer, s.stop))
        if prefix is not None:
            if len(ids) != 1 or ids[0][:len(prefix.tokens)] != prefix.tokens:
                raise InputError("prefix: it serves one prompt that starts with the prefilled "
                                 f"tokens ({len(prefix.tokens)} of them)")
            kw["prefix"] = prefix
        return ids, s, kw

    def generate(self, prompts, *, chat: bool | None = None, settings: DecodeSettings | None = None,
                 trace: bool = False, on_event: Callable[[Step | Emit], None] | None = None,
                 prefix: Prefix | None = None, **overrides) -> Generation:
        """Generate for one prompt or a batch (strings or message lists). Keyword overrides
        are DecodeSettings fields: mode, block_size, sub_block, threshold, temperature, ...
        `prefix` (from `prefill`): the prompt's beginning, already prefilled."""
        ids, s, kw = self._prepare(prompts, chat, settings, overrides, prefix)
        return self.with_text(run(self.model, ids, s, trace=trace, on_event=on_event, **kw))

    def generate_each(self, prompts, *, batch_size: int = 8, chat: bool | None = None,
                      settings: DecodeSettings | None = None, stops=None, seeds=None,
                      **overrides) -> Iterator[tuple[int, Generation]]:
        """Continuous batching over many prompts (offline evaluation, bulk generation): up
        to `batch_size` rows decode together; a row leaves when it ends and the next prompt
        joins at the following block boundary. Yields (prompt index, Generation) as each
        finishes, in finishing order. `stops[i]` / `seeds[i]`: per-prompt stop strings and
        seeds (default: the settings'); a compiled regex among the stops ends the text after
        its first match. A Generation's `forwards` counts the forward passes
        its row took part in, and `seconds` its share of each (wall time split evenly over
        the rows of a forward), so seconds sum to the wall time of the whole run."""
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        prompts = list(prompts)
        ids = [self.encode(p, chat) for p in prompts]
        s = self.settings(settings, **overrides)
        stops = ([tuple(x) for x in stops] if stops is not None
                 else [tuple(s.stop)] * len(ids))
        seeds = list(seeds) if seeds is not None else [s.seed] * len(ids)
        if len(stops) != len(ids) or len(seeds) != len(ids):
            raise InputError(f"stops and seeds: one entry per prompt ({len(ids)} prompts)")
        eng = Engine(self.model, s, **self._loop_kw(), max_batch=batch_size)
        for i, p in enumerate(ids):
            eng.submit(Request(i, p, s.max_new_tokens, seeds[i]),
                       stop_fn=textlib.stop_checker(self.tokenizer, stops[i]))
        with torch.inference_mode():
            while eng.busy:
                eng.step()
                for i, g in eng.finished():
                    yield i, self.with_text(g, stops[i])

    def prefill(self, prompt, *, chat: bool | None = None, prefill_chunk: int = 2048) -> Prefix:
        """Prefill one prompt once, to decode from it many times: `generate(prompt,
        prefix=p)` (any mode, any settings) then skips its prefill, and a prompt that extends
        it (a raw-text prompt with chat=False, say a long document and then a question)
        prefills only the rest. Each use works on a copy."""
        return prefill(self.model, self.encode(prompt, chat),
                       mask_token_id=self.config.mask_token_id, chunk=prefill_chunk)

    def with_text(self, gen: Generation, stops=None) -> Generation:
        """The completions' text: decoded, cut at `stops` (default: the settings')."""
        stops = gen.settings.stop if stops is None else stops
        gen.completions = [replace(c, text=textlib.final_text(self.tokenizer, c.tokens, stops))
                           for c in gen.completions]
        return gen

    def stream(self, prompt, *, chat: bool | None = None, settings: DecodeSettings | None = None,
               on_event: Callable[[Step | Emit], None] | None = None,
               prefix: Prefix | None = None, **overrides) -> Iterator[str]:
        """Yield text as blocks are committed (one prompt); `on_event` sees every event."""
        import torch

        ids, s, kw = self._prepare(prompt, chat, settings, overrides, prefix)
        out = textlib.TextStream(self.tokenizer, s.stop)
        eng = Engine(self.model, s, prefix=kw.pop("prefix", None), **kw)
        eng.submit(Request(0, ids[0], s.max_new_tokens, s.seed))
        with torch.inference_mode():
            while eng.busy:
                for ev in eng.step(on_event):
                    if isinstance(ev, Emit):
                        delta = out.push(ev.tokens.get(0, []), final=bool(ev.finished))
                        if delta:
                            yield delta

    def save(self, directory: str | os.PathLike) -> None:
        """Write a Hugging Face directory (safetensors) with nextblock.json beside it: the
        float weights (an int8 engine is a copy made at load time, never saved)."""
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        self.config.save(directory)

