"""Continued training of an AR model into a context-causal block-diffusion model.

    nextblock adapt --data chat.jsonl --out runs/a --steps 400 --lora-r 16
    accelerate launch --num_processes 2 -m nextblock.cli adapt ...   # several processes

`accelerate` runs it on one or many processes (DDP; FSDP through an accelerate config).
Every `save_every` steps a checkpoint is written atomically (a temporary directory, then a
rename, then the `latest` pointer): trainable weights and optimizer state as safetensors,
scheduler and step in JSON. The data order and the noise are functions of (seed, step), so
`--resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from .curriculum import BlockCurriculum
from .data import collate, load_rows, parse_source, plan
from .objective import ObjectiveSettings, noise, objective

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AdaptConfig:
    data: list[str] = field(default_factory=list)  # "path" or "path:weight"
    out: str = "runs/adapt"
    model: str | None = None
    field: str | None = None  # record field (default: messages, else text)
    seq_len: int = 256
    batch_size: int = 2  # per process and micro-batch
    grad_accum: int = 1
    steps: int = 400
    lr: float = 1e-4
    warmup: int = 20
    schedule: str = "cosine"  # cosine | wsd (constant, then linear decay over the last 20%)
    weight_decay: float = 0.0
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: int = 32
    init_adapter: str | None = None  # start LoRA + mask embedding from an exported adapter
    block_max: int = 4  # curriculum b(s) = min(b_max, b0 * r^floor(max(0, s - s0) / D))
    block_start: int = 1  # b0
    block_ratio: int = 2  # r
    block_warmup: int = 0  # s0
    block_stage_steps: int | None = None  # D; None: so that growth ends at block_growth_end
    block_growth_end: float = 0.6  # fraction of the run where the last block size starts
    ar_weight: float = 0.5
    training_mask: str = "context_causal"  # or "block_causal" (ablation; ar_weight 0)
    mask_schedule: str = "block"
    inverse_t_weight: bool = False
    complementary: bool = False
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights stay fp32)
    grad_checkpointing: bool = False
    # long context: RoPE scaling for positions beyond the base window ("yarn:4" or a dict of
    # RoPE parameters), text rows packed with document boundaries, attention path
    rope_scaling: str | dict | None = None
    pack_documents: bool = False
    attention: str = "auto"  # auto | dense | chunked (see training.objective)
    attention_chunk: int = 512
    seed: int = 0
    save_every: int = 50
    keep: int = 2

    def validated(self) -> "AdaptConfig":
        if not self.data:
            raise ConfigError("no training data: give --data PATH[:WEIGHT] at least once")
        for name in ("seq_len", "batch_size", "grad_accum", "steps", "save_every", "keep",
                     "block_max", "block_start"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"invalid {name}={v!r}: must be an integer >= 1")
        if self.seq_len < self.block_max:
            raise ConfigError(f"seq_len={self.seq_len} is smaller than the block size "
                              f"{self.block_max}")
        if self.schedule not in ("cosine", "wsd"):
            raise ConfigError(f"invalid schedule={self.schedule!r}: cosine or wsd")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"invalid precision={self.precision!r}: fp32 or bf16")
        if self.attention not in ("auto", "dense", "chunked"):
            raise ConfigError(f"invalid attention={self.attention!r}: auto, dense or chunked")
        if self.attention_chunk < 1:
            raise ConfigError(f"invalid attention_chunk={self.attention_chunk!r}: must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"invalid lr={self.lr!r}: must be > 0")
        self.objective_settings()  # ar_weight, training_mask, ... checked where defined
        for spec in self.data:  # before the model loads: a typo should not cost a minute
            path, _ = parse_source(spec)
            if not Path(path).exists():
                raise ConfigError(f"data: {path} does not exist")
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "AdaptConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        for k, v in d.items():
            _check_type(cls, k, v, str(path))
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)

    def curriculum(self) -> BlockCurriculum:
        if self.block_stage_steps is not None:
            return BlockCurriculum(b0=self.block_start, r=self.block_ratio, b_max=self.block_max,
                                   s0=self.block_warmup, D=self.block_stage_steps)
        return BlockCurriculum.for_run(self.steps, b_max=self.block_max, b0=self.block_start,
                                       r=self.block_ratio, s0=self.block_warmup,
                                       end_fraction=self.block_growth_end)

    def objective_settings(self) -> ObjectiveSettings:
        return ObjectiveSettings(ar_weight=self.ar_weight, mask_schedule=self.mask_schedule,
                                 inverse_t_weight=self.inverse_t_weight,
                                 complementary=self.complementary, attention=self.attention,
                                 attention_chunk=self.attention_chunk,
                                 training_mask=self.training_mask)


def _matches(v, tp) -> bool:
    """isinstance for the annotations AdaptConfig uses (int, float, str, bool, list[str],
    dict, unions with None); an int is a float, a bool is not an int."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, t) for t in typing.get_args(tp))
    if tp is type(None):
        return v is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(v, list) and all(_matches(x, item) for x in v)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, origin or tp)


