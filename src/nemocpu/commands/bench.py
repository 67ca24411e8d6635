"""``nemocpu bench MODEL -p 512 -n 64 -t 2``: prefill and decode speed, like llama-bench.

Tests follow llama-bench's definitions so the two tables compare line by line:
``ppP`` = one eval of P tokens, ``tgN`` = N single-token evals, each starting from a state
holding --depth D tokens of context (0 = empty). Token ids are random but valid. The depth
context is filled once (in chunks) and snapshotted; each repetition restores it, so only
the test itself is timed. A warm-up run precedes the timed repetitions; figures are medians.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill and decode speed",
                       description="Prefill (ppP) and decode (tgN) tokens/s on random token ids, "
                                   "llama-bench style; medians over --reps.")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded tiny model)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prefill test length, 0 = skip (default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=64, help="decode test length, 0 = skip (default 64)")
    p.add_argument("-t", "--threads", type=int, default=None, help="worker threads (default: all usable CPUs)")
    p.add_argument("-d", "--depth", type=int, default=0, help="tokens of context before each test (default 0)")
    p.add_argument("--fill-threads", type=int, default=None,
                   help="threads for filling the --depth context, which is not timed (default: -t)")
    p.add_argument("-r", "--reps", type=int, default=3, help="timed repetitions (default 3)")
    p.add_argument("--kv-type", choices=("f16", "f32"), default="f16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (needs a NEMOCPU_CUDA build; docs/cuda.md)")
    p.add_argument("--no-repack", action="store_true",
                   help="read Q8_0/Q4_0 weights in the file's layout instead of repacking them at load")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=main)


def _fill(sess, ids, chunk: int = 512) -> None:
    for i in range(0, len(ids), chunk):
        sess.eval(ids[i:i + chunk])


def _rewind(sess, base) -> None:
    """Back to the start of a test: the depth snapshot, or an empty state."""
    if base is None:
        sess.reset()
    else:
        sess.restore(base)


def _prefill_seconds(sess, base, ids) -> float:
    _rewind(sess, base)
    t0 = time.perf_counter()
    sess.eval(ids)
    return time.perf_counter() - t0


def _decode_seconds(sess, base, ids) -> float:
    _rewind(sess, base)
    t0 = time.perf_counter()
    for tok in ids:
        sess.eval([tok])
    return time.perf_counter() - t0


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:        # not POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def run(args) -> dict:
    import numpy as np

    import nemocpu
    from nemocpu.bench_stats import n_params, state_bytes_per_token, weight_bytes_per_token
    from nemocpu.errors import NemocpuError

    for flag, v, lo in (("-p", args.n_prompt, 0), ("-n", args.n_gen, 0), ("--depth", args.depth, 0),
                        ("--reps", args.reps, 1)):
        if v < lo:
            raise NemocpuError(f"{flag} must be >= {lo}, got {v}")
    if args.n_prompt == 0 and args.n_gen == 0:
        raise NemocpuError("nothing to measure: -p and -n are both 0")
    n_ctx = args.depth + max(args.n_prompt, args.n_gen)
    t_load = time.perf_counter()
    model = nemocpu.load(args.model, threads=args.threads, n_ctx=n_ctx, kv_type=args.kv_type, device=args.device,
                         repack=None if args.device != "cpu" else not args.no_repack)
    load_s = time.perf_counter() - t_load
    t_warm = time.perf_counter()
    model.warm_up()                       # repack every matrix now, not inside a timed test
    warm_s = time.perf_counter() - t_warm
    hp = model.config
    rng = np.random.default_rng(args.seed)
    depth_ids = rng.integers(0, model.n_vocab, args.depth).astype(np.int32)
    prompt_ids = rng.integers(0, model.n_vocab, args.n_prompt).astype(np.int32)
    gen_ids = [int(t) for t in rng.integers(0, model.n_vocab, args.n_gen)]

    sess = model.session()
    t0 = time.perf_counter()
    test_threads = model.threads
    if args.fill_threads:
        model.set_threads(args.fill_threads)
    _fill(sess, depth_ids)
    model.set_threads(test_threads)
    fill_s = time.perf_counter() - t0
    base = sess.snapshot() if args.depth else None

    tests = []
    for name, n, timer, ids in ((f"pp{args.n_prompt}", args.n_prompt, _prefill_seconds, prompt_ids),
                                (f"tg{args.n_gen}", args.n_gen, _decode_seconds, gen_ids)):
        if n == 0:
            continue
        timer(sess, base, ids)                                  # warm-up: page in weights, start threads
        secs = [timer(sess, base, ids) for _ in range(args.reps)]
        tps = [n / s for s in secs]
        tests.append({"test": name + (f" @ d{args.depth}" if args.depth else ""), "n_tokens": n,
                      "seconds": secs, "tps": statistics.median(tps),
                      "tps_stdev": statistics.stdev(tps) if len(tps) > 1 else 0.0})

    tensors = model._file.tensors
    weights = weight_bytes_per_token(hp, tensors)
    # the decode test's context grows from depth to depth + n - 1: charge the average
    state = state_bytes_per_token(hp, args.depth + (args.n_gen - 1) // 2, args.kv_type)
    out = {
        "model": model.path, "arch": hp.arch, "layers": hp.layer_kinds, "weight_type": _weight_type_name(tensors),
        "file_bytes": model.memory_report()["file_bytes"], "params": n_params(tensors),
        "variant": model.variant, "threads": model.threads, "depth": args.depth, "reps": args.reps,
        "kv_type": args.kv_type, "depth_fill_seconds": fill_s,
        "tests": tests,
        "prefill_tps": next((t["tps"] for t in tests if t["test"].startswith("pp")), None),
        "decode_tps": next((t["tps"] for t in tests if t["test"].startswith("tg")), None),
        "bytes_per_token": weights + state, "weight_bytes_per_token": weights, "state_bytes_per_token": state,
        "peak_rss_bytes": _peak_rss_bytes(), "load_seconds": load_s, "repack_seconds": warm_s,
        "weights_repacked_bytes": model.memory_report().get("weights_repacked_bytes", 0),
    }
    out["decode_gbs"] = out["decode_tps"] * out["bytes_per_token"] / 1e9 if out["decode_tps"] else None
    return out


def _weight_type_name(tensors) -> str:
    """The type most weight bytes are stored in (what llama-bench's "model" column shows)."""
    from collections import Counter

    from nemocpu.arch import GGML_TYPE_I8 as I8      # FP8 weights are stored as I8 (+ scales)
    from nemocpu.gguf_file import ggml_type_name
    c = Counter()
    for name, (data, t, _ne) in tensors.items():
        if not name.endswith("_scale"):
            c["FP8" if t == I8 else ggml_type_name(t)] += data.nbytes
    return c.most_common(1)[0][0]


def print_table(r: dict, model_desc: str, out=None) -> None:
    out = out or sys.stdout
    rows = [("model", "size", "params", "backend", "threads", "test", "t/s")]
    for t in r["tests"]:
        rows.append((model_desc, f"{r['file_bytes'] / 2**30:.2f} GiB", f"{r['params'] / 1e9:.2f} B",
                     f"nemocpu {r['variant']}", str(r["threads"]), t["test"],
                     f"{t['tps']:.2f} ± {t['tps_stdev']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 2, 4, 5, 6}
    fmt = lambda row: "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)   # noqa: E731
                                        for i, (c, w) in enumerate(zip(row, widths))) + " |"
    print(fmt(rows[0]), file=out)
    print("| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |",
          file=out)
    for row in rows[1:]:
        print(fmt(row), file=out)
    extra = (f"\nbytes touched per decoded token: {r['bytes_per_token'] / 1e6:.1f} MB "
             f"(weights {r['weight_bytes_per_token'] / 1e6:.1f} MB, state+KV {r['state_bytes_per_token'] / 1e6:.1f} MB)")
    if r["decode_gbs"]:
        extra += f" -> decode reads {r['decode_gbs']:.2f} GB/s"
    if r["peak_rss_bytes"]:
        extra += f"; peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
    print(extra, file=out)


def main(args) -> int:
    r = run(args)
    if args.json:
        json.dump(r, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_table(r, f"{r['arch']} {len(r['layers'])}L {r['weight_type']}")
    return 0
