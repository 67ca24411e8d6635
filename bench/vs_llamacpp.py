"""nemocpu vs llama.cpp (build 11434) on the same GGUF, the same threads, alternating runs.

For each file: measure N-thread read bandwidth (bench/membw.py), then ROUNDS rounds of
``llama-bench`` and ``nemocpu bench`` (each a fresh process with its own warm-up; which
engine goes first alternates every round, so drift in machine load hits both), and again
the bandwidth at the end. Prints per-engine medians over the rounds, ratios nemocpu /
llama.cpp, and the fraction of the decode bound each reaches:

    bound = read bandwidth / bytes touched per decoded token   (nemocpu.bench_stats)

Both engines read the same file, so the bytes per token are the same for both. The bound
means something only for models far larger than the last-level cache (not the tiny model).

    python bench/vs_llamacpp.py bench/cache/nano16-q4_0.gguf -p 512 -n 64 -t 2 --rounds 3
    python bench/vs_llamacpp.py bench/cache/nano16-q4_0.gguf -p 0 -n 32 -t 2 -d 16384 --rounds 1
    python bench/vs_llamacpp.py FILE.gguf --only nemocpu     # files llama.cpp cannot read (FP8)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llamacpp_build  # noqa: E402
import membw  # noqa: E402


def run_llamacpp(binary: Path, model: str, a) -> dict:
    cmd = [str(binary), "-m", model, "-p", str(a.n_prompt), "-n", str(a.n_gen), "-t", str(a.threads),
           "-r", str(a.reps), "-o", "json"]
    if a.depth:
        cmd += ["-d", str(a.depth)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-bench failed ({r.returncode}) on {model}:\n{r.stderr[-3000:]}")
    out = {}
    for test in json.loads(r.stdout):
        kind = "pp" if test["n_prompt"] > 0 else "tg"
        out[kind] = test["avg_ts"]
        out["build"] = f"b{test.get('build_number')} {test.get('build_commit')}"
    return out


def run_nemocpu(model: str, a) -> dict:
    cmd = [sys.executable, "-m", "nemocpu", "bench", model, "-p", str(a.n_prompt), "-n", str(a.n_gen),
           "-t", str(a.threads), "-r", str(a.reps), "--json"]
    if a.depth:
        cmd += ["-d", str(a.depth)]
    if a.fill_threads:
        cmd += ["--fill-threads", str(a.fill_threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nemocpu bench failed ({r.returncode}) on {model}:\n{r.stderr[-3000:]}")
    j = json.loads(r.stdout)
    out = {"bytes_per_token": j["bytes_per_token"], "peak_rss_bytes": j["peak_rss_bytes"],
           "variant": j["variant"], "file_bytes": j["file_bytes"]}
    if j["prefill_tps"]:
        out["pp"] = j["prefill_tps"]
    if j["decode_tps"]:
        out["tg"] = j["decode_tps"]
    return out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def compare(model: str, a, binary: Path | None) -> dict:
    res = {"model": model, "threads": a.threads, "depth": a.depth, "rounds": a.rounds, "reps_per_run": a.reps,
           "load_before": load_average(), "runs": {"llama.cpp": [], "nemocpu": []}}
    bw = [membw.measure(a.threads, a.membw_mib)["median_gbs"]]
    engines = ["llama.cpp", "nemocpu"] if binary else ["nemocpu"]
    for rnd in range(a.rounds):
        for eng in (engines if rnd % 2 == 0 else engines[::-1]):
            t0 = time.time()
            r = run_llamacpp(binary, model, a) if eng == "llama.cpp" else run_nemocpu(model, a)
            r["wall_s"] = round(time.time() - t0, 1)
            res["runs"][eng].append(r)
            print(f"  round {rnd + 1} {eng}: " + ", ".join(f"{k} {r[k]:.2f} t/s" for k in ("pp", "tg") if k in r),
                  file=sys.stderr, flush=True)
    bw.append(membw.measure(a.threads, a.membw_mib)["median_gbs"])
    res["load_after"] = load_average()
    res["read_gbs"] = bw
    gbs = statistics.median(bw)
    bpt = res["runs"]["nemocpu"][0]["bytes_per_token"]
    res["bytes_per_token"] = bpt
    res["decode_bound_tps"] = gbs * 1e9 / bpt
    for eng, runs in res["runs"].items():
        if not runs:
            continue
        for k in ("pp", "tg"):
            vals = [r[k] for r in runs if k in r]
            if vals:
                res[f"{eng}_{k}"] = statistics.median(vals)
        if f"{eng}_tg" in res:
            res[f"{eng}_tg_bound_fraction"] = res[f"{eng}_tg"] / res["decode_bound_tps"]
    for k in ("pp", "tg"):
        if f"llama.cpp_{k}" in res and f"nemocpu_{k}" in res:
            res[f"ratio_{k}"] = res[f"nemocpu_{k}"] / res[f"llama.cpp_{k}"]
    if binary:
        res["llama.cpp_build"] = res["runs"]["llama.cpp"][0].get("build")
    return res


def report(res: dict) -> str:
    d = f" @ d{res['depth']}" if res["depth"] else ""
    lines = [f"{Path(res['model']).name}: {res['threads']} threads, {res['rounds']} alternating rounds x "
             f"{res['reps_per_run']} reps; load {res['load_before']} -> {res['load_after']}",
             f"  read bandwidth {', '.join(f'{x:.1f}' for x in res['read_gbs'])} GB/s; "
             f"{res['bytes_per_token'] / 1e6:.0f} MB touched per decoded token -> decode bound "
             f"{res['decode_bound_tps']:.1f} t/s"]
    for k, label in (("pp", f"pp{res['n_prompt']}"), ("tg", f"tg{res['n_gen']}")):
        parts = []
        for eng in ("llama.cpp", "nemocpu"):
            if f"{eng}_{k}" in res:
                s = f"{eng} {res[f'{eng}_{k}']:.2f} t/s"
                if k == "tg":
                    s += f" ({100 * res[f'{eng}_tg_bound_fraction']:.0f}% of bound)"
                parts.append(s)
        if parts:
            ratio = f"; ratio {res[f'ratio_{k}']:.2f}x" if f"ratio_{k}" in res else ""
            lines.append(f"  {label}{d}: " + ", ".join(parts) + ratio)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-d", "--depth", type=int, default=0)
    ap.add_argument("-r", "--reps", type=int, default=1, help="repetitions inside each engine run (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--fill-threads", type=int, default=None,
                    help="nemocpu only: threads for the untimed --depth fill (llama-bench has no such option)")
    ap.add_argument("--membw-mib", type=int, default=1024)
    ap.add_argument("--only", choices=("both", "nemocpu"), default="both")
    ap.add_argument("--json", type=Path, help="also write all results to this file")
    a = ap.parse_args(argv)
    binary = llamacpp_build.build() if a.only == "both" else None
    results = []
    for m in a.models:
        print(f"{m} ...", file=sys.stderr, flush=True)
        res = compare(m, a, binary)
        res["n_prompt"], res["n_gen"] = a.n_prompt, a.n_gen
        results.append(res)
        print(report(res), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
