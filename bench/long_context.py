"""Long-context costs: training step (dense vs chunked attention), decoding at long context
per mode, and a retrieval probe. Every number comes from this run; nothing is asserted.

    python bench/long_context.py train  --lengths 1024,2048,4096,8192
    python bench/long_context.py decode --lengths 1024,4096,8192,16384,32768 --new 128
    python bench/long_context.py probe  --lengths 1024,4096,8192 --trials 4
    python bench/long_context.py loss   --lengths 4096 --windows 4

train: one optimizer-free training step (forward + backward of the objective, LoRA r=32 as
in the default recipe, gradient checkpointing, batch 1, block size 4) on the default base
model in the doubled [noisy | clean] layout, per length and attention path, each in a
process of its own: seconds and peak resident memory (and its growth over the loaded
model). glibc keeps freed memory for reuse below a threshold it raises as it goes (up to 32
MiB), so that peak is partly the allocator's choice; `--live-memory` fixes the threshold at
128 KiB, which makes the peak that of live memory, at some cost in time.
`--attention dense,chunked`; `--memory-limit-gb G` caps each step's address space, so a step
that does not fit is reported as out of memory rather than handed to the OOM killer.

decode: a context of N tokens (N from --lengths): a raw-text prompt of N - --new tokens
(Python standard-library source, always on disk), prefilled once (chunked,
--prefill-chunk) and decoded from in every mode (a stored prefix, `decoding.loop.prefill`): prefill seconds and peak memory, then per mode
generated tokens/s, tokens per forward (the decode's own forwards), peak memory, and the
block/verified speed-up over AR at the same length. A context beyond the window gets
--rope-scaling (default yarn) with the smallest power-of-two factor that covers it; shorter
ones run unscaled.

probe: a fact ("The secret number is N.") planted 10% into a long filler prompt, asked at
the end; hits out of --trials per length and mode, for --model (default: the adapted
default). Report it whatever it shows.

loss: the AR loss of --model on the last --target tokens of --windows windows of the
probe's filler text (which no stage trains on), given 256, 512, ... tokens of the window
before them, up to all of it: the same tokens each time, so only the context changes. A
model that uses its whole context keeps improving with more of it; one that breaks beyond
some position gets worse there.

Background work distorts timings: run this on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

from nextblock.bench import peak_mb, reset_peak


def filler_tokens(tokenizer, n: int) -> list[int]:
    """At least n tokens of real text: the standard library's own sources."""
    out: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        out += tokenizer(path.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
        if len(out) >= n:
            return out[:n]
    raise SystemExit(f"not enough standard-library text for {n} tokens")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table(title: str, cols: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r])
    Console(width=160).print(t)


def train_step(model: str, L: int, attention: str, rope_kind: str) -> dict:
    """One measured training step (see the module doc), in this process."""
    import nextblock
    from nextblock.training.objective import ObjectiveSettings, noise, objective
    from nextblock.training.trainer import AdaptConfig, build_model

    lm = nextblock.load(model, dtype="float32")  # trained in float32
    scaling = _scaling_for(lm, L, rope_kind)
    module = build_model(AdaptConfig(data=["-"], lora_r=32, lora_alpha=64,
                                     rope_scaling=scaling), lm)
    ids = torch.tensor([filler_tokens(lm.tokenizer, L)])
    settings = ObjectiveSettings(attention=attention)
    batch = noise(ids, 4, lm.config.mask_token_id, settings,
                  generator=torch.Generator().manual_seed(0))
    base = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    o = objective(module.model, batch, settings, checkpoint=True)
    o.loss.backward()
    sec = time.perf_counter() - t0
    peak = peak_mb()
    return {"length": L, "attention": attention, "seconds": sec, "peak_mb": peak,
            "growth_mb": peak - base, "loss": o.loss.item(), "tokens_per_s": L / sec}


