"""How far the int8 engine is from the float32 reference, and why it quantises in groups.

    python bench/int8_fidelity.py [--model default] [--texts 8] [--new-tokens 16]

Held-out loss on GSM8K *training* texts (question + answer; `../shared/data/gsm8k/train.jsonl`,
or `--text FILE`) for: float32, the engine, and four simulated formats (torch fake-quant of
every linear layer's weights and inputs): int8 with one scale per output channel and per row
(what fbgemm-style dynamic quantisation does), int8 in groups of 64 (the engine's format), and
7-bit weights or 7-bit inputs in groups of 64 (what would let the AVX2 kernels skip their
sign step).
Then the engine against float32 teacher-forced (share of equal next-token argmaxes) and in
greedy AR decoding (common prefix with float32 AR on fixed prompts, `--new-tokens` tokens).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import nextblock
from nextblock.modeling import forward

GSM8K_TRAIN = Path(__file__).resolve().parents[1].parent / "shared/data/gsm8k/train.jsonl"
PROMPTS = ["What is 2+3?", "Name a fruit that is yellow.", "Write one sentence about the sea.",
           "def fibonacci(n):", "List three colours.", "Translate 'good morning' into French."]


def texts(path: Path | None, n: int) -> list[str]:
    path = path or GSM8K_TRAIN
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
        return [r["question"] + " " + r["answer"] for r in rows]
    return [path.read_text()[:4000]]


def fake_quant(x: torch.Tensor, group: int | None, levels: int = 127) -> torch.Tensor:
    """Symmetric round trip to integers in [-levels, levels] over the last dim (127: int8; 63:
    7 bits), one scale per `group` (None: per row)."""
    shape = x.shape
    g = x.reshape(*shape[:-1], -1, group or shape[-1])
    s = g.abs().amax(-1, keepdim=True).clamp_min(1e-30) / levels
    return ((g / s).round().clamp(-levels, levels) * s).reshape(shape)


def simulated(model, group: int | None, weight_levels: int = 127, input_levels: int = 127):
    """A copy whose linear layers see quantised weights and inputs (fake-quant)."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            with torch.no_grad():
                mod.weight = torch.nn.Parameter(fake_quant(mod.weight.detach(), group,
                                                           weight_levels))
            mod.register_forward_pre_hook(lambda _, a: (fake_quant(a[0], group, input_levels),))
    return m


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    T = ids.shape[1]
    with torch.no_grad():
        return forward(model, ids, torch.arange(T)[None],
                       torch.ones(T, T, dtype=torch.bool).tril()[None, None])[0, :-1]


def loss(model, seqs) -> float:
    tot = n = 0
    for ids in seqs:
        tot += F.cross_entropy(logits(model, ids), ids[0, 1:], reduction="sum").item()
        n += ids.shape[1] - 1
    return tot / n


def prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--text", type=Path, help="a .jsonl of GSM8K-style rows or a text file")
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    ref = nextblock.load(args.model, dtype="float32")
    fast = nextblock.load(args.model, dtype="int8")
    seqs = [torch.tensor([ref.tokenizer(t)["input_ids"][:512]]) for t in
            texts(args.text, args.texts)]
    base = loss(ref.model, seqs)
    print(f"{ref.name}: held-out loss over {sum(s.shape[1] - 1 for s in seqs)} tokens")
    rows = [("float32", base), ("int8 engine (groups of 64)", loss(fast.model, seqs)),
            ("simulated int8, per channel / per row", loss(simulated(ref.model, None), seqs)),
            ("simulated int8, groups of 64", loss(simulated(ref.model, 64), seqs)),
            # the formats an AVX2 kernel could multiply without its sign step (docs/engine.md)
            ("simulated 7-bit weights, groups of 64", loss(simulated(ref.model, 64, 63), seqs)),
            ("simulated 7-bit inputs, groups of 64", loss(simulated(ref.model, 64, 127, 63), seqs))]
    for name, value in rows:
        print(f"  {name:<40}{value:.4f}  ({100 * (value / base - 1):+.2f}%)")
    same = [(logits(fast.model, s).argmax(-1) == logits(ref.model, s).argmax(-1)).float()
            for s in seqs]
    print(f"teacher-forced: {torch.cat(same).mean():.1%} of next-token argmaxes equal float32's")
    a = fast.generate(PROMPTS, mode="ar", max_new_tokens=args.new_tokens)
    b = ref.generate(PROMPTS, mode="ar", max_new_tokens=args.new_tokens)
    common = [prefix(x.tokens, y.tokens) for x, y in zip(a.completions, b.completions)]
    equal = sum(x.tokens == y.tokens for x, y in zip(a.completions, b.completions))
    print(f"greedy AR, {args.new_tokens} tokens: {equal}/{len(PROMPTS)} completions equal "
          f"float32's; common prefixes {common}")


if __name__ == "__main__":
    main()
