"""Continued training of an AR model into a context-causal block-diffusion model.

    nextblock adapt --data chat.jsonl --out runs/a --steps 400 --lora-r 16
    accelerate launch --config_file scripts/accelerate/fsdp.yaml --num_processes 8 \
        -m nextblock.cli adapt --config run.json          # several processes

`accelerate` runs it on one or many processes and machines: DDP, FSDP2 (also on CPU
processes, see make_accelerator) or DeepSpeed, as the launch config says. A step is one
global batch (batch_size x grad_accum x processes rows) whose loss is normalised by the
step's whole token counts, so any split of it gives the same gradient. Every `save_every`
steps a checkpoint is written atomically (training.checkpoint). The data order and the
noise are functions of (seed, step), so `--resume` continues exactly where the run
stopped, on any process count that keeps the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..adapter import TOKEN_ROW, embedding_name, legacy_mask_row
from ..errors import ConfigError
from ..modeling import shard_layer_calls
from .adapt_config import LORA_TARGETS, AdaptConfig
from .checkpoint import check_resume, load_checkpoint, resume_point, save_checkpoint
from .data import collate, load_rows, parse_source, plan
from .objective import NoisyBatch, ObjectiveSettings, noise, objective


class TrainingModule(torch.nn.Module):
    """model + objective in one forward, so DDP/FSDP wrappers see the whole computation."""

    def __init__(self, model, no_split: list[str]):
        super().__init__()
        self.model = model
        self._no_split_modules = no_split  # what accelerate's FSDP auto-wrap shards by

    def forward(self, batch: NoisyBatch, settings: ObjectiveSettings, checkpoint: bool = False):
        return objective(self.model, batch, settings, checkpoint)


def build_model(cfg: AdaptConfig, lm):
    """The trainable module: LoRA adapters plus the mask token's embedding row (peft's
    trainable tokens: with tied embeddings the head's row is the same one, as after the
    merge), or the full model; the run's RoPE scaling applied to the base model first."""
    if cfg.rope_scaling is not None:
        from ..loading import parse_rope_scaling, set_rope_scaling

        set_rope_scaling(lm.model, parse_rope_scaling(cfg.rope_scaling))
    model = lm.model
    model.train()
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        rows = {embedding_name(model): [lm.config.mask_token_id]}
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
            target_modules=LORA_TARGETS, trainable_token_indices=rows))
    module = TrainingModule(model, list(getattr(lm.model, "_no_split_modules", None) or []))
    if cfg.init_adapter:
        _init_from_adapter(module, Path(cfg.init_adapter))
    return module


def _init_from_adapter(module: TrainingModule, directory: Path) -> None:
    """Continue from an adapter that `nextblock export --adapter` wrote (same rank)."""
    from peft import set_peft_model_state_dict

    own = dict(module.model.named_parameters())
    if not any("lora_" in n for n in own):
        raise ConfigError("init_adapter needs LoRA training (lora_r > 0)")
    try:
        weights = load_file(directory / "adapter_model.safetensors")
        legacy = legacy_mask_row(directory)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"init_adapter {directory}: not a nextblock adapter "
                          f"({str(e).splitlines()[0]})") from None
    if legacy is not None:  # an older export: the row in a file of its own
        row = next(n for n in own if TOKEN_ROW in n).removesuffix(".default")
        weights[row] = legacy[None]
    if not any(TOKEN_ROW in k for k in weights):
        raise ConfigError(f"init_adapter {directory}: not a nextblock adapter (no trained "
                          "mask-token row)")
    for k, v in weights.items():  # peft stores names without the adapter name
        name = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", k)
        name = name + ".default" if name.endswith(TOKEN_ROW) else name
        if name in own and own[name].shape != v.shape:
            raise ConfigError(f"init_adapter {directory}: {k} has shape {tuple(v.shape)}, "
                              f"this run's LoRA expects {tuple(own[name].shape)} (lora_r?)")
    result = set_peft_model_state_dict(module.model, {k: v.float() for k, v in weights.items()})
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"init_adapter {directory}: unexpected weights "
                          f"{result.unexpected_keys[0]}")


