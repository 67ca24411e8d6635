"""Decode and prefill speed of the C++ engine on random weights (no file needed).

    python bench/engine_speed.py --preset tiny --wtype Q8_0 --threads 2
    python bench/engine_speed.py --preset nano-slice --wtype Q4_0

Presets: "tiny" = the trained tiny model's shape (n_embd 256, 14 layers, 32 experts top-4);
"nano-slice" = Nemotron 3 Nano's layer widths (n_embd 2688, expert width 1856 top-6 + shared
3712, Mamba 64x64, state 128, 8 groups, GQA 32/2 x 128) with 3 layers, 16 experts and an 8k
vocabulary (decode touches only k experts, so fewer experts keep the per-token work).
Prints tokens/s and the weight bytes touched per decoded token (-> achieved GB/s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracle import random_gguf_tensors  # noqa: E402

import nemocpu._core as core  # noqa: E402
from nemocpu.arch import HParams  # noqa: E402

PRESETS = {
    "tiny": dict(arch="nemotron_h_moe", n_vocab=4096, n_embd=256, layer_kinds="MEMEM*EMEMEM*E", n_head=4,
                 n_head_kv=2, head_dim=64, ssm_n_head=8, ssm_head_dim=64, ssm_d_state=64, ssm_n_group=2,
                 ssm_conv_kernel=4, n_expert=32, n_expert_used=4, n_ff_exp=128, n_ff_shexp=256,
                 n_expert_shared=1, expert_weights_scale=2.5),
    "nano-slice": dict(arch="nemotron_h_moe", n_vocab=8192, n_embd=2688, layer_kinds="M*E", n_head=32,
                       n_head_kv=2, head_dim=128, ssm_n_head=64, ssm_head_dim=64, ssm_d_state=128,
                       ssm_n_group=8, ssm_conv_kernel=4, n_expert=16, n_expert_used=6, n_ff_exp=1856,
                       n_ff_shexp=3712, n_expert_shared=1, expert_weights_scale=2.5),
}

BYTES_PER_WEIGHT = {"F32": 4, "F16": 2, "BF16": 2, "Q8_0": 34 / 32, "Q4_0": 18 / 32, "FP8": 1}


def active_weights(hp: HParams) -> int:
    """Weights read per decoded token: every Mamba/attention matrix, k routed + shared experts, lm_head."""
    n = hp.n_embd * hp.n_vocab
    for k in hp.layer_kinds:
        if k == "M":
            n += hp.n_embd * hp.ssm_in_dim + hp.ssm_d_inner * hp.n_embd
        elif k == "*":
            n += 2 * hp.n_embd * hp.n_head * hp.head_dim + 2 * hp.n_embd * hp.n_head_kv * hp.head_dim
        elif k == "E":
            n += 2 * hp.n_embd * (hp.n_expert_used * hp.n_ff_exp + hp.n_ff_shexp)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--wtype", default="Q8_0", choices=sorted(BYTES_PER_WEIGHT))
    ap.add_argument("--threads", default="0", help="comma-separated thread counts (0 = all cores)")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--layout", default="both", choices=["x8", "rows", "both"],
                    help="Q8_0/Q4_0 weights repacked to the 8-row layout (x8), as in the file (rows), or both")
    a = ap.parse_args()
    hp = HParams(**PRESETS[a.preset])
    t0 = time.time()
    tensors, _ = random_gguf_tensors(hp, 0, a.wtype)
    print(f"{a.preset} {a.wtype}: weights made in {time.time() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, hp.n_vocab, a.prefill + a.decode).astype(np.int32)
    gb = active_weights(hp) * BYTES_PER_WEIGHT[a.wtype] / 1e9
    layouts = ["rows", "x8"] if a.layout == "both" else [a.layout]
    for layout, threads in ((lay, int(x)) for x in a.threads.split(",") for lay in layouts):
        eng = core.Engine(hp.as_dict(), tensors, 1, repack=layout == "x8")
        eng.set_threads(threads)
        st = eng.new_state(a.prefill + a.decode + 8)
        eng.eval(st, ids[:8])                       # warm up
        st.reset()
        t0 = time.perf_counter()
        eng.eval(st, ids[:a.prefill])
        pre = a.prefill / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(a.decode):
            eng.eval(st, ids[a.prefill + i:a.prefill + i + 1])
        dec = a.decode / (time.perf_counter() - t0)
        print(f"variant {eng.variant}, {layout}, threads {eng.n_threads}: prefill {pre:.1f} tok/s, decode {dec:.1f} tok/s "
              f"({gb * 1e3:.1f} MB weights/token -> {gb * dec:.2f} GB/s)", flush=True)


if __name__ == "__main__":
    main()
