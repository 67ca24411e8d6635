"""Files shipped inside the wheel: the embedded demo model (see NOTE.md here)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "nemotron-h-tiny-q8_0.gguf"


def default_model_path() -> Path:
    """Path of the embedded tiny Nemotron-H model (Q8_0 GGUF, ~20 MB)."""
    return Path(__file__).resolve().parent / DEFAULT_MODEL_NAME