def _check_type(cls, name: str, value, where: str) -> None:
    tp = typing.get_type_hints(cls)[name]
    if not _matches(value, tp):
        want = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        raise ConfigError(f"{where}: {name}={value!r} has the wrong type: expected {want}")


class MaskEmbedding(torch.nn.Module):
    """A trainable embedding for the mask token alone, used when the embedding table is
    frozen (LoRA): a forward hook puts it wherever the input is the mask token."""

    def __init__(self, embed: torch.nn.Embedding, mask_token_id: int):
        super().__init__()
        self.mask_token_id = mask_token_id
        self.weight = torch.nn.Parameter(embed.weight[mask_token_id].detach().clone())
        embed.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        is_mask = (args[0] == self.mask_token_id).unsqueeze(-1)
        return torch.where(is_mask, self.weight.to(out.dtype), out)


class TrainingModule(torch.nn.Module):
    """model + objective in one forward, so DDP/FSDP wrappers see the whole computation."""

    def __init__(self, model, mask_token_id: int, lora: bool):
        super().__init__()
        self.model = model
        self.mask_token_id = mask_token_id
        self.mask_embedding = (MaskEmbedding(model.get_input_embeddings(), mask_token_id)
                               if lora else None)

    def forward(self, ids, lengths, targets, offsets, docs, block_size: int, seeds: list[int],
                settings: ObjectiveSettings, draw_len: int, checkpoint: bool = False):
        gens = [torch.Generator().manual_seed(s) for s in seeds]  # one per row
        batch = noise(ids, block_size, self.mask_token_id, settings, lengths=lengths,
                      loss_mask=targets, generator=gens, offsets=offsets, draw_len=draw_len,
                      docs=docs)
        return objective(self.model, batch, settings, checkpoint)


def build_model(cfg: AdaptConfig, lm):
    """The trainable module: LoRA adapters (+ mask embedding) or the full model, with the
    run's RoPE scaling applied to the base model first."""
    if cfg.rope_scaling is not None:
        from ..loading import parse_rope_scaling, set_rope_scaling

        set_rope_scaling(lm.model, parse_rope_scaling(cfg.rope_scaling))
    model = lm.model
    model.train()
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=0.0, target_modules=LORA_TARGETS))
    module = TrainingModule(model, lm.config.mask_token_id, lora=bool(cfg.lora_r))
    if cfg.init_adapter:
        _init_from_adapter(module, Path(cfg.init_adapter))
    return module


def _init_from_adapter(module: TrainingModule, directory: Path) -> None:
    """Continue from an adapter that `nextblock export --adapter` wrote (same rank)."""
    from peft import set_peft_model_state_dict

    from .export import MASK_EMBEDDING_FILE

    if module.mask_embedding is None:
        raise ConfigError("init_adapter needs LoRA training (lora_r > 0)")
    try:
        weights = load_file(directory / "adapter_model.safetensors")
        mask = load_file(directory / MASK_EMBEDDING_FILE)["mask_embedding"]
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"init_adapter {directory}: not a nextblock adapter "
                          f"({str(e).splitlines()[0]})") from None
    own = module.model.state_dict()
    for k, v in weights.items():  # peft stores names without the adapter name
        name = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        if name in own and own[name].shape != v.shape:
            raise ConfigError(f"init_adapter {directory}: {k} has shape {tuple(v.shape)}, "
                              f"this run's LoRA expects {tuple(own[name].shape)} (lora_r?)")
    result = set_peft_model_state_dict(module.model, {k: v.float() for k, v in weights.items()})
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"init_adapter {directory}: unexpected weights "
                          f"{result.unexpected_keys[0]}")
    with torch.no_grad():
        module.mask_embedding.weight.copy_(mask.float())


def lr_lambda(cfg: AdaptConfig):
    def f(step):
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        decay_start = int(cfg.steps * 0.8)
        if step < decay_start:
            return 1.0
        return max(0.0, 1 - (step - decay_start) / max(1, cfg.steps - decay_start))
    return f


# ---- checkpoints -----------------------------------------------------------------------

def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters()
            if p.requires_grad}


