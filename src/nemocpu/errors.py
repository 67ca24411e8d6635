"""Exceptions raised by nemocpu. Every error about a file names the file."""

from __future__ import annotations


class NemocpuError(Exception):
    """Base class of every error nemocpu raises on purpose."""


class ModelFileError(NemocpuError):
    """A model file (GGUF, safetensors, config.json, ...) is missing, malformed or unsupported."""

    def __init__(self, path, message: str):
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class GGUFError(ModelFileError):
    """A GGUF file is truncated, hostile, or does not describe a model nemocpu can run."""


class ConversionError(ModelFileError):
    """A Hugging Face checkpoint cannot be converted."""
