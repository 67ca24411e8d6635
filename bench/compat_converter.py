#!/usr/bin/env python3
"""Compare nemocpu's converter with llama.cpp's own convert_hf_to_gguf.py.

Downloads the llama-cpp-python 0.3.36 sdist (it vendors llama.cpp and its gguf-py) into
bench/cache/ (git-ignored; nothing of llama.cpp is vendored into this repository), runs
llama.cpp's converter on an HF checkpoint with its own gguf-py first on sys.path, runs ours
on the same checkpoint, and compares the two files key by key and tensor by tensor.

    python bench/compat_converter.py [HF_DIR] [--outtype f32 q8_0 ...]

The one intervention in llama.cpp's run: its tokenizer-hash table does not know the tiny
test tokenizer, so get_vocab_base_pre() is patched to return the name nemocpu derives from
the pre-tokenizer regex (for the tiny model "qwen2", whose regex is character-for-character
the one llama.cpp quotes for LLAMA_VOCAB_PRE_TYPE_QWEN2). Everything else is llama.cpp's code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"
SDIST = "llama_cpp_python-0.3.36"
DEFAULT_MODEL = Path("/work/shared/models/nemotron-h-tiny")

# Run inside a fresh interpreter: llama.cpp's converter with the tokenizer-hash patch.
RUNNER = r"""
import sys
lcpp, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [lcpp + "/gguf-py", lcpp]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[3:]
convert_hf_to_gguf.main()
"""


def llamacpp_dir() -> Path:
    """The vendored llama.cpp tree of the sdist, downloaded and unpacked on first use."""
    tree = CACHE / "lcpp" / SDIST / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    tarball = CACHE / "lcpp" / f"{SDIST}.tar.gz"
    if not tarball.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "llama-cpp-python==0.3.36", "-d", str(tarball.parent)],
                       check=True)
    with tarfile.open(tarball) as tf:
        members = [m for m in tf.getmembers()
                   if m.name.startswith(f"{SDIST}/vendor/llama.cpp/") and
                   any(p in m.name for p in ("/conversion/", "/gguf-py/", "convert_hf_to_gguf.py"))]
        tf.extractall(CACHE / "lcpp", members=members, filter="data")
    return tree


LLAMACPP_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def run_llamacpp(hf_dir: Path, outtype: str, out: Path, pre: str) -> None:
    r = subprocess.run([sys.executable, "-c", RUNNER, str(llamacpp_dir()), pre, str(hf_dir),
                        "--outtype", outtype, "--outfile", str(out)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"llama.cpp's converter failed on {hf_dir} --outtype {outtype}:\n{r.stderr[-3000:]}")


def run_nemocpu(hf_dir: Path, outtype: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from nemocpu.convert import convert

    convert(hf_dir, out, outtype=outtype, progress=False)


def _fields(reader) -> dict:
    """key -> (type names, python value) for every metadata key but the GGUF.* header ones."""
    from gguf import GGUFValueType

    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = ([GGUFValueType(t).name for t in f.types], f.contents())
    return out


def compare(ours: Path, theirs: Path) -> dict:
    """Differences between two GGUF files (keys, values, tensors, bytes, layout)."""
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(ours), GGUFReader(theirs)
    fa, fb = _fields(a), _fields(b)
    res = {
        "only_ours": sorted(set(fa) - set(fb)),
        "only_llamacpp": sorted(set(fb) - set(fa)),
        "type_differs": sorted(k for k in set(fa) & set(fb) if fa[k][0] != fb[k][0]),
        "value_differs": sorted(k for k in set(fa) & set(fb) if fa[k][1] != fb[k][1]),
        "alignment": (a.alignment, b.alignment),
    }
    ta, tb = [t.name for t in a.tensors], [t.name for t in b.tensors]
    res["tensor_names_equal"] = sorted(ta) == sorted(tb)
    res["tensor_order_equal"] = ta == tb
    # offsets relative to the data section (the KV sections differ in length)
    rel = [[t.data_offset - r.tensors[0].data_offset for t in r.tensors] for r in (a, b)]
    res["tensor_data_offsets_equal"] = rel[0] == rel[1]
    by_b = {t.name: t for t in b.tensors}
    res["shape_or_type_differs"], res["bytes_differ"] = [], []
    for t in a.tensors:
        u = by_b.get(t.name)
        if u is None:
            continue
        if list(t.shape) != list(u.shape) or t.tensor_type != u.tensor_type:
            res["shape_or_type_differs"].append(
                f"{t.name}: ours {t.tensor_type.name}{list(map(int, t.shape))} "
                f"llama.cpp {u.tensor_type.name}{list(map(int, u.shape))}")
        elif not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)):
            res["bytes_differ"].append(t.name)
    res["n_tensors"] = (len(ta), len(tb))
    res["file_bytes_identical"] = ours.read_bytes() == theirs.read_bytes()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir", nargs="?", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--outtype", nargs="+", default=["f32", "q8_0", "bf16", "f16"])
    ap.add_argument("--pre", default="qwen2", help="tokenizer.ggml.pre for llama.cpp's run (see docstring)")
    args = ap.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtype:
            if outtype not in LLAMACPP_OUTTYPES:
                print(f"== --outtype {outtype}: skipped (llama.cpp's converter has no such type; "
                      "q4_0 is made by llama-quantize, FP8 does not exist in ggml)")
                continue
            ours, theirs = Path(tmp) / f"ours-{outtype}.gguf", Path(tmp) / f"llamacpp-{outtype}.gguf"
            run_llamacpp(args.hf_dir, outtype, theirs, args.pre)
            run_nemocpu(args.hf_dir, outtype, ours)
            r = compare(ours, theirs)
            print(f"== {args.hf_dir.name} --outtype {outtype}: ours {ours.stat().st_size} bytes, "
                  f"llama.cpp {theirs.stat().st_size} bytes")
            for k, v in r.items():
                print(f"  {k}: {v}")
            ok &= (r["tensor_names_equal"] and r["tensor_order_equal"] and not r["shape_or_type_differs"]
                   and not r["bytes_differ"] and not r["type_differs"])
    print("RESULT:", "tensors identical" if ok else "DIFFERENCES (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
