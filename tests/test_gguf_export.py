"""GGUF export: the file reads back, through transformers' own GGUF loader (written for
llama.cpp's files), as the same model: tokenizer, logits and greedy tokens; nextblock reads
its block-diffusion settings back; bad requests are one clear error. (llama.cpp itself is
not installed here: running the file there is not tested.)"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nextblock
from nextblock.cli import main
from nextblock.gguf_export import permute_rope, write_gguf
from nextblock.loading import gguf_to_hf, resolve
from tests.helpers import tiny_model

TEXT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny_bpe(tmp_path_factory):
    """A tiny random Llama with the default model's byte-level BPE tokenizer (49153 ids,
    the mask token last), tied embeddings, saved and loaded through nextblock."""
    d = tmp_path_factory.mktemp("gguf") / "tiny"
    tok = AutoTokenizer.from_pretrained(gguf_to_hf(resolve("default-base")))
    model = tiny_model("llama", vocab=len(tok) + 1, tie_word_embeddings=True,
                       hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return nextblock.load(d, dtype="float32")


def read_back(path):
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return tok, model


def test_permutation_is_llama_cpps(tmp_path):
    """Row pairs (i, i + d/2) of each head become neighbours: the layout llama.cpp's RoPE
    rotates; a single head of 4 rows [a b c d] -> [a c b d]."""
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads of 4 rows
    assert permute_rope(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("kind,tol", [("f32", 1e-5), ("q8_0", 0.05)])
def test_a_gguf_file_reads_back_as_the_same_model(tiny_bpe, tmp_path, kind, tol):
    path = write_gguf(tiny_bpe, tmp_path / f"m-{kind}.gguf", kind=kind)
    tok, model = read_back(path)
    mask = tiny_bpe.config.mask_token_id
    assert len(tok) == len(tiny_bpe.tokenizer) and tok.convert_ids_to_tokens(mask) == "<|mask|>"
    ids = tiny_bpe.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids + [mask, mask]])  # the mask token is an ordinary row
    with torch.no_grad():
        ref, got = tiny_bpe.model(x).logits, model(x).logits
    assert (ref - got).abs().max() <= tol * ref.abs().max()
    if kind == "f32":
        with torch.no_grad():
            gen = [m.generate(x[:, :-2], attention_mask=torch.ones_like(x[:, :-2]),
                              max_new_tokens=8, do_sample=False)[0].tolist()
                   for m in (tiny_bpe.model, model)]
        assert gen[0] == gen[1]


def test_nextblock_reads_its_settings_back(tiny_bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBLOCK_CACHE", str(tmp_path / "cache"))
    tiny_bpe.config.block_size = 8
    path = write_gguf(tiny_bpe, tmp_path / "m.gguf", kind="f32")
    back = nextblock.load(path, dtype="float32")
    assert back.config.mask_token_id == tiny_bpe.config.mask_token_id
    assert back.config.block_size == 8 and back.config.to_dict() == tiny_bpe.config.to_dict()


def test_default_model_exports_for_llama_cpp(default_lm, tmp_path):
    """The adapted default (LoRA merged, mask token added): f16, same greedy text."""
    path = tmp_path / "default.gguf"
    assert main(["export", "--model", "default", "--gguf", "--out", str(path)]) == 0
    tok, model = read_back(path)
    ids = default_lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        gen = [m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                          do_sample=False)[0, len(ids):].tolist()
               for m in (default_lm.model, model)]
    assert gen[0] == gen[1]


def test_bad_gguf_requests_are_one_clear_line(tmp_path, capsys):
    from tests.helpers import save_tiny

    qwen = str(save_tiny(tmp_path / "qwen", family="qwen2"))
    assert main(["export", "--model", qwen, "--gguf", "--out", str(tmp_path / "q.gguf")]) == 2
    assert "supports the Llama family" in capsys.readouterr().err
    assert main(["export", "--model", qwen, "--gguf", "--out", str(tmp_path / "q.bin")]) == 2
    assert "ends in .gguf" in capsys.readouterr().err
    assert main(["export", "--model", qwen, "--gguf", "--adapter", "--out",
                 str(tmp_path / "q.gguf")]) == 2
    assert "leave out --adapter" in capsys.readouterr().err


def test_llama_cpp_runs_the_file_with_nextblocks_greedy_tokens(default_lm, tmp_path):
    """When llama.cpp's Python module is installed: the exported default (f32, so only the
    order of float sums differs) decodes greedily as nextblock's float32 AR does."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    path = tmp_path / "default-f32.gguf"
    assert main(["export", "--model", "default", "--gguf", "--gguf-type", "f32",
                 "--out", str(path)]) == 0
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    for question in ("What is 2+3?", "Name three colours.", "Write a haiku about rain."):
        text = TEXT.replace("Name three colours.", question)
        ids = default_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        ours = default_lm.generate(text, chat=False, mode="ar", max_new_tokens=16).tokens
        llm.reset()
        theirs = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            theirs.append(tok)
            if len(theirs) == len(ours) or tok == llm.token_eos():
                break
        assert theirs == ours[:len(theirs)] and len(theirs) == len(ours), question
