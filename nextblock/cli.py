"""The `nextblock` command line: thin argument parsing over the Python API.

    nextblock generate "What is 7*8?" --mode block --block-size 4 --json
    nextblock chat --mode ar
    nextblock trace "Write a haiku" --block-size 8 --out steps.html
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from .errors import InputError, NextBlockError


def positive_int(v: str) -> int:
    """argparse type: argparse then names the flag in its one-line error (exit 2)."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _list_of(parse, what: str):
    def parse_list(v: str):
        try:
            return [parse(x.strip()) for x in v.split(",")]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {v!r}"
                                             ) from None
    return parse_list


def _sub_block(x: str):
    return None if x == "full" else positive_int(x)


def _add_model_args(p):
    p.add_argument("--model", default=None, help="default | HF directory | .gguf file")
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "int8", "float32", "bfloat16", "float16"],
                   help="auto (default): the int8 engine on the CPU, else float32; float32 "
                   "is the reference path")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--quantize", choices=["int8"], help="the same as --dtype int8")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model directory's own Python code (off by default)")
    p.add_argument("--rope-scaling", metavar="TYPE:FACTOR",
                   help="extend the context through RoPE scaling, e.g. yarn:4")


def _add_decode_args(p):
    """One flag per DecodeSettings field, its help and choices from the field's own
    definition (config.setting); the values are checked by DecodeSettings.validated()."""
    from .config import DecodeSettings, field_kind

    g = p.add_argument_group("decoding (defaults: the model's recommended settings)")
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(DecodeSettings):
        flag, meta, kind = "--" + f.name.replace("_", "-"), f.metadata, field_kind(f)
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=meta["help"])
        elif kind == "tuple[str, ...]":
            g.add_argument(flag, action="append", help=meta["help"] + " (repeatable)")
        else:
            g.add_argument(flag, type=types[kind], choices=meta["choices"], help=meta["help"])
    g.add_argument("--no-chat", action="store_true", help="do not apply the chat template")


def _overrides(args) -> dict:
    from .config import DecodeSettings

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeSettings)
          if getattr(args, f.name) is not None}
    if "stop" in kw:
        kw["stop"] = tuple(kw["stop"])
    return kw


def _load(args):
    from .loading import load

    return load(args.model, dtype=args.dtype, device=args.device,
                trust_remote_code=args.trust_remote_code, quantize=args.quantize,
                rope_scaling=args.rope_scaling)


def _summary(gen) -> str:
    s = gen.settings
    mode = "ar" if s.mode == "ar" else (
        f"{s.mode} B={s.block_size} sub={s.effective_sub_block} thr={s.threshold}")
    rate = gen.new_tokens / gen.seconds if gen.seconds > 0 else 0.0
    extra = f", {gen.accepted}/{gen.drafted} drafts accepted" if s.mode == "verified" else ""
    return (f"[{mode}] {gen.new_tokens} tokens, {gen.forwards} forwards, "
            f"{gen.tokens_per_forward:.2f} tokens/forward, {rate:.1f} tokens/s{extra}")


def _record(lm, gen, i) -> dict:
    c = gen.completions[i]
    return {
        "text": c.text, "tokens": c.tokens, "new_tokens": len(c.tokens),
        "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason,
        "forwards": gen.forwards, "seconds": round(gen.seconds, 4),
        "fused_forwards_saved": gen.fused, "drafted": gen.drafted, "accepted": gen.accepted,
        "tokens_per_forward": round(gen.tokens_per_forward, 4),
        "mode": gen.settings.mode, "mask_token_id": lm.config.mask_token_id,
        "settings": dataclasses.asdict(gen.settings), "model": lm.name,
    }


