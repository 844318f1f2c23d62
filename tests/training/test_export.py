"""Export: a merged directory transformers loads as a plain causal LM, an adapter export
that nextblock applies to its base, both with their block-diffusion settings."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import nextblock
from nextblock.cli import main
from nextblock.training import export as ex
from nextblock.training.trainer import AdaptConfig, adapt, build_model
from tests.helpers import save_tiny
from tests.training.test_trainer import write_chat


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model = str(save_tiny(d / "tiny"))
    data = str(write_chat(d / "chat.jsonl"))
    rc = main(["adapt", "--model", model, "--data", data, "--out", str(d / "run"),
               "--seq-len", "32", "--steps", "4", "--lora-r", "4", "--lr", "0.01",
               "--block-max", "4", "--save-every", "2"])
    assert rc == 0
    return d


def trained_logits(d, ids):
    ckpt = ex.find_checkpoint(d / "run")
    cfg = AdaptConfig(**json.loads((ckpt / "state.json").read_text())["config"])
    lm = nextblock.load(cfg.model)
    module = build_model(cfg, lm)
    from safetensors.torch import load_file
    params = dict(module.named_parameters())
    with torch.no_grad():
        for n, t in load_file(ckpt / "trainable.safetensors").items():
            params[n].copy_(t)
        module.eval()
        return module.model(ids).logits


def test_merged_export_is_a_plain_causal_lm(run):
    out = run / "merged"
    assert main(["export", "--model", str(run / "run"), "--out", str(out)]) == 0
    settings = json.loads((out / "nextblock.json").read_text())
    assert settings["mask_token_id"] == 92 and settings["block_size"] == 4
    assert settings["trained_block_sizes"] == [1, 2, 4]
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 92, 5, 92, 7, 8]])  # includes the mask token
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, trained_logits(run, ids), atol=1e-4,
                                   rtol=1e-4)
    lm = nextblock.load(out)
    assert lm.settings().mode == "block" and lm.settings().block_size == 4
    assert len(lm.generate("w1 w2", chat=False, max_new_tokens=6).tokens) >= 1


def test_adapter_export_applies_to_its_base(run):
    out = run / "adapter"
    ex.export(run / "run", out, adapter=True)
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors",
                                                 "adapter_config.json", "nextblock.json",
                                                 "mask_embedding.safetensors"}
    assert not (out / "model.safetensors").exists()
    lm = nextblock.load(out)
    ids = torch.tensor([[1, 92, 5, 92, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, trained_logits(run, ids), atol=1e-4,
                                   rtol=1e-4)


def test_export_errors(run, tmp_path):
    with pytest.raises(nextblock.ConfigError, match="no training checkpoint"):
        ex.export(tmp_path / "nothing", tmp_path / "o")


def test_init_adapter_continues_from_an_export(run):
    out = run / "adapter_init"
    ex.export(run / "run", out, adapter=True)
    base = AdaptConfig(**json.loads((ex.find_checkpoint(run / "run") / "state.json")
                                    .read_text())["config"])
    cfg = AdaptConfig(**{**base.__dict__, "init_adapter": str(out)})
    module = build_model(cfg, nextblock.load(cfg.model))
    ids = torch.tensor([[1, 92, 5, 92, 7, 8]])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.model(ids).logits, trained_logits(run, ids),
                                   atol=1e-4, rtol=1e-4)
    # a continuation at b = 4 only still lists the sizes its starting adapter was trained on
    more = AdaptConfig(**{**base.__dict__, "init_adapter": str(out), "steps": 2,
                          "block_start": 4, "out": str(run / "more")})
    adapt(more, progress=False)
    first = json.loads((out / "nextblock.json").read_text())["trained_block_sizes"]
    cont = ex.export(run / "more", run / "more_adapter", adapter=True)
    assert 1 in first and json.loads((cont / "nextblock.json").read_text())[
        "trained_block_sizes"] == sorted(set(first) | {4})
    wrong = AdaptConfig(**{**base.__dict__, "init_adapter": str(out), "lora_r": 8})
    with pytest.raises(nextblock.ConfigError, match="lora_r"):
        build_model(wrong, nextblock.load(cfg.model))
    with pytest.raises(nextblock.ConfigError, match="not a nextblock adapter"):
        build_model(AdaptConfig(**{**base.__dict__, "init_adapter": str(run)}),
                    nextblock.load(cfg.model))


def test_cli_stop_at_ends_on_a_checkpoint(run, capsys):
    model, data = str(run / "tiny"), str(run / "chat.jsonl")
    common = ["adapt", "--model", model, "--data", data, "--out", str(run / "stopped"),
              "--seq-len", "32", "--steps", "6", "--lora-r", "4", "--save-every", "2"]
    assert main(common + ["--stop-at", "3"]) != 0
    assert "--stop-at 3: use a positive multiple of save_every (2)" in capsys.readouterr().err
    assert main(common + ["--stop-at", "4"]) == 0
    assert ex.find_checkpoint(run / "stopped").name == "step-0000004"
    lines = (run / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the run planned 6 steps and ended after 4
