"""The embedded default model is exactly what the converter makes from the tiny checkpoint."""

from __future__ import annotations

from gguf import GGUFReader

from nemocpu.convert import convert
from nemocpu.data import default_model_path


def test_default_model_path_is_a_q8_0_nemotron_gguf():
    path = default_model_path()
    assert path.is_file() and path.name == "nemotron-h-tiny-q8_0.gguf"
    r = GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "nemotron_h_moe"
    assert r.fields["general.file_type"].contents() == 7          # LLAMA_FTYPE_MOSTLY_Q8_0


def test_embedded_model_regenerates_byte_identical(tiny_dir, tmp_path):
    """NOTE.md's command, re-run: the converter is deterministic and the file is current."""
    out = convert(tiny_dir, tmp_path / "nemotron-h-tiny-q8_0.gguf", outtype="q8_0", progress=False)
    assert out.read_bytes() == default_model_path().read_bytes()
