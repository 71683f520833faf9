"""Offline builder of Tucano2-family models (Qwen3 body, ChatML, tied embeddings).

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the synthetic commerce text,
the weights are random and seeded. Shapes: ``tiny`` (tests and demo), ``bench`` (~22M parameters,
where generation cost is real) and the real ``0.5b`` / ``3.7b`` shapes for payload and
throughput benchmarks. ``python -m zoo build --shape tiny --out models/tiny``.
"""

from zoo.build import SHAPES, build_model, build_tokenizer, ensure_model, qwen3_config

__all__ = ["SHAPES", "build_model", "build_tokenizer", "ensure_model", "qwen3_config"]
