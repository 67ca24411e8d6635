#!/usr/bin/env python3
"""GPU figures for bench/RESULTS.md ("CUDA"): the full-size Nemotron 3 Nano 30B-A3B shape
(52 layers, random weights generated on the GPU itself, nothing copied there), batch-1 decode
tokens/s per weight type against the memory-bandwidth bound measured in the same run, prefill
tokens/s, and transformers' NemotronH in bf16 on the same GPU as the peer.

    python bench/cuda_bench.py --types fp8 q8_0 q4_0 --prefill 512 8192 --peer --json out.json

The bound: bytes one decode step must read (every weight a token touches: all dense matrices,
the router, k routed experts + the shared expert per MoE layer, the lm_head, one embedding
row) divided by the device-to-device copy bandwidth (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import nemocpu._core as core  # noqa: E402
from nemocpu import arch  # noqa: E402
from synthetic import BYTES_PER_ELEM, WEIGHT_STD, f32_tensor, nano_hparams  # noqa: E402

QK = 32


def copy_bandwidth(torch) -> float:
    """Device-to-device copy of 4 GiB, median of 20: bytes read + written per second."""
    n = 1 << 32
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / float(np.median(times))


def gpu_matrix(torch, gen, wtype: str, n_elems: int):
    """Random well-formed bytes of one matrix in its storage type, on the GPU (1-D uint8)."""
    if wtype == "fp8":  # sign | exponent field 4..7 | mantissa (never the NaN codes)
        r = torch.randint(0, 256, (n_elems,), dtype=torch.uint8, device="cuda", generator=gen)
        return (r & 0x87) | ((4 + ((r >> 3) & 3)) << 3)
    if wtype in ("q8_0", "q4_0"):
        nb, bs = n_elems // QK, 34 if wtype == "q8_0" else 18
        blocks = torch.randint(0, 256, (nb, bs), dtype=torch.uint8, device="cuda", generator=gen)
        spread = 73.6 if wtype == "q8_0" else 4.61          # std of the uniform codes
        d = (torch.rand(nb, device="cuda", generator=gen) * 0.4 + 0.8) * (WEIGHT_STD / spread)
        blocks[:, :2] = d.to(torch.float16).view(torch.uint8).view(nb, 2)
        if wtype == "q8_0":  # int8 codes in [-127, 127]
            q = blocks[:, 2:].view(torch.int8)
            q[q == -128] = -127
        return blocks.reshape(-1)
    if wtype == "bf16":
        return (torch.randn(n_elems, device="cuda", generator=gen) * WEIGHT_STD).to(torch.bfloat16).view(torch.uint8)
    raise ValueError(wtype)


def make_tensors(torch, hp: arch.HParams, wtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    out, active = {}, 0
    k, ne = hp.n_expert_used, hp.n_expert
    for s in arch.tensor_specs(hp):
        if s.optional and s.name == "output.weight" and hp.tie_word_embeddings:
            continue
        if s.role == "f32":
            v = f32_tensor(rng, s, hp)
            out[s.name] = (v.view(np.uint8).reshape(-1), 0, tuple(s.ne))
            if "gate_inp" in s.name or "norm" in s.name:
                active += v.nbytes
            continue
        # llama-quantize keeps the output matrix at Q8_0 in a Q4_0 file (gguf-layout.md §6.2)
        t = "q8_0" if (wtype == "q4_0" and s.role == "output") else wtype
        data = gpu_matrix(torch, gen, t, s.n_elements)
        out[s.name] = (data, arch.GGML_TYPE_I8 if t == "fp8" else {"q8_0": 8, "q4_0": 2, "bf16": 30}[t], tuple(s.ne))
        nbytes = s.n_elements * BYTES_PER_ELEM[t]
        if t == "fp8":
            rows = s.n_elements // s.ne[0]
            sc = np.full(rows, 0.025, np.float32)   # |codes| ~ 0.8 -> weights of std ~0.02
            out[arch.fp8_scale_name(s.name)] = (sc.view(np.uint8), 0, (rows,))
        if "token_embd" in s.name:
            active += nbytes / hp.n_vocab            # one row per token
        elif "_exps" in s.name:
            active += nbytes * k / ne                # k of the n_expert experts
        else:
            active += nbytes
    torch.cuda.synchronize()
    return out, active


def time_decode(eng, n_ctx: int, n_steps: int, vocab: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    st = eng.new_state(n_ctx, "f16")
    eng.eval(st, rng.integers(0, vocab, 32).astype(np.int32))
    tok = np.array([int(rng.integers(0, vocab))], np.int32)
    for _ in range(4):  # eager step, graph capture, warm replays
        eng.eval(st, tok)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        eng.eval(st, tok)
    return n_steps / (time.perf_counter() - t0)


def profile(torch, eng, vocab: int, n_steps: int = 8, prefill: int = 1024) -> str:
    """Per-kernel GPU time (CUPTI via torch.profiler) of a few graph-replayed decode steps,
    then of one prefill of `prefill` tokens."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    def table(prof):
        """GPU kernels grouped by name and grid (the grid tells the shapes apart): launches,
        mean and total microseconds, sorted by total; and "wall": how far each launch moved
        the end of the GPU's work (its end minus the latest end before it, 0 if inside), which
        sums to the busy span: PDL overlap makes the durations add up to more than that."""
        import os
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text()).get("traceEvents", [])
        Path(path).unlink()
        groups: dict = {}
        kernels = sorted((ev for ev in events if ev.get("cat") == "kernel"), key=lambda ev: float(ev["ts"]))
        last_end = None
        for ev in kernels:
            name = ev["name"].replace("(anonymous namespace)::", "").replace("nemocpu::cuda::", "")
            name = name.removeprefix("void ").split("(")[0]
            key = (name[:48], str(ev.get("args", {}).get("grid")))
            g = groups.setdefault(key, [0, 0.0, 0.0])
            start, dur = float(ev["ts"]), float(ev.get("dur", 0.0))
            end = start + dur
            # a gap between steps (host launch of the next graph) is not a kernel's doing
            wall = dur if last_end is None or start > last_end + 50.0 else max(0.0, end - last_end)
            last_end = end if last_end is None else max(last_end, end)
            g[0] += 1
            g[1] += dur
            g[2] += wall
        total = sum(g[1] for g in groups.values())
        wall_total = sum(g[2] for g in groups.values())
        lines = [f"{'kernel':48} {'grid':>16} {'n':>6} {'mean us':>9} {'total us':>10} {'share':>6} {'wall us':>9}"]
        for (name, grid), (n, dur, wall) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:30]:
            lines.append(f"{name:48} {grid:>16} {n:>6} {dur / n:9.2f} {dur:10.1f} {100 * dur / total:5.1f}% {wall / n:9.2f}")
        lines.append(f"GPU kernel time {total:.0f} us; busy span (sum of wall) {wall_total:.0f} us")
        # what a step spends outside kernels: copies on the GPU, runtime calls on the host
        other: dict = {}
        for ev in events:
            if ev.get("cat") in ("gpu_memcpy", "gpu_memset", "cuda_runtime", "cuda_driver") and "dur" in ev:
                o = other.setdefault((ev["cat"], ev["name"][:40]), [0, 0.0])
                o[0] += 1
                o[1] += float(ev["dur"])
        for (cat, name), (n, dur) in sorted(other.items(), key=lambda kv: -kv[1][1])[:8]:
            lines.append(f"  {cat:12} {name:40} {n:6} x {dur / n:8.2f} us")
        if kernels:
            span = max(float(ev["ts"]) + float(ev.get("dur", 0.0)) for ev in kernels) - float(kernels[0]["ts"])
            lines.append(f"first kernel start to last kernel end {span:.0f} us")
        return "\n".join(lines)

    st = eng.new_state(prefill + 64, "f16")
    eng.eval(st, np.arange(32, dtype=np.int32) % vocab)
    tok = np.array([7], np.int32)
    for _ in range(3):
        eng.eval(st, tok)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n_steps):
            eng.eval(st, tok)
        dt = time.perf_counter() - t0
    out = f"decode, {n_steps} steps ({1e6 * dt / n_steps:.0f} us each, profiled):\n" + table(prof)
    if not prefill:
        return out
    ids = np.random.default_rng(3).integers(0, vocab, prefill).astype(np.int32)
    eng.eval(eng.new_state(prefill + 8, "f16"), ids)  # warm
    st = eng.new_state(prefill + 8, "f16")
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        eng.eval(st, ids)
    return out + f"\nprefill of {prefill} tokens:\n" + table(prof)


