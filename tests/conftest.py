"""Shared fixtures. Paths to the read-only shared material, and converted GGUF files of the
tiny trained model, made once per test session (converting is the slow part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"                  # CI has ../shared beside the clone
TINY_DIR = SHARED / "models" / "nemotron-h-tiny"
TINY_FP8_DIR = SHARED / "models" / "nemotron-h-tiny-fp8"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    if not (TINY_DIR / "model.safetensors").is_file():
        pytest.skip(f"{TINY_DIR} not present")
    return TINY_DIR


@pytest.fixture(scope="session")
def tiny_reference(tiny_dir) -> dict:
    """transformers 5.23's float32 greedy outputs for 12 prompts (reference.json)."""
    return json.loads((tiny_dir / "reference.json").read_text())


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_dir):
    """tiny_gguf(outtype) -> Path of the tiny model converted by nemocpu's converter,
    one conversion per outtype per session. outtype "fp8-modelopt" converts the ModelOpt
    FP8 checkpoint, keeping its E4M3 codes and scales."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny-gguf")

    def get(outtype: str) -> Path:
        if outtype not in cache:
            from nemocpu.convert import convert
            if outtype == "fp8-modelopt":
                if not (TINY_FP8_DIR / "model.safetensors").is_file():
                    pytest.skip(f"{TINY_FP8_DIR} not present")
                src, typ = TINY_FP8_DIR, "auto"
            else:
                src, typ = tiny_dir, outtype
            out = root / f"tiny-{outtype}.gguf"
            convert(src, out, outtype=typ, progress=False)
            cache[outtype] = out
        return cache[outtype]

    return get
