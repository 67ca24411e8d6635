"""FP8 against Q8_0 (file layout and the 8-row repack) on the same engine build, one process,
1 thread, rounds alternating between the three engines so a shared machine slows all alike.

    python bench/engine_fp8_vs_q8.py --prefill 128 --decode 32 --rounds 5

nano-slice shapes and random weights as bench/engine_speed.py. With 1 thread the engine runs in
the calling thread, so besides the wall clock the thread CPU clock (time.thread_time) is
reported: it leaves out the time the thread was descheduled by other jobs (not cache or
memory-bandwidth contention). Ratios are medians of the per-round FP8/Q8_0 ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_speed import PRESETS  # noqa: E402
from oracle import random_gguf_tensors  # noqa: E402

import nemocpu._core as core  # noqa: E402
from nemocpu.arch import HParams  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    hp = HParams(**PRESETS["nano-slice"])
    engines = {}
    q8, _ = random_gguf_tensors(hp, 0, "Q8_0")
    engines["Q8_0 rows"] = core.Engine(hp.as_dict(), q8, 1, repack=False)
    engines["Q8_0 x8"] = core.Engine(hp.as_dict(), q8, 1, repack=True)
    fp8, _ = random_gguf_tensors(hp, 0, "FP8")
    engines["FP8"] = core.Engine(hp.as_dict(), fp8, 1)
    for e in engines.values():
        e.set_threads(1)
        e.repack_all()  # the x8 engine repacks on first use otherwise (inside the first timed round)
    P, D = a.prefill, a.decode
    ids = np.random.default_rng(0).integers(0, hp.n_vocab, P + D).astype(np.int32)
    keys = ("prefill cpu", "prefill wall", "decode cpu", "decode wall")
    res = {name: {k: [] for k in keys} for name in engines}
    for _ in range(a.rounds):
        for name, eng in engines.items():
            st = eng.new_state(P + D + 8)
            eng.eval(st, ids[:8])  # warm up
            st.reset()
            c0, w0 = time.thread_time(), time.perf_counter()
            eng.eval(st, ids[:P])
            c1, w1 = time.thread_time(), time.perf_counter()
            for i in range(D):
                eng.eval(st, ids[P + i:P + i + 1])
            c2, w2 = time.thread_time(), time.perf_counter()
            r = res[name]
            r["prefill cpu"].append(P / (c1 - c0))
            r["prefill wall"].append(P / (w1 - w0))
            r["decode cpu"].append(D / (c2 - c1))
            r["decode wall"].append(D / (w2 - w1))
    print(f"nano-slice, variant {engines['FP8'].variant}, 1 thread, prefill {P}, decode {D}, {a.rounds} rounds; "
          "tokens/s as median [best]")
    for name, r in res.items():
        print(f"  {name:9s} " + " | ".join(f"{k} {np.median(v):6.1f} [{max(v):6.1f}]" for k, v in r.items()))
    for base in ("Q8_0 rows", "Q8_0 x8"):
        ratios = {k: np.median(np.array(res["FP8"][k]) / np.array(res[base][k])) for k in keys}
        print(f"  FP8 / {base}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