def time_prefill(eng, n: int, vocab: int, reps: int = 2) -> float:
    rng = np.random.default_rng(n)
    ids = rng.integers(0, vocab, n).astype(np.int32)
    eng.eval(eng.new_state(n + 8, "f16"), ids[: min(n, 1024)])  # warm-up (kernel attributes, scratch)
    best = 0.0
    for _ in range(reps):
        st = eng.new_state(n + 8, "f16")
        t0 = time.perf_counter()
        eng.eval(st, ids)
        best = max(best, n / (time.perf_counter() - t0))
        del st
    return best


def peer_transformers(torch, hp: arch.HParams, prefill: list[int], n_decode: int) -> dict:
    """transformers' NemotronHForCausalLM, bf16, random init on the GPU, same shapes."""
    import transformers
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(
        vocab_size=hp.n_vocab, hidden_size=hp.n_embd, hybrid_override_pattern=hp.layer_kinds,
        num_hidden_layers=len(hp.layer_kinds), num_attention_heads=hp.n_head, num_key_value_heads=hp.n_head_kv,
        head_dim=hp.head_dim, mamba_num_heads=hp.ssm_n_head, mamba_head_dim=hp.ssm_head_dim,
        ssm_state_size=hp.ssm_d_state, n_groups=hp.ssm_n_group, conv_kernel=hp.ssm_conv_kernel,
        n_routed_experts=hp.n_expert, num_experts_per_tok=hp.n_expert_used, moe_intermediate_size=hp.n_ff_exp,
        moe_shared_expert_intermediate_size=hp.n_ff_shexp, n_shared_experts=1, intermediate_size=hp.n_ff_exp,
        norm_topk_prob=True, routed_scaling_factor=hp.expert_weights_scale, n_group=1, topk_group=1,
        layer_norm_epsilon=hp.rms_eps, tie_word_embeddings=False, use_mamba_kernels=False)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = NemotronHForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    res = {"transformers": transformers.__version__, "torch": torch.__version__}
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    with torch.no_grad():
        for n in prefill:
            ids = torch.randint(0, hp.n_vocab, (1, n), device="cuda", generator=g)
            try:
                model(ids, logits_to_keep=1)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids, logits_to_keep=1)
                torch.cuda.synchronize()
                res[f"prefill_{n}_tok_s"] = n / (time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - report what the peer cannot do
                res[f"prefill_{n}_tok_s"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
                torch.cuda.empty_cache()
        ids = torch.randint(0, hp.n_vocab, (1, 32), device="cuda", generator=g)
        kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        model.generate(ids, max_new_tokens=n_decode + 1, min_new_tokens=n_decode + 1, **kw)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        res["decode_tok_s"] = n_decode / ((t2 - t1) - (t1 - t0))
    del model
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=52)
    ap.add_argument("--types", nargs="+", default=["fp8", "q8_0", "q4_0"])
    ap.add_argument("--prefill", nargs="*", type=int, default=[512, 8192])
    ap.add_argument("--decode-steps", type=int, default=256)
    ap.add_argument("--peer", action="store_true", help="also time transformers' NemotronH in bf16")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="per-kernel decode profile of each type, prefill profile of the first")
    args = ap.parse_args()

    import torch

    hp = nano_hparams(args.layers)
    res = {"gpu": torch.cuda.get_device_name(), "layers": args.layers, "pattern": hp.layer_kinds,
           "cuda_build": core.cuda_build()}
    bw = copy_bandwidth(torch)
    res["copy_bandwidth_GBps"] = bw / 1e9
    print(f"{res['gpu']}: device copy {bw / 1e9:.0f} GB/s (read + write)", flush=True)
    for wtype in args.types:
        t0 = time.perf_counter()
        tensors, active = make_tensors(torch, hp, wtype)
        eng = core.CudaEngine(hp.as_dict(), tensors, 1, 0.0)
        del tensors
        torch.cuda.empty_cache()
        r = {"build_s": time.perf_counter() - t0, "active_bytes_per_token": active,
             "weights_on_gpu_bytes": eng.memory_report()["weights_repacked_bytes"],
             "bound_tok_s": bw / active}
        r["decode_tok_s"] = time_decode(eng, 8192 + 64, args.decode_steps, hp.n_vocab)
        r["decode_of_bound"] = r["decode_tok_s"] / r["bound_tok_s"]
        print(f"{wtype}: decode {r['decode_tok_s']:.1f} tok/s, bound {r['bound_tok_s']:.0f} tok/s "
              f"({100 * r['decode_of_bound']:.0f}%), {active / 1e9:.2f} GB read per token", flush=True)
        if args.profile:  # decode for every type, prefill for the first
            print(profile(torch, eng, hp.n_vocab, prefill=1024 if wtype == args.types[0] else 0), flush=True)
        for n in args.prefill:
            r[f"prefill_{n}_tok_s"] = time_prefill(eng, n, hp.n_vocab)
            print(f"{wtype}: prefill {n}: {r[f'prefill_{n}_tok_s']:.0f} tok/s", flush=True)
        res[wtype] = r
        del eng
        torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
    if args.peer:
        try:
            res["transformers_bf16"] = peer_transformers(torch, hp, [n for n in args.prefill if n <= 512], 32)
        except Exception as e:  # noqa: BLE001
            res["transformers_bf16"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
        print("transformers bf16:", res["transformers_bf16"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
