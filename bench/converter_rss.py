#!/usr/bin/env python3
"""Peak RSS and throughput of the converter on a large synthetic checkpoint.

    python bench/converter_rss.py [--outtype q8_0 bf16 ...] [--keep]

Writes (once) a ~2.2 GB random-bf16 NemotronH checkpoint in 2 shards under bench/cache/
(tests/helpers/hf_synthetic.py: hidden 2048, 64 experts x 1024, pattern MEM*EMEME), then runs
``nemocpu convert`` on it in a child process per outtype and reports the child's peak RSS
(os.wait4 rusage ru_maxrss), wall time and output size. The point: peak RSS must not depend on
the checkpoint size (tensors are streamed in bounded chunks).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CKPT = ROOT / "bench" / "cache" / "synthetic-2g"
DIMS = dict(pattern="MEM*EMEME", hidden=2048, n_expert=64, moe_ff=1024, shexp_ff=2048, n_head=16, n_kv=2,
            head_dim=128, ssm_heads=32, ssm_head_dim=64, d_state=128, n_groups=4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outtype", nargs="+", default=["q8_0", "bf16"])
    ap.add_argument("--keep", action="store_true", help="keep the output files")
    args = ap.parse_args()
    from helpers.hf_synthetic import write_synthetic_checkpoint

    if not (CKPT / "model.safetensors.index.json").is_file():
        t = time.time()
        write_synthetic_checkpoint(CKPT, n_shards=2, **DIMS)
        print(f"wrote synthetic checkpoint in {time.time() - t:.0f} s")
    size = sum(p.stat().st_size for p in CKPT.glob("*.safetensors"))
    print(f"input: {CKPT} ({size / 1e9:.2f} GB safetensors, bf16)")
    for outtype in args.outtype:
        out = CKPT.parent / f"synthetic-2g-{outtype}.gguf"
        t = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "nemocpu", "convert", str(CKPT), "-o", str(out),
                                 "--outtype", outtype, "--no-progress"], cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)          # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t
        if proc.returncode:
            raise SystemExit(f"conversion failed with exit code {proc.returncode}")
        peak = usage.ru_maxrss                              # KiB on Linux
        osize = out.stat().st_size
        print(f"--outtype {outtype}: peak RSS {peak / 1024:.0f} MiB, wall {wall:.1f} s, "
              f"output {osize / 1e9:.2f} GB, {size / wall / 1e6:.0f} MB/s read")
        if not args.keep:
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
