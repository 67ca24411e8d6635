"""Bad input -> ConversionError naming the file and tensor, non-zero CLI exit, no partial output;
an interrupted conversion (SIGINT / SIGTERM mid-write) leaves no output and no temp file."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.hf_synthetic import SMALL, write_synthetic_checkpoint

from nemocpu.convert import convert
from nemocpu.errors import ConversionError



@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good") / "ckpt"
    write_synthetic_checkpoint(d, **SMALL)
    return d


@pytest.fixture
def ckpt(good, tmp_path) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(good, d)
    return d


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".gguf", ".part"))


def convert_fails(src, tmp_path, *must_mention) -> ConversionError:
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(ConversionError) as ei:
        convert(src, out, outtype="q8_0", progress=False)
    for s in must_mention:
        assert str(s) in str(ei.value), f"error {ei.value!s} does not mention {s}"
    assert leftovers(out.parent) == []
    return ei.value


def rewrite_tensors(ckpt: Path, edit) -> None:
    """Load model.safetensors with torch, apply edit(dict), save it back."""
    from safetensors.torch import load_file, save_file

    sd = load_file(ckpt / "model.safetensors")
    edit(sd)
    save_file(sd, ckpt / "model.safetensors")


def test_missing_directory(tmp_path):
    convert_fails(tmp_path / "nope", tmp_path, "nope")


@pytest.mark.parametrize("fname", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
def test_missing_file(ckpt, tmp_path, fname):
    (ckpt / fname).unlink()
    convert_fails(ckpt, tmp_path, fname)


def test_unknown_architecture(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    convert_fails(ckpt, tmp_path, "config.json", "LlamaForCausalLM")


def test_corrupt_config(ckpt, tmp_path):
    (ckpt / "config.json").write_text("{not json")
    convert_fails(ckpt, tmp_path, "config.json")


def test_missing_tensor(ckpt, tmp_path):
    pytest.importorskip("torch")
    rewrite_tensors(ckpt, lambda sd: sd.pop("backbone.layers.0.mixer.A_log"))
    convert_fails(ckpt, tmp_path, "backbone.layers.0.mixer.A_log", ckpt)


def test_wrong_shape(ckpt, tmp_path):
    torch = pytest.importorskip("torch")

    def edit(sd):
        sd["backbone.layers.1.mixer.k_proj.weight"] = torch.zeros(24, 64, dtype=torch.bfloat16)
    rewrite_tensors(ckpt, edit)
    convert_fails(ckpt, tmp_path, "backbone.layers.1.mixer.k_proj.weight", "model.safetensors", "[24, 64]")


def test_unsupported_dtype(ckpt, tmp_path):
    torch = pytest.importorskip("torch")

    def edit(sd):
        sd["backbone.norm_f.weight"] = torch.ones(64, dtype=torch.int32)
    rewrite_tensors(ckpt, edit)
    convert_fails(ckpt, tmp_path, "backbone.norm_f.weight", "I32", "model.safetensors")


@pytest.mark.parametrize("outtype", ["q8_0", "fp8", "f16"])
def test_non_finite_weights(ckpt, tmp_path, outtype):
    pytest.importorskip("torch")

    def edit(sd):
        sd["backbone.layers.0.mixer.out_proj.weight"][3, 5] = float("nan")
    rewrite_tensors(ckpt, edit)
    out = tmp_path / "m.gguf"
    with pytest.raises(ConversionError, match="out_proj.weight.*NaN"):
        convert(ckpt, out, outtype=outtype, progress=False)
    assert leftovers(tmp_path) == []


def test_f16_overflow(ckpt, tmp_path):
    pytest.importorskip("torch")

    def edit(sd):
        sd["backbone.layers.0.mixer.out_proj.weight"][0, 0] = 1e5
    rewrite_tensors(ckpt, edit)
    with pytest.raises(ConversionError, match="F16 range"):
        convert(ckpt, tmp_path / "m.gguf", outtype="f16", progress=False)
    assert convert(ckpt, tmp_path / "m.gguf", outtype="bf16", progress=False).is_file()


def test_pattern_longer_than_checkpoint(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hybrid_override_pattern"] += "M"
    cfg["layers_block_type"].append("mamba")
    cfg["num_hidden_layers"] += 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    convert_fails(ckpt, tmp_path, f"backbone.layers.{len(cfg['hybrid_override_pattern']) - 1}.")


def test_pattern_shorter_than_checkpoint(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hybrid_override_pattern"] = cfg["hybrid_override_pattern"][:-1]
    cfg["layers_block_type"] = cfg["layers_block_type"][:-1]
    cfg["num_hidden_layers"] -= 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    convert_fails(ckpt, tmp_path, "do not fit config.json's layer pattern")


def test_pattern_kind_mismatch(ckpt, tmp_path):
    """The config says attention where the checkpoint holds a Mamba layer."""
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hybrid_override_pattern"] = "*" + cfg["hybrid_override_pattern"][1:]
    cfg["layers_block_type"][0] = "attention"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    convert_fails(ckpt, tmp_path, "backbone.layers.0.mixer.q_proj.weight")


def test_truncated_safetensors(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    convert_fails(ckpt, tmp_path, "model.safetensors")


def test_missing_shard(tmp_path):
    src = tmp_path / "sharded"
    write_synthetic_checkpoint(src, n_shards=2, **SMALL)
    (src / "model-00002-of-00002.safetensors").unlink()
    convert_fails(src, tmp_path, "model-00002-of-00002.safetensors")


@pytest.mark.parametrize("fname", ["config.json", "tokenizer.json", "model.safetensors"])
def test_unreadable_input_is_named(ckpt, tmp_path, fname):
    (ckpt / fname).unlink()
    (ckpt / fname).mkdir()          # exists, but cannot be read as a file
    err = convert_fails(ckpt, tmp_path, fname)
    assert "cannot read" in str(err)


def test_output_folder_that_cannot_be_made(ckpt, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    out = blocker / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "nemocpu", "convert", str(ckpt), "-o", str(out), "--outtype", "q8_0",
                        "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(out) in r.stderr and "cannot create the output" in r.stderr, r.stderr
    assert blocker.read_text() == "not a folder"


def test_unknown_outtype(ckpt, tmp_path):
    with pytest.raises(ConversionError, match="q5_k"):
        convert(ckpt, tmp_path / "m.gguf", outtype="q5_k", progress=False)


def test_cli_reports_error_and_exits_nonzero(ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    out = tmp_path / "cli.gguf"
    r = subprocess.run([sys.executable, "-m", "nemocpu", "convert", str(ckpt), "-o", str(out), "--outtype", "q8_0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "tokenizer.json" in r.stderr and "Traceback" not in r.stderr
    assert leftovers(tmp_path) == []


def test_cli_and_script_write_the_same_file(ckpt, tmp_path):
    script = Path(__file__).resolve().parents[1] / "convert" / "convert_hf_to_gguf.py"
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    subprocess.run([sys.executable, "-m", "nemocpu", "convert", str(ckpt), "-o", str(a), "--outtype", "q4_0",
                    "--no-progress"], check=True, timeout=120)
    subprocess.run([sys.executable, str(script), str(ckpt), "--outfile", str(b), "--outtype", "q4_0",
                    "--no-progress"], check=True, timeout=120)
    assert a.read_bytes() == b.read_bytes()


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """~170 MB of bf16 weights: a q4_0 conversion takes seconds, long enough to interrupt."""
    d = tmp_path_factory.mktemp("big") / "ckpt"
    write_synthetic_checkpoint(d, pattern="MEM*E", hidden=1024, n_expert=16, moe_ff=1024)
    return d


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_write_leaves_nothing(big, tmp_path, sig):
    out = tmp_path / "m.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "nemocpu", "convert", str(big), "-o", str(out),
                             "--outtype", "q4_0", "--no-progress"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    part = None
    while time.monotonic() < deadline and proc.poll() is None:
        parts = [p for p in tmp_path.iterdir() if p.suffix == ".part"]
        if parts and parts[0].stat().st_size > (4 << 20):     # header written, tensor data streaming
            part = parts[0]
            break
        time.sleep(0.02)
    assert part is not None, "the conversion finished or never started writing before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists(), "an interrupted conversion must not leave OUT.gguf"
    assert leftovers(tmp_path) == [], "the temporary file must be removed"