def cmd_generate(args) -> int:
    lm = _load(args)
    chat = False if args.no_chat else None
    kw = _overrides(args)
    prompts = args.prompt
    one = prompts[0] if len(prompts) == 1 else prompts
    shown = False  # the live view already drew the final text
    if args.show_steps:
        from .viz.live import LiveView, render_steps

        if sys.stdout.isatty():
            shown = True
            with LiveView(lm.tokenizer) as view:
                gen = lm.generate(one, chat=chat, on_event=view, trace=True, **kw)
        else:
            gen = lm.generate(one, chat=chat, trace=True, **kw)
            for line in render_steps(gen.trace, lm.tokenizer):
                print(line)
    elif not args.json and len(prompts) == 1:  # stream the text as blocks commit
        import time

        from .decoding.events import Generation

        gen = Generation.empty([[]], lm.settings(**kw))  # validates before printing anything
        t0 = time.perf_counter()
        for piece in lm.stream(prompts[0], chat=chat, on_event=gen.add, **kw):
            print(piece, end="", flush=True)
        print()
        gen.seconds = time.perf_counter() - t0
        gen = lm.with_text(gen)
        print(_summary(gen), file=sys.stderr)
        return 0
    else:
        gen = lm.generate(one, chat=chat, **kw)
    if args.json:
        for i in range(len(gen.completions)):
            print(json.dumps(_record(lm, gen, i), ensure_ascii=False))
    else:
        if not shown:
            for c in gen.completions:
                print(c.text)
        print(_summary(gen), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    lm = _load(args)
    kw = _overrides(args)
    lm.settings(**kw)
    messages = []
    print("nextblock chat: /reset clears the history, /exit or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in lm.stream(messages, **kw):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_trace(args) -> int:
    from .viz.html import write_html

    lm = _load(args)
    gen = lm.generate(args.prompt, chat=False if args.no_chat else None, trace=True,
                      **_overrides(args))
    write_html(gen, lm.tokenizer, args.out)
    print(f"wrote {args.out}: {gen.forwards} steps, {gen.new_tokens} tokens", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    import torch
    from rich.console import Console

    from . import bench as B

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = _load(args)
    prompts = B.load_prompts(args.prompts)[:args.limit]
    rows = B.grid(lm, args.modes, block_sizes=args.block_sizes,
                  thresholds=args.thresholds or B.BLOCK_THRESHOLDS,
                  sub_blocks=args.sub_blocks or B.SUB_BLOCKS)
    engine = getattr(lm.model, "nextblock_engine", None)
    title = (f"{lm.name} | {f'int8 engine ({engine.isa})' if engine else 'float32 reference'} | "
             f"{torch.get_num_threads()} threads | {len(prompts)} prompts | "
             f"{args.max_new_tokens} new tokens max | median of {args.repeats}")
    console = Console(stderr=True)
    console.print(f"bench: {len(rows)} settings; {title}")
    done = lambda r: console.print(f"  {r.label}: {r.tokens_per_s:.1f} tok/s, "  # noqa: E731
                                   f"{r.tokens_per_forward:.2f} tok/fwd")
    B.bench(lm, prompts, rows, args.max_new_tokens, args.repeats,
            chat=False if args.no_chat else None, progress=done)
    Console(width=max(Console().width, 132)).print(B.table(rows, title))
    if args.json:
        Path(args.json).write_text(json.dumps([r.record() for r in rows], indent=1) + "\n")
        console.print(f"wrote {args.json}")
    if args.plot:
        console.print(f"wrote {B.plot(rows, args.plot, title)}")
    return 0


def cmd_serve(args) -> int:
    import logging
    import os

    import uvicorn

    from .serving import create_app
    from .serving.app import uvicorn_config

    key = args.api_key or os.environ.get("NEXTBLOCK_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach "
              "this address can use the model", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    lm = _load(args)
    app = create_app(lm, served_name=args.served_model_name, api_key=key,
                     max_batch=args.max_batch, max_queue=args.max_queue,
                     max_tokens_limit=args.max_tokens_limit,
                     reasoning=tuple(args.reasoning_markers.split(",", 1)))
    uvicorn.Server(uvicorn_config(app, args.host, args.port, timeout_graceful_shutdown=30,
                                  log_level="info")).run()
    return 0


@contextlib.contextmanager
def progress_reporter(label: str, total: int, lines: int = 20):
    """rich's progress bar in a terminal; elsewhere (a log file, CI) a plain line on stderr
    about `lines` times over the run, so a long job is never silent."""
    if sys.stderr.isatty():
        from rich.progress import Progress
        with Progress(transient=True) as bar:
            t = bar.add_task(label, total=total)
            yield lambda: bar.advance(t)
        return
    every, done, start = max(1, total // lines), [0], time.time()

    def tick():
        done[0] += 1
        if done[0] % every == 0 or done[0] == total:
            print(f"{label}: {done[0]}/{total} ({time.time() - start:.0f} s)", file=sys.stderr,
                  flush=True)
    yield tick


def cmd_eval(args) -> int:
    from .evaluation.run import evaluate
    from .evaluation.tasks import TASKS

    task = TASKS[args.task]
    samples = task.load(args.data, args.limit, style=args.style, fewshot=args.fewshot,
                        fewshot_data=args.fewshot_data)
    lm = _load(args)
    kw = _overrides(args)
    kw.setdefault("max_new_tokens", task.max_new_tokens)
    settings = lm.settings(**kw)
    with progress_reporter(f"{args.task} {settings.mode}", len(samples) * args.samples) as tick:
        row = evaluate(lm, task, samples, settings, args.out, resume=args.resume,
                       progress=lambda rec: tick(), n=args.samples,
                       batch_size=args.batch_size)
    print(f"{args.task} [{settings.mode}] accuracy {row['accuracy']:.3f} on "
          f"{row['samples']} samples, {row['tokens_per_s']:.1f} tokens/s, "
          f"{row['tokens_per_forward']:.2f} tokens/forward; summary in "
          f"{args.out}/{args.task}-summary.md", file=sys.stderr)
    return 0


def cmd_adapt(args) -> int:
    from .errors import ConfigError
    from .training.trainer import AdaptConfig, adapt

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(AdaptConfig)
                 if getattr(args, f.name) not in (None, False)}  # False: a flag not given
    cfg = (AdaptConfig.from_file(args.config, **overrides) if args.config
           else AdaptConfig(**overrides))
    if args.stop_at is not None and (args.stop_at < 1 or args.stop_at % cfg.save_every):
        raise ConfigError(f"--stop-at {args.stop_at}: use a positive multiple of save_every "
                          f"({cfg.save_every}), so the run ends on a checkpoint")
    records = adapt(cfg, resume=args.resume or False, stop_at=args.stop_at,
                    overwrite=args.overwrite)
    from accelerate import PartialState

    if records and PartialState().is_main_process:  # one line, not one per process
        last = records[-1]
        print(f"done: step {last['step']}, block size {last['block_size']}, "
              f"masked-token accuracy {last['masked_acc']:.3f}; metrics in "
              f"{cfg.out}/metrics.jsonl, plot in {cfg.out}/loss.png", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .loading import DTYPES
    from .training.export import export, export_gguf

    if args.gguf:
        if args.adapter:
            raise InputError("--gguf writes the whole model: leave out --adapter")
        out = export_gguf(args.model, args.out, kind=args.gguf_type)
    else:
        out = export(args.model, args.out, adapter=args.adapter, dtype=DTYPES[args.dtype])
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from .training.trainer import plot_metrics

    print(plot_metrics(args.run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="nextblock", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nextblock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate_commands(sub)
    _add_bench_command(sub)
    _add_serve_command(sub)
    _add_eval_command(sub)
    _add_adapt_command(sub)
    _add_export_commands(sub)
    _show_defaults(sub)
    return parser


def _add_generate_commands(sub) -> None:
    """generate, chat, trace: decoding from the command line."""
    p = sub.add_parser("generate", help="generate text for one or more prompts")
    p.add_argument("prompt", nargs="+")
    _add_model_args(p)
    _add_decode_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.add_argument("--show-steps", action="store_true", help="draw the denoising steps")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat")
    _add_model_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("trace", help="write an HTML replay of the denoising steps")
    p.add_argument("prompt")
    p.add_argument("--out", default="steps.html")
    _add_model_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_trace)


def _add_bench_command(sub) -> None:
    """bench: decode speed and agreement in one run."""
    p = sub.add_parser("bench", help="decode speed and agreement: transformers, AR, block, "
                       "verified, one run")
    _add_model_args(p)
    p.add_argument("--prompts", help="file: one prompt per line (default: the shipped set)")
    p.add_argument("--limit", type=positive_int, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--modes", default="transformers,ar,block,verified",
                   type=_list_of(str, "modes"),
                   help="rows to measure: transformers, ar, block, verified")
    p.add_argument("--block-sizes", type=_list_of(positive_int, "integers"),
                   help="block grid sizes, e.g. 4,8 (default: the model's)")
    p.add_argument("--thresholds", type=_list_of(float, "numbers"),
                   help="block grid thresholds (default 0.5,...,1.0)")
    p.add_argument("--sub-blocks", type=_list_of(_sub_block, "integers or full"),
                   help="block grid sub-blocks, e.g. 4,8,full")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--plot", help="write the speed / agreement frontier as PNG")
    p.set_defaults(func=cmd_bench)


def _add_serve_command(sub) -> None:
    """serve: the OpenAI-compatible server."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (also "
                   "$NEXTBLOCK_API_KEY); /health stays open")
    p.add_argument("--served-model-name", help="the model id clients send (default: --model)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096)
    p.add_argument("--reasoning-markers", default="<think>,</think>",
                   help="open,close markers of a reasoning section (reasoning_content)")
    p.set_defaults(func=cmd_serve)


def _add_eval_command(sub) -> None:
    """eval: a benchmark task in any mode."""
    p = sub.add_parser("eval", help="accuracy and speed on a benchmark task, any mode")
    p.add_argument("--task", required=True, choices=["gsm8k", "math500", "mbpp", "humaneval"])
    p.add_argument("--data", help="the task's data file (humaneval: the package's own)")
    p.add_argument("--limit", type=positive_int, help="the first N problems")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--resume", action="store_true", help="skip samples already recorded")
    p.add_argument("--samples", type=int, default=1,
                   help="completions per problem (with --temperature), for pass@k")
    p.add_argument("--batch-size", type=int, default=1,
                   help="samples decoded together (continuous batching): same answers, "
                   "speed becomes throughput at that batch size")
    p.add_argument("--style", choices=["chat", "base"], default="chat",
                   help="chat: zero-shot chat prompt (instruct models); base: the papers' "
                   "plain-text few-shot prompts (base models)")
    p.add_argument("--fewshot", type=int, help="examples in a base prompt (gsm8k 8, mbpp 3)")
    p.add_argument("--fewshot-data", help="gsm8k: the training split for few-shot examples "
                   "(default: train.jsonl beside --data)")
    _add_model_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_eval)


def _add_adapt_command(sub) -> None:
    """adapt: continued training (AdaptConfig's settings as flags)."""
    p = sub.add_parser("adapt", help="continued training into a block-diffusion model")
    p.add_argument("--config", help="JSON file of AdaptConfig settings (flags override it)")
    _add_adapt_flags(p)
    p.add_argument("--resume", nargs="?", const="latest", choices=["latest", "previous"],
                   help="continue the run in --out from its latest checkpoint (previous: the "
                   "one before a corrupt latest); the settings must match the stored run's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --out instead of refusing")
    p.add_argument("--stop-at", type=int, help="end this call after step N, a multiple of "
                   "--save-every so it is checkpointed (the schedule still plans --steps)")
    p.set_defaults(func=cmd_adapt)


def _add_adapt_flags(p) -> None:
    """One flag per AdaptConfig field, help and choices from its definition (opt)."""
    from .config import field_kind
    from .training.adapt_config import AdaptConfig

    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(AdaptConfig):
        flag, meta, kind = "--" + f.name.replace("_", "-"), f.metadata, field_kind(f)
        help_ = meta["help"].replace("%", "%%")  # argparse formats help with %
        text = help_ if "default" in help_ else help_ + " (default: the config's, else " \
            "AdaptConfig's)"
        if kind == "bool":
            p.add_argument(flag, action="store_true", help=help_)
        elif kind == "list[str]":
            p.add_argument(flag, action="append", help=help_)
        elif f.name == "rope_scaling":
            p.add_argument(flag, metavar="TYPE:FACTOR", help=help_)
        else:
            p.add_argument(flag, type=types[kind], choices=meta["choices"], help=text)


def _add_export_commands(sub) -> None:
    """export and report: a trained run as a model, its loss plot."""
    p = sub.add_parser("export", help="write a trained run as a loadable model (or any "
                       "model as GGUF)")
    p.add_argument("--model", required=True, help="run directory or checkpoint directory "
                   "(with --gguf also any model spec: default, an HF or adapter directory)")
    p.add_argument("--out", required=True)
    p.add_argument("--adapter", action="store_true", help="LoRA adapter + mask row only")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--gguf", action="store_true", help="one GGUF file for llama.cpp (AR "
                   "mode; Llama family): LoRA merged, the mask token in the vocabulary")
    p.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0"],
                   help="tensor type of the GGUF matrices (norms stay f32)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="plot a run's metrics.jsonl to loss.png")
    p.add_argument("run")
    p.set_defaults(func=cmd_report)


def _show_defaults(sub) -> None:
    # every flag's help ends with its default where it has one worth showing (argparse's
    # ArgumentDefaultsHelpFormatter would also print "(default: None)" everywhere)
    for command in sub.choices.values():
        for action in command._actions:
            text = action.help or ""
            worth = action.default not in (None, False, argparse.SUPPRESS)
            if action.option_strings and worth and "default" not in text:
                action.help = f"{text} (default: %(default)s)".strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NextBlockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
