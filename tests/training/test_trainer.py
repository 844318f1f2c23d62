"""The adaptation loop: exact resume (full and LoRA), atomic checkpoints, data errors,
and the metrics / plot report."""

import json

import pytest
import torch

from nextblock.errors import ConfigError
from nextblock.training import checkpoint as ck
from nextblock.training import trainer as tr
from nextblock.training.data import DataError
from nextblock.training.trainer import AdaptConfig, adapt
from tests.helpers import save_tiny


def write_chat(path, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(f"w{i}" for i in torch.randint(4, 40, (5,), generator=g).tolist())
            a = " ".join(f"w{i}" for i in torch.randint(4, 40, (11,), generator=g).tolist())
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    return str(save_tiny(d / "tiny")), str(write_chat(d / "chat.jsonl")), d


def config(setup, out, **kw):
    model, data, d = setup
    base = dict(model=model, data=[data], out=str(d / out), seq_len=32, batch_size=2,
                steps=6, save_every=2, lr=3e-3, warmup=2, block_max=4)
    base.update(kw)
    return AdaptConfig(**base)


@pytest.mark.parametrize("lora", [0, 4])
def test_interrupted_and_resumed_run_matches_uninterrupted(setup, lora):
    full = adapt(config(setup, f"full{lora}", lora_r=lora), progress=False)
    assert [r["block_size"] for r in full] == [1, 2, 4, 4, 4, 4]  # 1 -> 4 by 60% of 6 steps
    part = adapt(config(setup, f"part{lora}", lora_r=lora), progress=False, stop_at=3)
    assert len(part) == 3  # "killed" after step 3: the newest checkpoint is step 2
    rest = adapt(config(setup, f"part{lora}", lora_r=lora), progress=False, resume=True)
    assert [r["step"] for r in rest] == [3, 4, 5, 6]
    for a, b in zip(full[2:], rest):
        for key in ("loss", "mdm_loss", "ar_loss", "masked_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
        assert a["tokens_seen"] == b["tokens_seen"]  # the count goes on across the resume
    assert full[-1]["tokens_seen"] > full[0]["tokens_seen"] > 0
    lines = (setup[2] / f"part{lora}" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4, 5, 6]
    assert (setup[2] / f"part{lora}" / "loss.png").stat().st_size > 1000


def test_interrupted_checkpoint_write_keeps_the_previous_one(setup, monkeypatch):
    cfg = config(setup, "atomic", steps=4)
    adapt(cfg, progress=False, stop_at=2)
    ckpt = ck.latest_checkpoint(cfg.out)
    assert ckpt.name == "step-0000002"
    real = ck.save_file

    def dies_half_way(tensors, path):
        if path.name == "optimizer.safetensors":
            real(dict(list(tensors.items())[:1]), path)
            raise KeyboardInterrupt("killed while writing")
        real(tensors, path)

    monkeypatch.setattr(ck, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        adapt(cfg, progress=False, resume=True)
    monkeypatch.setattr(ck, "save_file", real)
    assert ck.latest_checkpoint(cfg.out) == ckpt  # the pointer still names step 2
    rest = adapt(cfg, progress=False, resume=True)
    assert [r["step"] for r in rest] == [3, 4]


def test_corrupt_checkpoint_is_reported(setup):
    cfg = config(setup, "corrupt", steps=2)
    adapt(cfg, progress=False)
    f = ck.latest_checkpoint(cfg.out) / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ConfigError, match="optimizer.safetensors: the latest checkpoint is "
                       "corrupt; no intact"):
        adapt(cfg, progress=False, resume=True)


def test_corrupt_latest_checkpoint_offers_the_previous_one(setup):
    cfg = config(setup, "corrupt2", steps=4, keep=3)
    full = adapt(config(setup, "corrupt2_ref", steps=4, keep=3), progress=False)
    adapt(cfg, progress=False)
    f = ck.latest_checkpoint(cfg.out) / "trainable.safetensors"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(ConfigError, match="step-0000004/trainable.safetensors.*"
                       "`--resume previous` continues from step-0000002"):
        adapt(cfg, progress=False, resume=True)
    rest = adapt(cfg, progress=False, resume="previous")
    assert [r["step"] for r in rest] == [3, 4]
    assert rest[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-6)


def test_rerun_into_an_existing_run_is_refused_without_overwrite(setup):
    cfg = config(setup, "again", steps=2)
    adapt(cfg, progress=False)
    before = (setup[2] / "again" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        adapt(config(setup, "again", steps=2), progress=False)
    assert (setup[2] / "again" / "metrics.jsonl").read_text() == before
    assert len(adapt(config(setup, "again", steps=2), progress=False, overwrite=True)) == 2


@pytest.mark.parametrize("change,fields", [
    (dict(lr=1e-3), "lr 0.003 -> 0.001"),
    (dict(seq_len=24), "seq_len 32 -> 24"),
    (dict(lora_r=8), "lora_r 4 -> 8"),
    (dict(lr=1e-3, seed=5), "lr .*seed 0 -> 5"),
])
def test_resume_refuses_a_changed_setting_naming_it(setup, change, fields):
    out = "changed-" + "-".join(change)
    adapt(config(setup, out, steps=4, lora_r=4), progress=False, stop_at=2)
    stored = (setup[2] / out / "config.json").read_text()
    with pytest.raises(ConfigError, match=f"--resume: .*{fields}"):
        adapt(config(setup, out, steps=4, **{"lora_r": 4, **change}), progress=False,
              resume=True)
    assert (setup[2] / out / "config.json").read_text() == stored


def test_resume_with_more_steps_is_allowed_and_said(setup, capsys):
    adapt(config(setup, "longer", steps=2), progress=False)
    rest = adapt(config(setup, "longer", steps=4), progress=False, resume=True)
    assert [r["step"] for r in rest] == [3, 4]
    assert "steps 2 -> 4" in capsys.readouterr().err


def test_config_file_types_are_checked_before_anything_runs(tmp_path):
    bad = tmp_path / "c.json"
    for body, needle in [({"data": "/"}, "data='/' has the wrong type"),
                         ({"data": ["x"], "lr": "1e-4"}, "lr='1e-4' has the wrong type"),
                         ({"data": ["x"], "steps": 2.5}, "steps=2.5 has the wrong type"),
                         ({"data": ["x"], "complementary": 1}, "complementary=1")]:
        bad.write_text(json.dumps(body))
        with pytest.raises(ConfigError, match=needle):
            AdaptConfig.from_file(bad)
    bad.write_text(json.dumps({"data": [str(tmp_path / "missing.jsonl")], "lr": 1}))
    with pytest.raises(ConfigError, match="missing.jsonl does not exist"):
        AdaptConfig.from_file(bad).validated()


def test_bad_inputs(setup, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files"):
        adapt(config(setup, "e1", data=[str(tmp_path / "empty")]), progress=False)
    lonely = tmp_path / "noassist.jsonl"
    lonely.write_text(json.dumps({"messages": [{"role": "user", "content": "w1"}]}) + "\n")
    with pytest.raises(DataError, match="conversation 0 has no assistant turn"):
        adapt(config(setup, "e2", data=[str(lonely)]), progress=False)
    with pytest.raises(ConfigError, match="seq_len=2 is smaller than the block size 4"):
        adapt(config(setup, "e3", seq_len=2), progress=False)
    with pytest.raises(DataError, match="no field 'body'"):
        adapt(config(setup, "e4", field="body"), progress=False)
    with pytest.raises(ConfigError, match="no training data"):
        adapt(config(setup, "e5", data=[]), progress=False)


_ADAMW_STEP = torch.optim.AdamW.step


def _record_gradients(monkeypatch):
    """The gradients every optimizer step applies, in parameter order."""
    seen, real = [], _ADAMW_STEP

    def step(self, *a, **kw):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def test_accumulation_equals_the_bigger_batch(setup, monkeypatch):
    # rows of different lengths and noise: a mean of per-micro-batch means would differ
    runs = {}
    for name, kw in {"big": dict(batch_size=2), "acc": dict(batch_size=1, grad_accum=2)}.items():
        grads = _record_gradients(monkeypatch)
        recs = adapt(config(setup, f"accum-{name}", steps=3, block_start=4, **kw),
                     progress=False)
        runs[name] = recs, grads
    (big, g_big), (acc, g_acc) = runs["big"], runs["acc"]
    assert len(g_big) == len(g_acc) == 3
    for a, b in zip(big, acc):
        assert a["n_masked"] == b["n_masked"]
        for key in ("loss", "mdm_loss", "ar_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for step_a, step_b in zip(g_big, g_acc):
        for x, y in zip(step_a, step_b):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


def test_resume_on_another_split_of_the_same_global_batch(setup):
    full = adapt(config(setup, "split-ref", steps=4, block_start=4), progress=False)
    adapt(config(setup, "split", steps=4, block_start=4), progress=False, stop_at=2)
    rest = adapt(config(setup, "split", steps=4, block_start=4, batch_size=1, grad_accum=2),
                 progress=False, resume=True)
    assert [r["step"] for r in rest] == [3, 4]
    assert rest[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="batch_size 1 -> 4, grad_accum 2 -> 1"):
        adapt(config(setup, "split", steps=6, block_start=4, batch_size=4), progress=False,
              resume=True)
    with pytest.raises(ConfigError, match="processes 1 -> 2"):
        ck.check_resume(setup[2] / "split", config(setup, "split", steps=6), 4,
                        processes=2, stored_processes=1)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedules(schedule):
    cfg = AdaptConfig(data=["x"], steps=100, warmup=10, lr=1.0, schedule=schedule)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = tr.make_schedule(cfg, opt)
    lrs = []
    for _ in range(cfg.steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)  # linear warmup
    if schedule == "cosine":  # down to 10% of the peak
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    else:  # constant, then linear to 0 over the last 20 steps
        assert lrs[10:80] == [pytest.approx(1.0)] * 70
        assert lrs[90] == pytest.approx(0.5) and opt.param_groups[0]["lr"] == pytest.approx(0.0)