def _optimizer_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in sd["state"].items()
               for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(out: Path, step: int, module, opt, sched, cfg, extra: dict) -> Path:
    """Write checkpoints/step-N atomically and point `latest` at it; keep the newest cfg.keep."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(module), tmp / "trainable.safetensors")
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    state = {"step": step, "config": dataclasses.asdict(cfg), "scheduler": sched.state_dict(),
             "optimizer": opt_meta, **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in sorted(root.glob("step-*"))[:-cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").exists():
        raise ConfigError(f"{pointer} points to {path}, which is not a complete checkpoint")
    return path


# settings a resumed run may change: they alter neither the data order, the noise, the
# model nor the optimizer state (steps: the schedule is re-planned, and said so)
RESUMABLE_CHANGES = {"steps", "save_every", "keep", "out"}


def check_resume(out: Path, cfg: AdaptConfig, step: int) -> None:
    """Refuse a resumption whose settings differ from the stored run's in a way that breaks
    exact continuation; name every such field."""
    path = out / "config.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    now = dataclasses.asdict(cfg)
    changed = sorted(k for k in now if k in stored and stored[k] != now[k]
                     and k not in RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k} {stored[k]!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"--resume: {out} was trained with other settings ({diffs}); an "
                          "exact continuation needs the same ones (only steps, save_every "
                          "and keep may change); start a new --out to train differently")
    if cfg.steps < step:
        raise ConfigError(f"--resume: steps={cfg.steps} is below the checkpoint's step {step}")
    if cfg.steps != stored.get("steps"):
        print(f"note: steps {stored.get('steps')} -> {cfg.steps}: the {cfg.schedule} "
              f"schedule is re-planned over {cfg.steps} steps from step {step}",
              file=sys.stderr)


def previous_checkpoint(out: Path, broken: Path) -> Path | None:
    older = [p for p in sorted((Path(out) / "checkpoints").glob("step-*")) if p < broken]
    return older[-1] if older else None


def resume_point(out: Path, which: str) -> Path | None:
    """The checkpoint `--resume [latest|previous]` continues from. A broken latest one is
    named, with the intact one before it offered, never used silently."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    broken = _broken_file(ckpt)
    if broken is None and which == "latest":
        return ckpt
    prev = previous_checkpoint(out, ckpt)
    if which == "previous":
        if prev is None or _broken_file(prev) is not None:
            raise ConfigError(f"--resume previous: no intact checkpoint before {ckpt.name}")
        print(f"note: resuming from {prev.name}, the checkpoint before {ckpt.name}",
              file=sys.stderr)
        return prev
    hint = (f"; `--resume previous` continues from {prev.name}" if prev is not None
            and _broken_file(prev) is None else "; no intact checkpoint before it")
    raise ConfigError(f"{broken}: the latest checkpoint is corrupt{hint}")


def _broken_file(ckpt: Path) -> Path | None:
    """The first file of a checkpoint that cannot be read, or None."""
    from safetensors import safe_open
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        try:
            with safe_open(str(ckpt / name), "pt"):  # checks header and file length
                pass
        except Exception:  # noqa: BLE001 - any reason it cannot be read
            return ckpt / name
    try:
        json.loads((ckpt / "state.json").read_text())["step"]
    except Exception:  # noqa: BLE001
        return ckpt / "state.json"
    return None