def bench_train(args) -> list[dict]:
    """Each (length, attention) in a fresh process, so its peak memory is its own."""
    import subprocess

    out = []
    for L in args.lengths:
        for attention in args.attention:
            cmd = [sys.executable, __file__, "train-one", "--model", args.model,
                   "--lengths", str(L), "--attention", attention,
                   "--rope-scaling", args.rope_scaling]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.memory_limit_gb:
                cmd += ["--memory-limit-gb", str(args.memory_limit_gb)]
            env = dict(os.environ)
            if args.live_memory:  # glibc: every allocation over 128 KiB is unmapped on free
                env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                rec = {"length": L, "attention": attention, "error":
                       (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
            else:
                rec = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(rec), flush=True)
            out.append(rec)
    table("training step, doubled layout (forward + backward, batch 1, b = 4; peak = the "
          "step's own process, model included"
          + ("; live memory: glibc mmap threshold 128 KiB)" if args.live_memory else ")"),
          ["length", "attention", "seconds", "tokens/s", "peak MB", "growth MB", "loss"],
          [[r["length"], r["attention"], r.get("seconds", "-"), r.get("tokens_per_s", "-"),
            r.get("peak_mb", "-"), r.get("growth_mb", "-"), r.get("loss", r.get("error"))]
           for r in out])
    return out


def _scaling_for(lm, length: int, kind: str) -> str | None:
    """RoPE scaling for `length` positions: None inside the window, else the smallest
    power-of-two factor that covers it."""
    factor = 1
    while lm.context_length * factor < length:
        factor *= 2
    return None if factor == 1 else f"{kind}:{factor}"


def bench_decode(args) -> list[dict]:
    import nextblock
    from nextblock.cache import KVCache
    from nextblock.decoding.engine import Engine
    from nextblock.decoding.events import Request
    from nextblock.decoding.loop import prefill

    out, lm, scaling = [], None, "unset"
    probe = nextblock.load(args.model, dtype="float32")  # tokenizer and context only
    tokens = filler_tokens(probe.tokenizer, max(args.lengths))
    for L in args.lengths:  # L: the whole context, prompt (L - new tokens) and new tokens
        if _scaling_for(probe, L, args.rope_scaling) != scaling:  # only as much as L needs
            scaling = _scaling_for(probe, L, args.rope_scaling)
            lm = nextblock.load(args.model, rope_scaling=scaling, quantize=args.quantize,
                                    dtype=args.dtype)
            per_token = KVCache.for_model(lm.model, 1, 1).bytes_per_token
        P, ar = L - args.new, None
        reset_peak()
        t0 = time.perf_counter()
        prefix = prefill(lm.model, tokens[:P], mask_token_id=lm.config.mask_token_id,
                         chunk=args.prefill_chunk)  # once per length, shared by the modes
        prefill_s, prefill_peak = time.perf_counter() - t0, peak_mb()
        for mode in args.modes:
            kw = dict(mode=mode, max_new_tokens=args.new, prefill_chunk=args.prefill_chunk)
            if mode != "ar":
                kw.update(block_size=args.block_size, threshold=args.threshold)
            s = lm.settings(**kw)
            eng, stamps = Engine(lm.model, s, prefix=prefix, max_context=lm.context_length,
                                 mask_token_id=lm.config.mask_token_id), []
            eng.submit(Request(0, tokens[:P], args.new))  # no stop token: --new tokens
            reset_peak()
            with torch.inference_mode():
                while eng.busy:
                    eng.step()
                    stamps.append(time.perf_counter())
            end = time.perf_counter()
            res = eng.result([0])
            rec = {"length": L, "mode": mode, "rope_scaling": scaling, "prefill_s": prefill_s,
                   "prefill_peak_mb": prefill_peak, "tokens": res.new_tokens,
                   "decode_tok_s": res.new_tokens / (end - stamps[0]),
                   "tokens_per_forward": res.new_tokens / max(1, res.forwards),
                   "peak_mb": peak_mb(), "kv_cache_mb": per_token * L / 2**20,
                   "output": res.tokens}
            if mode == "ar":
                ar = rec
            rec["speedup_vs_ar"] = rec["decode_tok_s"] / ar["decode_tok_s"] if ar else None
            rec["agreement"] = (sum(a == b for a, b in zip(rec["output"], ar["output"]))
                                / max(1, len(ar["output"]))) if ar else None
            print(json.dumps({k: v for k, v in rec.items() if k != "output"}), flush=True)
            out.append(rec)
    table(f"decoding {args.new} new tokens after a long prompt ({args.model}; RoPE scaling "
          f"beyond the window: {args.rope_scaling})",
          ["context", "scaling", "mode", "prefill s", "prefill peak MB", "tok/s", "tok/fwd", "x AR",
           "agree AR", "KV MB", "decode peak MB"],
          [[r["length"], r["rope_scaling"] or "-", r["mode"], r["prefill_s"],
            r["prefill_peak_mb"], r["decode_tok_s"],
            r["tokens_per_forward"],
            "-" if r["speedup_vs_ar"] is None else r["speedup_vs_ar"],
            "-" if r["agreement"] is None else r["agreement"], r["kv_cache_mb"], r["peak_mb"]]
           for r in out])
    return out


def bench_probe(args) -> list[dict]:
    import nextblock

    probe = nextblock.load(args.model, dtype="float32")  # tokenizer and context only
    lm, scaling, tok = None, "unset", probe.tokenizer
    rng = random.Random(0)
    question = "\n\nWhat is the secret number mentioned in the text above? Answer with the number."
    out = []
    for L in args.lengths:  # L: the whole context (prompt, question and answer)
        if _scaling_for(probe, L, args.rope_scaling) != scaling:
            scaling = _scaling_for(probe, L, args.rope_scaling)
            lm = nextblock.load(args.model, rope_scaling=scaling, quantize=args.quantize,
                                    dtype=args.dtype)
        for mode in args.modes:
            hits, answers = [], []
            for trial in range(args.trials):
                secret = str(rng.randint(10000, 99999))
                fact = tok(f"\nThe secret number is {secret}.\n",
                           add_special_tokens=False)["input_ids"]
                q = tok(question, add_special_tokens=False)["input_ids"]
                body = filler_tokens(tok, L)[:L - len(fact) - len(q) - 96]  # chat + answer
                at = len(body) // 10
                text = tok.decode(body[:at] + fact + body[at:] + q)
                kw = dict(mode=mode, max_new_tokens=16, prefill_chunk=args.prefill_chunk)
                if mode != "ar":
                    kw.update(block_size=args.block_size, threshold=args.threshold)
                gen = lm.generate([{"role": "user", "content": text}], **kw)
                hits.append(secret in gen.text)
                answers.append({"secret": secret, "answer": gen.text})
            rec = {"length": L, "mode": mode, "hits": sum(hits), "trials": len(hits),
                   "model": args.model, "rope_scaling": scaling}
            print(json.dumps(rec), flush=True)
            rec["answers"] = answers  # in --json only
            out.append(rec)
    table(f"retrieval probe ({args.model}; a fact at 10% of the prompt, asked at the end)",
          ["context", "mode", "hits", "trials"],
          [[r["length"], r["mode"], r["hits"], r["trials"]] for r in out])
    return out


def bench_loss(args) -> list[dict]:
    """AR loss of the same held-out tokens given more and more context, for --model."""
    import nextblock
    from nextblock import masks
    from nextblock.modeling import forward, lm_head

    out, plain, T = [], nextblock.load(args.model, dtype=args.dtype), args.target
    for L in args.lengths:  # L: the longest context plus the scored tokens
        scaling = _scaling_for(plain, L, args.rope_scaling)
        lm = plain if scaling is None else nextblock.load(args.model, rope_scaling=scaling,
                                                         dtype=args.dtype)
        stream = filler_tokens(lm.tokenizer, L * args.windows)
        contexts = [c for c in (256, 512, 1024, 2048, 4096, 8192, 16384) if c < L - T]
        contexts.append(L - T)
        loss = {c: 0.0 for c in contexts}
        for w in range(args.windows):
            window = stream[w * L:(w + 1) * L]
            for c in contexts:  # the last T tokens of the window after c tokens of context
                ids = torch.tensor([window[L - T - c:]])
                n = c + T
                mask = masks.decode_mask(torch.ones(1, n, dtype=torch.bool), 0, n, causal=True)
                with torch.inference_mode():
                    h = forward(lm.model, ids, torch.arange(n)[None], mask, logits_from=c - 1,
                                hidden=True)[0, :-1]
                    logits = lm_head(lm.model)(h).float()
                loss[c] += torch.nn.functional.cross_entropy(logits, ids[0, c:]).item()
        rec = {"model": args.model, "length": L, "windows": args.windows, "target": T,
               "rope_scaling": scaling,
               "loss_by_context": {str(c): v / args.windows for c, v in loss.items()}}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    table(f"AR loss of the last {T} tokens of held-out windows, by context before them "
          f"({args.model}; {args.windows} windows)", ["window", "context", "loss"],
          [[r["length"], k, v] for r in out for k, v in r["loss_by_context"].items()])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "decode", "probe", "loss", "train-one"])
    p.add_argument("--model", default=None, help="model spec (train: default-base)")
    p.add_argument("--lengths", help="comma-separated token counts")
    p.add_argument("--attention", default="dense,chunked")
    p.add_argument("--modes", default="ar,block,verified")
    p.add_argument("--new", type=int, default=128, help="new tokens (decode)")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--prefill-chunk", type=int, default=2048)
    p.add_argument("--rope-scaling", default="yarn", help="type used beyond the window")
    p.add_argument("--quantize", choices=["int8"])
    p.add_argument("--dtype", default="float32", choices=["float32", "auto", "int8"],
                   help="decode/probe/loss: float32 (the README's runs) or the int8 engine")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--windows", type=int, default=4, help="loss: windows of held-out text")
    p.add_argument("--target", type=int, default=256, help="loss: tokens scored per window")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="train: cap each step's address space; a step over it is reported "
                        "as out of memory instead of waking the kernel's OOM killer")
    p.add_argument("--live-memory", action="store_true",
                   help="train: peak of live memory rather than of what glibc keeps (every "
                        "allocation over 128 KiB unmapped on free); slower, so take step "
                        "times from a run without it")
    p.add_argument("--json", help="also write the records to this file")
    args = p.parse_args(argv)
    defaults = {"train": "1024,2048,4096,8192", "train-one": "1024", "decode": "1024,4096,8192,16384,32768",
                "probe": "1024,4096,8192", "loss": "4096"}
    args.lengths = [int(x) for x in (args.lengths or defaults[args.what]).split(",")]
    args.attention = args.attention.split(",")
    args.modes = args.modes.split(",")
    if args.model is None:
        args.model = "default-base" if args.what.startswith("train") else "default"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "train-one":  # one configuration, for `train` (a process of its own)
        if args.memory_limit_gb:
            import resource

            cap = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            rec = train_step(args.model, args.lengths[0], args.attention[0], args.rope_scaling)
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            rec = {"length": args.lengths[0], "attention": args.attention[0],
                   "error": f"out of memory (address space capped at {args.memory_limit_gb} GB)"}
        print(json.dumps(rec))
        return 0
    records = {"train": bench_train, "decode": bench_decode, "probe": bench_probe,
               "loss": bench_loss}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
