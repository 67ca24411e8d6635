"""The CUDA path: which engine class a ``device`` string selects, and what the build and the
driver offer (``nemocpu info``). The GPU engine is nemocpu._core.CudaEngine (csrc/cuda/),
present only in a core built with NEMOCPU_CUDA=ON; see docs/cuda.md."""

from __future__ import annotations

import functools

from .errors import NemocpuError

BUILD_HINT = ("this nemocpu build has no CUDA kernels; reinstall on a machine with nvcc: "
              "pip install . -Ccmake.define.NEMOCPU_CUDA=ON")


def built() -> bool:
    from . import _core
    return hasattr(_core, "CudaEngine")


def devices() -> list[str]:
    """Usable CUDA devices ("NAME (sm_XY, N MiB)"); empty without a CUDA build, driver or GPU."""
    from . import _core
    return list(_core.cuda_devices()) if built() else []


def info() -> dict:
    """What `nemocpu info` reports about the GPU side."""
    if not built():
        return {"built": False}
    from . import _core
    return {"built": True, **dict(_core.cuda_build()), "devices": devices()}


def engine_class(device: str):
    """Engine constructor for ``device``: "cpu", "cuda" or "cuda:N" (same call signature)."""
    from . import _core
    if device == "cpu":
        return _core.Engine
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise NemocpuError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    index = 0
    if ":" in device:
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            raise NemocpuError(f"bad CUDA device {device!r} (expected cuda:N)") from None
    if not built():
        raise NemocpuError(BUILD_HINT)
    found = devices()
    if not found:
        raise NemocpuError("no CUDA GPU is usable here (no NVIDIA driver or no device)")
    if not 0 <= index < len(found):
        raise NemocpuError(f"{device}: there are {len(found)} CUDA device(s)")
    return functools.partial(_core.CudaEngine, device=index)