def make_schedule(cfg: AdaptConfig, opt):
    """The learning-rate schedule, from transformers: cosine to 10% of the peak, or WSD
    (warmup, constant, linear decay to 0 over the last 20% of the steps)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule

    if cfg.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup, cfg.steps,
                                                            min_lr_rate=0.1)
    decay = cfg.steps - int(cfg.steps * 0.8)
    return get_wsd_schedule(opt, cfg.warmup, decay, decay_type="linear",
                            num_stable_steps=max(0, cfg.steps - cfg.warmup - decay))


# ---- the loop --------------------------------------------------------------------------

def _log_line(m: dict) -> str:
    return (f"step {m['step']:>6} | b {m['block_size']:>2} | loss {m['loss']:.4f} | "
            f"mdm {m['mdm_loss']:.4f} | ar {m['ar_loss']:.4f} | acc {m['masked_acc']:.3f} | "
            f"lr {m['lr']:.2e} | {m['tokens_per_s']:.0f} tok/s")


def make_accelerator(cfg: AdaptConfig):
    """accelerate's Accelerator for this launch (one process, DDP, FSDP or DeepSpeed, as
    `accelerate launch --config_file ...` set it up)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                      cpu=not torch.cuda.is_available())
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate (1.16, state.py) turns FSDP on only for accelerator devices: CPU
        # processes would silently run DDP. torch's FSDP2 (fully_shard) works with gloo, so
        # they are handed accelerate's own FSDP2 path, the code a GPU run takes.
        plugin = FullyShardedDataParallelPlugin()  # reads the launch config's FSDP_* settings
        if plugin.fsdp_version != 2:
            raise ConfigError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate "
                              "config (scripts/accelerate/fsdp.yaml)")
        acc.state.distributed_type, acc.state.fsdp_plugin = DistributedType.FSDP, plugin
    if acc.distributed_type == DistributedType.DEEPSPEED and cfg.grad_accum > 1:
        raise ConfigError("grad_accum > 1 under DeepSpeed: DeepSpeed scales every micro-batch "
                          "itself; raise batch_size instead (untested here: no GPU)")
    return acc


def parallelism(acc, module) -> str:
    """How this launch trains, read from the prepared module itself: fsdp2 (DTensor
    shards), ddp, deepspeed or single."""
    from accelerate.utils import DistributedType
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in module.parameters()):
        return "fsdp2"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if isinstance(module, torch.nn.parallel.DistributedDataParallel) else "single"


def _resume_checkpoint(cfg: AdaptConfig, resume, overwrite: bool, processes: int):
    """The checkpoint to continue from (None: a fresh run), after every refusal that can
    be made before the model loads."""
    out = Path(cfg.out)
    if resume and cfg.model is None and (out / "config.json").exists():
        cfg.model = json.loads((out / "config.json").read_text()).get("model")
    if cfg.model is None:  # record which model "default" meant, for resume and export
        from ..loading import default_adapter

        cfg.model = "default" if default_adapter() else "default-base"
    if not resume:
        if not overwrite and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
            raise ConfigError(f"{out} already holds a run: continue it with --resume, or "
                              "replace it with --overwrite")
        return None
    ckpt = resume_point(out, "latest" if resume is True else resume)
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        check_resume(out, cfg, state["step"], processes, state.get("processes", 1))
        if (ckpt / "deepspeed").exists() and processes != state.get("processes", 1):
            raise ConfigError(f"{ckpt}: DeepSpeed's partitioned state resumes only on the "
                              f"{state['processes']} processes that wrote it")
    return ckpt


@dataclass
class StepData:
    """Which rows every micro-batch of a step holds: a function of (seed, step) alone, so a
    step covers the same rows with the same noise on any process count and accumulation
    that keep batch_size x grad_accum x processes."""

    rows: list[list]
    order: list[tuple[int, int]]
    pad: int
    mask_token_id: int
    world: int
    rank: int

    @classmethod
    def load(cls, cfg: AdaptConfig, lm, world: int, rank: int) -> "StepData":
        if cfg.seq_len > lm.context_length:
            raise ConfigError(f"seq_len={cfg.seq_len} is longer than the model's context "
                              f"({lm.context_length} positions); extend it with rope_scaling, "
                              f"e.g. \"yarn:{-(-cfg.seq_len // lm.context_length)}\"")
        sources = [parse_source(d) for d in cfg.data]
        rows = [load_rows(path, lm.tokenizer, cfg.seq_len, cfg.field, cfg.pack_documents)
                for path, _ in sources]
        per_step = cfg.grad_accum * cfg.batch_size * world
        order = plan([len(r) for r in rows], [w for _, w in sources], cfg.steps * per_step,
                     cfg.seed)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        return cls(rows, order, pad, lm.config.mask_token_id, world, rank)

    def micro_batches(self, cfg: AdaptConfig, step: int, block_size: int,
                      settings: ObjectiveSettings, device) -> list[NoisyBatch]:
        out = []
        for micro in range(cfg.grad_accum):
            first = ((step * cfg.grad_accum + micro) * self.world + self.rank) * cfg.batch_size
            picked = self.order[first:first + cfg.batch_size]
            ids, lengths, targets, offsets, docs = (
                None if t is None else t.to(device)
                for t in collate([self.rows[s][r] for s, r in picked], self.pad))
            gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + first + i)
                    for i in range(len(picked))]  # one per row: its noise is its own
            out.append(noise(ids, block_size, self.mask_token_id, settings, lengths=lengths,
                             loss_mask=targets, generator=gens, offsets=offsets,
                             draw_len=cfg.seq_len, docs=docs))
        return out


