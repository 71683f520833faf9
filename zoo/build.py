"""Build a Tucano2-shaped model directory that transformers, PEFT and vLLM load offline.

The real Tucano2 models are Qwen3 bodies with a 49,152-token vocabulary, tied embeddings, head_dim
128 and ChatML turns (``../shared/seed/README.md``). The tiny and bench shapes keep the family
traits (qwen3, ChatML, tied embeddings) but use head_dim 64: vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# name -> Qwen3 dimensions. vocab_size None: the trained tokenizer's size rounded up to 64.
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=64, intermediate_size=256, vocab_size=None, tokenizer_vocab=2048),
    # the demo's stand-in (~2M): four layers to copy products, numbers and categories from the prompt
    "small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=1,
                  head_dim=64, intermediate_size=512, vocab_size=None, tokenizer_vocab=2048),
    "bench": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=64, intermediate_size=1536, vocab_size=8192, tokenizer_vocab=8192),
    "0.5b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, vocab_size=49152, tokenizer_vocab=8192),
    "3.7b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, intermediate_size=9728, vocab_size=49152, tokenizer_vocab=8192),
}
BUILD_VERSION = 2  # bump when the builder's output changes; ensure_model rebuilds stale dirs


def _fallback_corpus() -> list[str]:
    """PT-BR commerce-ish text used when the commerce package cannot provide its corpus."""
    base = [
        "O produto chegou antes do prazo, muito bem embalado. Recomendo a loja!",
        "Atraso na entrega de mais de dez dias e ninguém responde no atendimento.",
        "Recebi o produto errado, pedi a troca e ainda não tive retorno.",
        "Veio com defeito e a caixa estava avariada. Quero meu dinheiro de volta.",
        "SELECT customer_state, COUNT(*) AS total FROM orders_enriched GROUP BY customer_state;",
        '{"sentiment": "negative", "sentiment_score": 1,5, "churn_risk": "high"}',
        "- Priorizar a logística no Sudeste, onde 42% dos pedidos se concentram.",
        "Seu pedido de cama_mesa_banho está a caminho! Aproveite o frete grátis hoje 🚚",
    ]
    return base * 50


def corpus(db_path: str | os.PathLike | None = None) -> Iterable[str]:
    try:
        from commerce import corpus_texts  # type: ignore[attr-defined]
    except ImportError:
        return _fallback_corpus()
    return corpus_texts(db_path)


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (every byte encodable) with the ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def qwen3_config(shape: str, vocab_size: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, dtype: str = "float32"):
    from transformers import Qwen3Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    dims = {k: v for k, v in SHAPES[shape].items() if k != "tokenizer_vocab"}
    dims["vocab_size"] = dims["vocab_size"] or vocab_size
    if dims["vocab_size"] is None:
        raise ValueError(f"shape {shape!r} takes its vocab size from the tokenizer: pass vocab_size")
    return Qwen3Config(**dims, max_position_embeddings=4096, tie_word_embeddings=True,
                       rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"},
                       rms_norm_eps=1e-6, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                       bos_token_id=None, dtype=dtype, architectures=["Qwen3ForCausalLM"])


def build_model(out: str | os.PathLike, shape: str = "tiny", seed: int = 0, db_path=None,
                dtype: str = "float32") -> Path:
    """Write a model directory (config, safetensors weights, tokenizer, chat template) to ``out``.

    Deterministic for (shape, seed, corpus). Written to a temporary sibling and renamed, so a
    crash never leaves a half-built model behind.
    """
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    out = Path(out)
    spec = SHAPES[shape]
    tok = build_tokenizer(corpus(db_path), spec["tokenizer_vocab"])
    vocab = spec["vocab_size"] or (len(tok) + 63) // 64 * 64
    cfg = qwen3_config(shape, vocab_size=vocab, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), dtype=dtype)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "zoo.json").write_text(json.dumps({"shape": shape, "seed": seed, "version": BUILD_VERSION}))
    return out


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out`` (mode 0755), on any
    error it is removed, so a crash never leaves a half-written model directory behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_model(out: str | os.PathLike, shape: str = "tiny", seed: int = 0, db_path=None) -> Path:
    """Build ``out`` unless it already holds this shape and seed from this builder version."""
    out = Path(out)
    try:
        meta = json.loads((out / "zoo.json").read_text())
        if meta == {"shape": shape, "seed": seed, "version": BUILD_VERSION}:
            return out
    except (FileNotFoundError, ValueError):
        pass
    return build_model(out, shape=shape, seed=seed, db_path=db_path)


def count_parameters(shape: str) -> int:
    """Parameters of a shape without allocating them (meta device; tied embeddings counted once)."""
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(qwen3_config(shape, vocab_size=SHAPES[shape]["vocab_size"] or 2048))
    return sum(p.numel() for p in model.parameters())
