"""Tiny randomly initialised models and a word-level tokenizer, built in code (no download)."""

from __future__ import annotations

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

VOCAB = 96
MASK = VOCAB - 1

_FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
}


def tiny_model(family: str = "llama", seed: int = 0, vocab: int = VOCAB, **overrides):
    cfg_cls, model_cls, extra = _FAMILIES[family]
    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    cfg = cfg_cls(**{**kw, **extra, **overrides})
    model = model_cls(cfg).eval()
    if family == "qwen2":  # random q/k/v biases, so the glue must apply them
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0, 0.5)
    return model


def peaked_model(family: str = "llama", seed: int = 0, scale: float = 40.0, **overrides):
    """A tiny random model whose head is scaled up, so its distributions are peaked: a
    random one's top probability is about 0.016, so every threshold above that fills one
    token a step; here thresholds 0.3-0.9 fill 2 .. B-2 of a block's masks in some steps
    and not in others (partial steps, rows filling different counts)."""
    model = tiny_model(family, seed=seed, **overrides)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def random_prompts(lengths, seed=0, low=3, high=VOCAB - 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (n,), generator=g).tolist() for n in lengths]


def word_tokenizer(words=None, chat=True):
    """A word-level fast tokenizer: '<pad>' 0, '<s>' 1, '</s>' 2, then words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    words = words or [f"w{i}" for i in range(VOCAB - 8)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    if chat:
        tok.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
                             "{% endfor %}{% if add_generation_prompt %}assistant{% endif %}")
    return tok


def save_tiny(path, family="llama", words=None, scale=None, **overrides):
    """A tiny model + word tokenizer saved as a Hugging Face directory (safetensors);
    `scale`: a peaked one (peaked_model)."""
    model = (tiny_model(family, **overrides) if scale is None
             else peaked_model(family, scale=scale, **overrides))
    tok = word_tokenizer(words)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