def train_step(module, acc, opt, sched, params, batches: list[NoisyBatch],
               settings: ObjectiveSettings, checkpoint: bool) -> tuple[torch.Tensor, float]:
    """One optimizer step. Each loss is normalised by the token counts of the whole step
    (every micro-batch of every process), so accumulation and processes give the gradient
    of one big batch. This is transformers' Trainer's num_items_in_batch; accelerate's
    `accumulate` would divide each micro-batch's own mean by the number of micro-batches.
    Gradients are reduced across processes on the last micro-batch only (no_sync before).
    Returns the step's metrics summed over processes [mdm_sum, n_masked, ar_sum, n_ar,
    n_correct, real tokens] and the gradient norm before clipping."""
    counts = torch.tensor([sum(b.counts[i] for b in batches) for i in (0, 1)],
                          dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        counts = acc.reduce(counts, "sum")
    n_masked, n_ar = int(counts[0]), int(counts[1])
    sums = torch.zeros(6, dtype=torch.float64)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else acc.no_sync(module):
            o = module(batch, settings, checkpoint)
            # DDP and FSDP average gradients over processes: * processes makes it a sum
            acc.backward(o.total(n_masked, n_ar) * acc.num_processes)
        tokens = batch.lengths[batch.ar_rows].sum()  # complementary copies not twice
        sums += torch.tensor([o.mdm_sum.item(), o.n_masked, o.ar_sum.item(), o.n_ar,
                              o.n_correct, tokens.item()], dtype=torch.float64)
    norm = acc.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if acc.num_processes > 1:
        sums = acc.reduce(sums.to(acc.device), "sum").cpu()
    return sums, float(norm)


def _metrics_record(step: int, b: int, sums: torch.Tensor, seen: int, norm: float, lr: float,
                    seconds: float, ar_weight: float) -> dict:
    mdm, ar = float(sums[0] / max(1, sums[1])), float(sums[2] / max(1, sums[3]))
    return {"step": step + 1, "block_size": b, "loss": mdm + ar_weight * ar, "mdm_loss": mdm,
            "ar_loss": ar, "masked_acc": float(sums[4] / max(1, sums[1])),
            "n_masked": int(sums[1]), "grad_norm": norm, "lr": lr,
            "tokens_per_s": float(sums[5]) / seconds, "tokens_seen": seen}


class RunLog:
    """metrics.jsonl (cut back to the step a resumed run continues from), config.json, and
    the progress: rich's bar in a terminal, one plain line per step otherwise."""

    def __init__(self, out: Path, cfg: AdaptConfig, start: int, main: bool, progress: bool):
        self.path, self.main = out / "metrics.jsonl", main
        self.show, self.seen = progress and main, 0
        if main:
            out.mkdir(parents=True, exist_ok=True)
            kept = [ln for ln in self.path.read_text().splitlines()
                    if json.loads(ln)["step"] <= start] if self.path.exists() else []
            self.path.write_text("".join(ln + "\n" for ln in kept))
            (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            # real (unpadded) tokens so far, for learning curves
            self.seen = json.loads(kept[-1]).get("tokens_seen", 0) if kept else 0
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.use_bar = self.show and sys.stdout.isatty()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                            disable=not self.use_bar)
        self.task = self.bar.add_task("adapt", total=cfg.steps, completed=start)

    def write(self, rec: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.bar.update(self.task, advance=1, description=_log_line(rec))
        if self.show and not self.use_bar:
            print(_log_line(rec), flush=True)


def adapt(cfg: AdaptConfig, resume: bool | str = False, progress: bool = True,
          stop_at: int | None = None, overwrite: bool = False) -> list[dict]:
    """Run (or resume) an adaptation; returns this call's metrics records. `stop_at` ends
    the call after that step, as an interruption would (the schedule still plans
    cfg.steps; a resumed run continues from the last checkpoint exactly). `resume`: True or
    "latest", or "previous" (the checkpoint before a corrupt latest one). An existing run
    in cfg.out is never overwritten unless `overwrite`."""
    from ..loading import load

    cfg.validated()
    out = Path(cfg.out)
    acc = make_accelerator(cfg)
    world = acc.num_processes
    ckpt = _resume_checkpoint(cfg, resume, overwrite, world)
    lm = load(cfg.model, dtype="float32")  # trained in float32; the engine is for inference
    torch.manual_seed(cfg.seed)
    module = build_model(cfg, lm)
    data = StepData.load(cfg, lm, world, acc.process_index)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = make_schedule(cfg, opt)
    module, opt = acc.prepare(module, opt)
    inner = acc.unwrap_model(module)  # FSDP2 shards in place: the same module
    shard_layer_calls(inner.model)
    params = [p for p in module.parameters() if p.requires_grad]  # FSDP: the sharded ones
    raw_opt = getattr(opt, "optimizer", opt)
    mode = parallelism(acc, module)
    ds = (acc, module) if mode == "deepspeed" else None
    start = load_checkpoint(ckpt, inner, raw_opt, sched, ds)["step"] if ckpt is not None else 0
    log = RunLog(out, cfg, start, acc.is_main_process, progress)
    if acc.is_main_process and progress:
        print(f"adapt: {world} process(es), {mode}; "
              f"{cfg.batch_size * cfg.grad_accum * world} rows of up to {cfg.seq_len} "
              f"tokens a step ({cfg.batch_size} x {cfg.grad_accum} accumulated x {world})",
              file=sys.stderr)
    curriculum, settings = cfg.curriculum(), cfg.objective_settings()
    records = []
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    with log.bar:
        for step in range(start, end):
            t0, b = time.perf_counter(), curriculum.block_size(step)
            batches = data.micro_batches(cfg, step, b, settings, acc.device)
            sums, norm = train_step(module, acc, opt, sched, params, batches, settings,
                                    cfg.grad_checkpointing)
            log.seen += int(sums[5])
            rec = _metrics_record(step, b, sums, log.seen, norm, sched.get_last_lr()[0],
                                  time.perf_counter() - t0, cfg.ar_weight)
            records.append(rec)
            log.write(rec)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(out, step + 1, inner, raw_opt, sched, cfg,
                                {"block_size": b, "processes": world, "parallelism": mode,
                                 "trained_block_sizes":
                                 [size for _, size in curriculum.stages(step + 1)]},
                                main=acc.is_main_process, deepspeed=ds)
            acc.wait_for_everyone()
    if acc.is_main_process and end == cfg.steps:
        plot_metrics(out)
    return records


def _read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def plot_metrics(out: str | os.PathLike) -> Path:
    """loss.png beside metrics.jsonl: L_MDM, L_AR, masked accuracy; block-size steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = _read_metrics(Path(out))
    if not recs:
        raise ConfigError(f"{out}: no metrics.jsonl to plot")
    steps = [r["step"] for r in recs]
    nan = float("nan")  # steps without masked tokens (block size 1) have no MDM values
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax.plot(steps, [r["mdm_loss"] if r["n_masked"] else nan for r in recs], label="L_MDM")
    ax.plot(steps, [r["ar_loss"] for r in recs], label="L_AR")
    ax2.plot(steps, [r["masked_acc"] if r["n_masked"] else nan for r in recs],
             color="tab:green", label="masked acc")
    for prev, r in zip(recs, recs[1:]):
        if r["block_size"] != prev["block_size"]:
            for a in (ax, ax2):
                a.axvline(r["step"], color="grey", ls="--", lw=0.8)
            ax.text(r["step"], ax.get_ylim()[1], f" b={r['block_size']}", va="top", fontsize=8)
    ax.set_ylabel("loss")
    ax.legend()
    ax2.set_ylabel("masked-token accuracy")
    ax2.set_xlabel("step")
    fig.tight_layout()
    path = Path(out) / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
