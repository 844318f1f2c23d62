"""nextblock as an lm-evaluation-harness model ("nextblock").

    python -m nextblock.evaluation.harness --model nextblock \\
        --model_args pretrained=default,mode=verified,block_size=4 --tasks TASK ...
    # or, in Python:
    import nextblock.evaluation.harness   # registers the model
    lm_eval.simple_evaluate(model="nextblock", model_args="pretrained=default", tasks=[...])

lm-eval has no plugin discovery for models, so `python -m nextblock.evaluation.harness`
registers the model and then runs lm-eval's own command line with the same arguments.
`loglikelihood` uses the causal path (one causal forward, exact as for any AR model);
`generate_until` uses the chosen decoding mode (mode, block_size, threshold, ... in
model_args), stopping at the task's `until` strings, `--batch_size N` rows at a time.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import nextblock

from .. import masks
from ..modeling import forward


@register_model("nextblock")
class NextBlockLM(LM):
    def __init__(self, pretrained: str | None = None, quantize: str | None = None,
                 max_new_tokens: int = 256, batch_size: int = 1, dtype: str = "auto",
                 **decoding):
        super().__init__()
        self.lm = nextblock.load(pretrained, quantize=quantize, dtype=dtype)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)  # generate_until rows decoded together
        self.decoding = decoding  # DecodeSettings fields, e.g. mode=verified, block_size=4
        self.lm.settings(**self.decoding)  # fail early on a bad setting

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config=None):
        """model_args "k=v,..." plus lm-eval's --batch_size (an integer; "auto" means 1)."""
        kw = {}
        for part in filter(None, (arg_string or "").split(",")):
            key, _, value = part.partition("=")
            kw[key.strip()] = _value(value.strip())
        bs = (additional_config or {}).get("batch_size")
        if "batch_size" not in kw and str(bs).isdigit():
            kw["batch_size"] = int(bs)
        return cls(**kw)

    # ---- scoring: the causal path -------------------------------------------------
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        T = len(ids)
        mask = masks.decode_mask(torch.ones(1, T, dtype=torch.bool), 0, T, causal=True)
        with torch.inference_mode():
            logits = forward(self.lm.model, torch.tensor([ids]), torch.arange(T)[None], mask)
        return torch.log_softmax(logits[0].float(), dim=-1)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        tok = self.lm.tokenizer
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        if not ctx:  # nothing to condition on: start from the BOS / EOS token
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            return [start], whole
        return whole[:len(ctx)], whole[len(ctx):]

    def score(self, context: str, continuation: str) -> tuple[float, bool]:
        """(sum of log p(continuation | context), whether greedy decoding would write it)."""
        ctx, cont = self._encode_pair(context, continuation)
        lp = self._logprobs(ctx + cont)[len(ctx) - 1:-1]
        target = torch.tensor(cont)
        ll = lp.gather(1, target[:, None]).sum().item()
        return ll, bool((lp.argmax(-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return [self.score(*req.args) for req in requests]

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            ctx, cont = self._encode_pair("", req.args[0])
            lp = self._logprobs(ctx + cont)[:-1]
            out.append(lp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        return out

    # ---- generation: the chosen decoding mode ---------------------------------------
    def generate_until(self, requests) -> list[str]:
        """Requests with the same generation settings decode together, `batch_size` rows at
        a time (continuous batching; the same text as one at a time), each stopping at its
        own `until` strings."""
        groups: dict[tuple, list[tuple[int, str, tuple[str, ...]]]] = {}
        for i, req in enumerate(requests):
            context, gen = req.args
            until = gen.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            kw = {**self.decoding, "max_new_tokens": int(gen.get("max_gen_toks",
                                                                  self.max_new_tokens))}
            if gen.get("do_sample") and gen.get("temperature"):
                kw["temperature"] = float(gen["temperature"])
            groups.setdefault(tuple(sorted(kw.items())), []).append((i, context, until))
        out = [""] * len(requests)
        for kw, items in groups.items():
            for j, g in self.lm.generate_each([c for _, c, _ in items], chat=False,
                                              batch_size=self.batch_size,
                                              stops=[u for _, _, u in items], **dict(kw)):
                out[items[j][0]] = g.text
        return out


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def main(argv=None) -> None:
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