def load_checkpoint(path: Path, module, opt, sched) -> dict:
    try:
        weights = load_file(path / "trainable.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
        state = json.loads((path / "state.json").read_text())
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
    params = dict(module.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigError(f"{path}: checkpoint does not match the model ({missing[0]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    sd = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    for key, t in opt_tensors.items():
        i, k = key.split(".", 1)
        sd["state"].setdefault(int(i), {})[k] = t
    opt.load_state_dict(sd)
    sched.load_state_dict(state["scheduler"])
    return state


# ---- the loop --------------------------------------------------------------------------

def _log_line(m: dict) -> str:
    return (f"step {m['step']:>6} | b {m['block_size']:>2} | loss {m['loss']:.4f} | "
            f"mdm {m['mdm_loss']:.4f} | ar {m['ar_loss']:.4f} | acc {m['masked_acc']:.3f} | "
            f"lr {m['lr']:.2e} | {m['tokens_per_s']:.0f} tok/s")


def adapt(cfg: AdaptConfig, resume: bool | str = False, progress: bool = True,
          stop_at: int | None = None, overwrite: bool = False) -> list[dict]:
    """Run (or resume) an adaptation; returns this call's metrics records. `stop_at` ends
    the call after that step, as an interruption would (the schedule still plans
    cfg.steps; a resumed run continues from the last checkpoint exactly). `resume`: True or
    "latest", or "previous" (the checkpoint before a corrupt latest one). An existing run
    in cfg.out is never overwritten unless `overwrite`."""
    from accelerate import Accelerator
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..loading import default_adapter, load

    cfg.validated()
    out = Path(cfg.out)
    if resume and cfg.model is None and (out / "config.json").exists():
        cfg.model = json.loads((out / "config.json").read_text()).get("model")
    if cfg.model is None:  # record which model "default" meant, for resume and export
        cfg.model = "default" if default_adapter() else "default-base"
    ckpt = None
    if resume:
        ckpt = resume_point(out, "latest" if resume is True else resume)
        if ckpt is not None:
            check_resume(out, cfg, json.loads((ckpt / "state.json").read_text())["step"])
    elif not overwrite and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise ConfigError(f"{out} already holds a run: continue it with --resume, or replace "
                          "it with --overwrite")
    acc = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                      cpu=not torch.cuda.is_available())
    lm = load(cfg.model, dtype="float32")  # trained in float32; the engine is for inference
    torch.manual_seed(cfg.seed)
    module = build_model(cfg, lm)
    if cfg.seq_len > lm.context_length:
        raise ConfigError(f"seq_len={cfg.seq_len} is longer than the model's context "
                          f"({lm.context_length} positions); extend it with rope_scaling, "
                          f"e.g. \"yarn:{-(-cfg.seq_len // lm.context_length)}\"")
    sources = [parse_source(d) for d in cfg.data]
    rows = [load_rows(path, lm.tokenizer, cfg.seq_len, cfg.field, cfg.pack_documents)
            for path, _ in sources]
    world, rank = acc.num_processes, acc.process_index
    per_step = cfg.grad_accum * cfg.batch_size * world
    order = plan([len(r) for r in rows], [w for _, w in sources], cfg.steps * per_step, cfg.seed)

    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start = 0
    if ckpt is not None:
        start = load_checkpoint(ckpt, module, opt, sched)["step"]
    module, opt = acc.prepare(module, opt)
    inner = acc.unwrap_model(module)

    metrics_path = out / "metrics.jsonl"
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        kept = [ln for ln in metrics_path.read_text().splitlines()
                if json.loads(ln)["step"] <= start] if metrics_path.exists() else []
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    # real (unpadded) tokens of every step so far, for learning curves; a resumed run
    # continues the count from its metrics
    seen = json.loads(kept[-1]).get("tokens_seen", 0) if acc.is_main_process and kept else 0
    curriculum, settings = cfg.curriculum(), cfg.objective_settings()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    records = []
    show = progress and acc.is_main_process
    use_bar = show and sys.stdout.isatty()  # else (logs, CI): one plain line per step
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                   disable=not use_bar)
    task = bar.add_task("adapt", total=cfg.steps, completed=start)
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    with bar:
        for step in range(start, end):
            t0, b = time.perf_counter(), curriculum.block_size(step)
            sums = torch.zeros(5)  # mdm_sum, n_masked, ar_sum, n_ar, n_correct
            tokens = 0
            for micro in range(cfg.grad_accum):
                first = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
                picked = order[first:first + cfg.batch_size]
                ids, lengths, targets, offsets, docs = collate(
                    [rows[s][r] for s, r in picked], pad)
                seeds = [cfg.seed * 1_000_003 + first + i for i in range(len(picked))]
                o = module(ids.to(acc.device), lengths.to(acc.device), targets.to(acc.device),
                           offsets.to(acc.device), None if docs is None else docs.to(acc.device),
                           b, seeds, settings, cfg.seq_len, cfg.grad_checkpointing)
                counts = torch.tensor([o.n_masked, o.n_ar], dtype=torch.float64,
                                      device=acc.device)
                counts = acc.reduce(counts, "sum") if world > 1 else counts
                loss = o.total(int(counts[0]), int(counts[1])) * world / cfg.grad_accum
                acc.backward(loss)
                sums += torch.tensor([o.mdm_sum.item(), o.n_masked, o.ar_sum.item(), o.n_ar,
                                      o.n_correct])
                tokens += int(lengths.sum())
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                sums = acc.reduce(sums.to(acc.device), "sum").cpu()
                tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), "sum"))
            mdm = float(sums[0] / max(1, sums[1]))
            ar = float(sums[2] / max(1, sums[3]))
            seen += tokens
            rec = {"step": step + 1, "block_size": b, "loss": mdm + cfg.ar_weight * ar,
                   "mdm_loss": mdm, "ar_loss": ar, "masked_acc": float(sums[4] / max(1, sums[1])),
                   "n_masked": int(sums[1]), "lr": sched.get_last_lr()[0],
                   "tokens_per_s": tokens / (time.perf_counter() - t0), "tokens_seen": seen}
            records.append(rec)
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.update(task, advance=1, description=_log_line(rec))
                if show and not use_bar:
                    print(_log_line(rec), flush=True)
                if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                    save_checkpoint(out, step + 1, inner, opt, sched, cfg,
                                    {"block_size": b, "trained_block_sizes":
                                     [size for _, size in curriculum.stages(step + 1)]})
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
