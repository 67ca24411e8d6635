"""Hugging Face NemotronH checkpoint -> GGUF in llama.cpp's layout (plus nemocpu's FP8).

    from nemocpu.convert import convert
    convert("path/to/hf_dir", "model.gguf", outtype="q8_0")

Modules: ``checkpoint`` (lazy safetensors + config), ``plan`` (names, shapes, transforms,
order), ``types`` (output-type rules and encoders), ``vocab`` (tokenizer metadata),
``converter`` (streaming, atomic writer).
"""

from __future__ import annotations

from .converter import convert
from .types import OUTTYPES

__all__ = ["convert", "OUTTYPES"]
