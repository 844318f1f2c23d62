"""Export: a merged directory transformers loads as a plain causal LM, an adapter export
that nextblock applies to its base, both with their block-diffusion settings; with untied
and with tied embeddings (the default model ties them: the mask token's trained row is
then the head's row too, in training as after the merge)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import nextblock
from nextblock.adapter import LEGACY_MASK_FILE, TOKEN_ROW
from nextblock.cli import main
from nextblock.training import export as ex
from nextblock.training.trainer import AdaptConfig, adapt, build_model
from tests.helpers import save_tiny
from tests.training.test_trainer import write_chat


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def run(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("export")
    model = str(save_tiny(d / "tiny", tie_word_embeddings=request.param))
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
                                                 "adapter_config.json", "nextblock.json"}
    assert not (out / "model.safetensors").exists()
    rows = [k for k in load_file(out / "adapter_model.safetensors") if TOKEN_ROW in k]
    assert len(rows) == 1  # the mask token's row, once even when tied
    lm = nextblock.load(out)
    ids = torch.tensor([[1, 92, 5, 92, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, trained_logits(run, ids), atol=1e-4,
                                   rtol=1e-4)


def as_legacy(adapter, out):
    """An adapter in the format exported before the mask row trained through peft: the
    row in mask_embedding.safetensors (the shipped default adapter is one)."""
    shutil.copytree(adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    (row,) = [k for k in weights if TOKEN_ROW in k]
    save_file({"mask_embedding": weights.pop(row)[0]}, out / LEGACY_MASK_FILE)
    save_file(weights, out / "adapter_model.safetensors")
    meta = json.loads((out / "adapter_config.json").read_text())
    meta["trainable_token_indices"] = None
    (out / "adapter_config.json").write_text(json.dumps(meta))
    return out


def test_adapter_in_the_older_format_still_loads_and_continues(run):
    ex.export(run / "run", run / "adapter_new", adapter=True)
    old = as_legacy(run / "adapter_new", run / "adapter_old")
    ids = torch.tensor([[1, 92, 5, 92, 7, 8]])
    cfg = AdaptConfig(**json.loads((ex.find_checkpoint(run / "run") / "state.json")
                                   .read_text())["config"])
    module = build_model(AdaptConfig(**{**cfg.__dict__, "init_adapter": str(old)}),
                         nextblock.load(cfg.model))
    module.eval()
    with torch.no_grad():
        expected = trained_logits(run, ids)
        torch.testing.assert_close(nextblock.load(old).model(ids).logits, expected,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(module.model(ids).logits, expected, atol=1e-4, rtol=1e-4)


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
