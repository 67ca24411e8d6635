"""``nemocpu run [MODEL] -p TEXT -n N``: raw completion (no chat template), streamed."""

from __future__ import annotations

import json
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("run", help="complete a raw prompt (no chat template)",
                       description="Continue TEXT with the model, token by token; greedy at --temp 0.")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded tiny model)")
    p.add_argument("-p", "--prompt", required=True, help="text to continue")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all usable CPUs)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (needs a NEMOCPU_CUDA build; docs/cuda.md)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length (default 4096)")
    p.add_argument("--add-bos", action="store_true", help="prepend BOS if the tokenizer wants one")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (prompt ids, generated ids, text, timings) instead of streaming")
    p.set_defaults(func=main)


def main(args) -> int:
    import nemocpu
    from nemocpu.errors import NemocpuError
    from nemocpu.sampling import Sampler, SamplingParams
    from nemocpu.tokenizer import StreamDecoder

    if args.n_predict < 0:
        raise NemocpuError("-n must be >= 0")
    try:
        params = SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                                min_p=args.min_p, seed=args.seed)
    except ValueError as e:
        raise NemocpuError(str(e)) from None
    model = nemocpu.load(args.model, threads=args.threads, n_ctx=args.n_ctx, device=args.device)
    tok = model.tokenizer
    prompt_ids = model.tokenize(args.prompt, add_special=args.add_bos)
    if not prompt_ids:
        raise NemocpuError("the prompt is empty after tokenization")
    if len(prompt_ids) + args.n_predict > args.n_ctx:
        raise NemocpuError(f"prompt ({len(prompt_ids)} tokens) + -n {args.n_predict} exceeds --n-ctx {args.n_ctx}")

    sampler = Sampler(params)
    stream = StreamDecoder(tok)
    sess = model.session()
    out = sys.stdout
    if not args.json:
        out.write(args.prompt)
        out.flush()
    t0 = time.perf_counter()
    logits = sess.eval(prompt_ids)
    t_prompt = time.perf_counter() - t0
    generated, text = [], []
    t1 = time.perf_counter()
    for _ in range(args.n_predict):
        nxt = sampler.sample(logits[-1], history=prompt_ids + generated)
        if nxt in tok.eos_ids and not args.ignore_eos:
            break
        generated.append(nxt)
        piece = stream.push(nxt)
        text.append(piece)
        if not args.json and piece:
            out.write(piece)
            out.flush()
        if len(generated) < args.n_predict:
            logits = sess.eval([nxt])
    tail = stream.flush()
    text.append(tail)
    t_gen = time.perf_counter() - t1
    if args.json:
        json.dump({"model": model.path, "prompt": args.prompt, "prompt_ids": prompt_ids,
                   "generated_ids": generated, "text": "".join(text),
                   "prompt_seconds": round(t_prompt, 6), "generation_seconds": round(t_gen, 6)}, out)
        out.write("\n")
    else:
        out.write(tail + "\n")
        rate = len(generated) / t_gen if t_gen > 0 else float("inf")
        print(f"[{len(prompt_ids)} prompt tokens in {t_prompt:.3f} s, {len(generated)} generated at "
              f"{rate:.1f} tok/s, {model.variant}, {model.threads} threads]", file=sys.stderr)
    return 0
