"""The device= switch of the Python API and the CLI on any machine: bad device strings and a
missing CUDA build or GPU are clear NemocpuErrors, `nemocpu info` reports the CUDA side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import nemocpu
from nemocpu import cuda
from nemocpu.errors import NemocpuError


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", "CUDA"])
def test_bad_device_strings(device):
    with pytest.raises(NemocpuError, match="device|cuda"):
        nemocpu.load(device=device)


@pytest.mark.skipif(bool(cuda.devices()), reason="a CUDA GPU is usable here")
def test_cuda_without_build_or_gpu_is_a_clear_error():
    with pytest.raises(NemocpuError, match="NEMOCPU_CUDA|no CUDA GPU"):
        nemocpu.load(device="cuda")


def test_cpu_is_the_default_and_unchanged():
    a = nemocpu.load(threads=1).session().eval([1, 2, 3])
    b = nemocpu.load(threads=1, device="cpu").session().eval([1, 2, 3])
    assert (a == b).all()


def test_info_reports_cuda():
    out = subprocess.run([sys.executable, "-m", "nemocpu", "info", "--json"], capture_output=True, text=True,
                         check=True).stdout
    c = json.loads(out)["cuda"]
    assert c["built"] == cuda.built()
    if c["built"]:
        assert {"runtime", "driver", "archs", "devices"} <= set(c)
