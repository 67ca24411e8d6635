"""nemocpu: a CPU-first quantized inference runtime for NVIDIA Nemotron-H (Nemotron 3 Nano).

Importing nemocpu is cheap: the C++ core and the heavy dependencies load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ConversionError, GGUFError, ModelFileError, NemocpuError  # noqa: E402

__all__ = ["__version__", "NemocpuError", "ModelFileError", "GGUFError", "ConversionError", "load"]


def load(path=None, **kwargs):
    """Load a GGUF model (the embedded tiny model when ``path`` is None). See nemocpu.model.load."""
    from .model import load as _load

    return _load(path, **kwargs)
