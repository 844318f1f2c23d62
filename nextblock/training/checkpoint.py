"""Training checkpoints: written atomically, holding the full (gathered) state, so a run
resumes on any number of processes and `nextblock export` reads it without a process group.

    checkpoints/step-0000400/trainable.safetensors   trainable weights by parameter name
    checkpoints/step-0000400/optimizer.safetensors   optimizer state, "<param name>/<key>"
    checkpoints/step-0000400/state.json              step, config, scheduler, param groups
    checkpoints/latest                               the name of the newest complete one

The state comes from torch.distributed.checkpoint's `get_model_state_dict` /
`get_optimizer_state_dict` with `full_state_dict=True`, which gather FSDP shards (DTensors)
and unwrap DDP; the same calls on a plain module are plain state dicts. Under FSDP they are
collectives: every process calls `save_checkpoint` and `load_checkpoint`, the main process
writes. Every process reads the files (several machines need `--out` on a shared disk).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..errors import ConfigError

FORMAT = 2  # 1: optimizer state by parameter index (one process only), before FSDP support
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(module: torch.nn.Module, opt) -> tuple[dict, dict]:
    """Full trainable weights and optimizer state on the CPU (complete in the main process;
    a collective under FSDP). Tied weights appear once, under their first name."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    weights = {k: v.detach().cpu().contiguous()
               for k, v in get_model_state_dict(module, options=_FULL).items() if k in names}
    osd = get_optimizer_state_dict(module, opt, options=_FULL)
    tensors = {f"{name}/{k}": v.detach().cpu().contiguous()  # other processes: empty
               for name, st in osd.get("state", {}).items() for k, v in st.items()
               if torch.is_tensor(v)}
    return weights, {"tensors": tensors, "param_groups": osd.get("param_groups", [])}


def save_checkpoint(out: Path, step: int, module, opt, sched, cfg, extra: dict,
                    main: bool = True, deepspeed=None) -> Path:
    """Write checkpoints/step-N atomically and point `latest` at it; keep the newest cfg.keep.
    Every process calls it (gathering is collective); only `main` writes the files.
    `deepspeed`: (accelerator, engine) under DeepSpeed, whose partitioned optimizer only
    DeepSpeed can save (accelerate's save_state, into deepspeed/; the weights are gathered
    by accelerate's get_state_dict). UNTESTED: no GPU on this project's machines."""
    root = out / "checkpoints"
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    if deepspeed is None:
        weights, optim = gather_state(module, opt)
    else:
        acc, engine = deepspeed
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        weights = {k: v.cpu().contiguous() for k, v in acc.get_state_dict(engine).items()
                   if k in names}
        optim = {"tensors": {}, "param_groups": []}
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if deepspeed is not None:
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "deepspeed"))
        acc.wait_for_everyone()
    if not main:
        return final
    save_file(weights, tmp / "trainable.safetensors")
    save_file(optim["tensors"], tmp / "optimizer.safetensors")
    state = {"format": FORMAT, "step": step, "config": dataclasses.asdict(cfg),
             "scheduler": sched.state_dict(), "optimizer": {"param_groups": optim["param_groups"]},
             **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in sorted(root.glob("step-*"))[:-cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(weights, optimizer tensors, state) of a checkpoint directory, or a ConfigError."""
    try:
        weights = load_file(path / "trainable.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
        state = json.loads((path / "state.json").read_text())
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: corrupt checkpoint ({str(e).splitlines()[0]})") from None
    if state.get("format") != FORMAT:
        raise ConfigError(f"{path}: written by an older nextblock (checkpoint format "
                          f"{state.get('format', 1)}, this one reads {FORMAT}); export or "
                          "resume it with the version that wrote it")
    return weights, opt_tensors, state


def load_checkpoint(path: Path, module, opt, sched, deepspeed=None) -> dict:
    """Restore weights, optimizer and scheduler into a (possibly wrapped) module; every
    process calls it. Returns the stored state. `deepspeed`: as in save_checkpoint."""
    weights, opt_tensors, state = read_checkpoint(path)
    written_by_deepspeed = (path / "deepspeed").exists()
    if written_by_deepspeed != (deepspeed is not None):
        how = "with" if written_by_deepspeed else "without"
        raise ConfigError(f"{path}: written {how} DeepSpeed; resume it under the kind of "
                          "launch config that wrote it")
    if deepspeed is not None:
        deepspeed[0].load_state(str(path / "deepspeed"))
        sched.load_state_dict(state["scheduler"])
        return state
    params = {n for n, _ in module.named_parameters()}
    missing = [n for n in weights if n not in params]
    if missing:
        raise ConfigError(f"{path}: checkpoint does not match the model ({missing[0]})")
    set_model_state_dict(module, weights, options=StateDictOptions(full_state_dict=True,
                                                                   strict=False))
    osd = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    for key, t in opt_tensors.items():
        name, k = key.rsplit("/", 1)
        osd["state"].setdefault(name, {})[k] = t
    set_optimizer_state_dict(module, opt, osd, options=StateDictOptions(full_state_dict=True))
    sched.load_state_dict(state["scheduler"])
    return state


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").exists():
        raise ConfigError(f"{pointer} points to {path}, which is not a complete checkpoint")
    return path


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


# settings a resumed run may change: they alter neither the data order, the noise, the
# model nor the optimizer state (steps: the schedule is re-planned, and said so)
RESUMABLE_CHANGES = {"steps", "save_every", "keep", "out"}
# ... and these two, as long as the global batch (batch_size x grad_accum x processes) stays:
# the step then covers the same rows with the same noise, split another way
BATCH_SPLIT = ("batch_size", "grad_accum")


def check_resume(out: Path, cfg, step: int, processes: int, stored_processes: int) -> None:
    """Refuse a resumption whose settings differ from the stored run's in a way that breaks
    exact continuation; name every such field."""
    path = out / "config.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    now = dataclasses.asdict(cfg)
    same_batch = (cfg.batch_size * cfg.grad_accum * processes
                  == stored.get("batch_size", 0) * stored.get("grad_accum", 0) * stored_processes)
    free = RESUMABLE_CHANGES | (set(BATCH_SPLIT) if same_batch else set())
    changed = sorted(k for k in now if k in stored and stored[k] != now[k] and k not in free)
    if not same_batch and processes != stored_processes and not changed:
        changed = list(BATCH_SPLIT)
    if changed:
        diffs = ", ".join(f"{k} {stored.get(k)!r} -> {now[k]!r}" for k in changed)
        if processes != stored_processes:
            diffs += f", processes {stored_processes} -> {processes}"
        raise ConfigError(f"--resume: {out} was trained with other settings ({diffs}); an "
                          "exact continuation needs the same ones (only steps, save_every "
                          "and keep may change, and batch_size / grad_accum when batch_size x "
                          "grad_accum x processes stays the same); start a new --out to train "
                          "differently")
    if cfg.steps < step:
        raise ConfigError(f"--resume: steps={cfg.steps} is below the checkpoint's step {step}")
    if cfg.steps != stored.get("steps"):
        print(f"note: steps {stored.get('steps')} -> {cfg.steps}: the {cfg.schedule} "
              f"schedule is re-planned over {cfg.steps} steps from step {step}",
              file=sys.stderr)
