#!/usr/bin/env python3
"""Quantization quality on the tiny trained model: KL divergence and token agreement vs F32.

For each of the 12 reference prompts, the sequence prompt + transformers' greedy answer
(reference.json) is evaluated once by every file (teacher forcing). Per file we report:

* KL(P_f32 || P_quant), mean / p99 / max over all positions (as llama-perplexity's
  --kl-divergence does, natural log);
* top-1 agreement with F32 over all positions ("same top" in llama.cpp's terms);
* top-1 agreement with the reference greedy token at the generated positions;
* free-running greedy: prompts whose continuation equals the reference exactly.

    python bench/quant_quality.py [--types f32 bf16 q8_0 fp8 fp8-modelopt q4_0] [--threads 2]

Files are converted with nemocpu's converter into bench/cache/quant_quality/ (reused).
"fp8" quantizes the BF16 checkpoint (per-row scales); "fp8-modelopt" keeps the E4M3 codes
and scales of the ModelOpt FP8 checkpoint in ../shared/models/nemotron-h-tiny-fp8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared" / "models"
CACHE = REPO / "bench" / "cache" / "quant_quality"
STOP_IDS = {2, 4}


def gguf_for(outtype: str) -> Path:
    from nemocpu.convert import convert

    src = SHARED / ("nemotron-h-tiny-fp8" if outtype == "fp8-modelopt" else "nemotron-h-tiny")
    out = CACHE / f"tiny-{outtype}.gguf"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        convert(src, out, outtype="auto" if outtype == "fp8-modelopt" else outtype, progress=False)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def greedy(model, prompt, max_new):
    sess = model.session()
    logits = sess.eval(prompt)[0]
    out = []
    while len(out) < max_new:
        out.append(int(np.argmax(logits)))
        if out[-1] in STOP_IDS:
            break
        logits = sess.eval(out[-1:])[0]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["bf16", "q8_0", "fp8", "fp8-modelopt", "q4_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    import nemocpu

    ref = json.loads((SHARED / "nemotron-h-tiny" / "reference.json").read_text())
    prompts = ref["prompts"]
    seqs = [p["prompt_token_ids"] + p["greedy_token_ids"][:-1] for p in prompts]

    base = nemocpu.load(gguf_for("f32"), threads=args.threads, n_ctx=2048)
    base_lp = [log_softmax(base.session().eval(s, all_logits=True)) for s in seqs]
    results = {}
    for t in args.types:
        path = gguf_for(t)
        m = nemocpu.load(path, threads=args.threads, n_ctx=2048)
        kls, same_top, n_pos, ref_same, n_gen, exact = [], 0, 0, 0, 0, 0
        t0 = time.perf_counter()
        for p, s, blp in zip(prompts, seqs, base_lp):
            lp = log_softmax(m.session().eval(s, all_logits=True))
            kls.append(np.sum(np.exp(blp) * (blp - lp), axis=-1))
            top = lp.argmax(axis=-1)
            same_top += int(np.sum(top == blp.argmax(axis=-1)))
            n_pos += len(s)
            gen = top[len(p["prompt_token_ids"]) - 1:]
            ref_same += int(np.sum(gen == np.asarray(p["greedy_token_ids"])))
            n_gen += len(p["greedy_token_ids"])
            exact += greedy(m, p["prompt_token_ids"], ref["max_new_tokens"]) == p["greedy_token_ids"]
        kl = np.concatenate(kls)
        results[t] = {"file_mib": round(path.stat().st_size / 2**20, 2), "kl_mean": float(kl.mean()),
                      "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
                      "same_top_vs_f32": same_top / n_pos, "agree_with_reference": ref_same / n_gen,
                      "exact_greedy_prompts": f"{exact}/{len(prompts)}", "positions": n_pos,
                      "seconds": round(time.perf_counter() - t0, 2)}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"tiny model, {len(prompts)} prompts, {sum(len(s) for s in seqs)} positions; KL(F32 || type) in nats")
    print("| type | file MiB | KL mean | KL p99 | KL max | same top-1 as F32 | top-1 = reference (generated) | "
          "exact greedy prompts |")
    print("|---|---|---|---|---|---|---|---|")
    for t, r in results.items():
        print(f"| {t} | {r['file_mib']} | {r['kl_mean']:.2e} | {r['kl_p99']:.2e} | {r['kl_max']:.2e} | "
              f"{100 * r['same_top_vs_f32']:.2f}% | {100 * r['agree_with_reference']:.2f}% | "
              f"{r['exact_greedy_prompts']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
