"""Converter under hostile conditions, beyond tests/test_convert_errors.py (which covers bad
input and SIGINT/SIGTERM): SIGKILL at any moment never leaves a partial OUT.gguf (the file
appears complete or not at all), and running out of space (RLIMIT_FSIZE, or a tiny tmpfs where
mounting is allowed) is a one-line error naming the output, with nothing left behind."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.hf_synthetic import SMALL, write_synthetic_checkpoint



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt") / "small"
    write_synthetic_checkpoint(d, **SMALL)
    return d


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """~40 MB of weights: long enough to be killed in the middle of writing."""
    d = tmp_path_factory.mktemp("ckpt") / "medium"
    write_synthetic_checkpoint(d, pattern="MEM*E", hidden=512, n_expert=16, moe_ff=512)
    return d


def convert_cmd(src, out, outtype="f32"):
    return [sys.executable, "-m", "nemocpu", "convert", str(src), "-o", str(out), "--outtype", outtype,
            "--no-progress"]


def outputs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_sigkill_at_any_moment_leaves_no_partial_output(medium, tmp_path):
    ref = tmp_path / "ref" / "m.gguf"
    t0 = time.monotonic()
    subprocess.run(convert_cmd(medium, ref), check=True, timeout=300)
    duration = time.monotonic() - t0
    reference = ref.read_bytes()
    killed_mid_write = 0
    for i, frac in enumerate((0.4, 0.6, 0.75, 0.9, 1.1)):
        out_dir = tmp_path / f"k{i}"
        out_dir.mkdir()
        out = out_dir / "m.gguf"
        proc = subprocess.Popen(convert_cmd(medium, out), stderr=subprocess.DEVNULL)
        time.sleep(duration * frac)
        writing = any(p.suffix == ".part" for p in out_dir.iterdir())
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        if out.exists():       # finished before the kill: then it is the whole file
            assert out.read_bytes() == reference, f"kill at {frac:.0%} left a partial {out.name}"
        else:
            killed_mid_write += writing
    # SIGKILL cannot be caught, so a killed run may leave its hidden .part temp file, never OUT.gguf
    assert killed_mid_write >= 1, "no kill landed while the output was being written"


def test_next_conversion_removes_what_a_killed_one_left(medium, tmp_path):
    out = tmp_path / "m.gguf"
    proc = subprocess.Popen(convert_cmd(medium, out), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.suffix == ".part" for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "the conversion wrote no .part"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    if out.exists():
        pytest.skip("the conversion finished before the kill")
    (left,) = [p for p in tmp_path.iterdir() if p.suffix == ".part"]
    fresh = tmp_path / f".m.gguf.{os.getpid()}.x.part"    # a live writer's file (this process's pid)
    fresh.write_bytes(b"GGUF")
    young = tmp_path / ".m.gguf.999999999.y.part"          # no such process, but written just now
    young.write_bytes(b"GGUF")
    old = time.time() - 3600
    os.utime(left, (old, old))
    os.utime(fresh, (old, old))
    r = subprocess.run(convert_cmd(medium, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"removed {left}" in r.stderr
    assert outputs(tmp_path) == sorted([fresh.name, young.name, "m.gguf"])


def _limit_file_size(n):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return set_limit


@pytest.mark.parametrize("limit", [100, 4_000, 60_000])   # in the header, the metadata, the tensor data
def test_file_size_limit_is_reported(ckpt, tmp_path, limit):
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    r = subprocess.run(convert_cmd(ckpt, out), capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_file_size(limit))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(out) in r.stderr and "File too large" in r.stderr, r.stderr
    assert outputs(out.parent) == []


def test_full_tmpfs_is_reported(ckpt, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs privileges); RLIMIT_FSIZE test covers the path")
    try:
        out = mnt / "m.gguf"
        r = subprocess.run(convert_cmd(ckpt, out), capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert str(out) in r.stderr and "No space left on device" in r.stderr, r.stderr
        assert outputs(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
