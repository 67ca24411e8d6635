#!/usr/bin/env python3
"""Single-thread speed of the matmul kernels on one expert-sized matrix, file layout vs the
8-row repacked layout (LAYOUT_X8), decode (T=1, from DRAM: many matrices) and prefill tiles.

    python bench/x8_kernels.py --reps 8 --T 1 64 256

Times are thread CPU time of the kernel loop (measured inside the extension), best of --reps:
on a shared machine a descheduled thread does not count, so the figure tracks the kernel rather
than the load (memory stalls do count). The repack and activation quantization are not timed;
the first (cold) pass is subtracted out.
"""

from __future__ import annotations

import argparse
import numpy as np
from gguf import GGMLQuantizationType as Q, quants

import nemocpu._core as core

TYPES = {"Q4_0": (Q.Q4_0, 2), "Q8_0": (Q.Q8_0, 8)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1856, help="rows of the matrix (default: an expert's 1856)")
    ap.add_argument("-K", type=int, default=2688, help="columns (default: n_embd 2688)")
    ap.add_argument("--T", type=int, nargs="+", default=[1, 64, 256], help="tokens per call")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.rows, a.K)).astype(np.float32)
    best: dict = {}
    for _ in range(a.reps):
        for T in a.T:
            x = rng.standard_normal((T, a.K)).astype(np.float32)
            for name in a.types:
                qt, gt = TYPES[name]
                raw = quants.quantize(w, qt).reshape(-1)
                repeat = max(1, int(2e9 // (a.rows * a.K * T)))  # ~2 G multiply-adds per timing
                for layout in ("rows", "x8"):
                    # the kernel loop alone (the repack and activation quantization are outside)
                    _, dt = core.ops.matmul(raw, gt, a.K, a.rows, x, layout=layout, repeat=repeat + 1, timed=True)
                    _, dt1 = core.ops.matmul(raw, gt, a.K, a.rows, x, layout=layout, repeat=1, timed=True)
                    dt -= dt1                                 # drop one cold pass (page faults, cache)
                    key = (name, T, layout)
                    best[key] = max(best.get(key, 0.0), a.rows * a.K * T * repeat / dt / 1e9)
    print(f"rows {a.rows}, K {a.K}, 1 thread, best of {a.reps} (thread CPU time), GMAC/s; GB/s of weights for T=1")
    for name in a.types:
        for T in a.T:
            r, x8 = best[(name, T, "rows")], best[(name, T, "x8")]
            gbs = "" if T > 1 else f"  ({r * (18 if name == 'Q4_0' else 34) / 32:.1f} -> " \
                                   f"{x8 * (18 if name == 'Q4_0' else 34) / 32:.1f} GB/s)"
            print(f"{name} T={T:4d}: rows {r:6.1f}  x8 {x8:6.1f}  ({x8 / r:.2f}x){gbs}")


if __name__ == "__main__":
    main()
