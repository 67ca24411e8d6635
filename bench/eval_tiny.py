"""Evaluate nemocpu's chat path on the tiny model's 100 eval conversations.

For every conversation in ../shared/models/nemotron-h-tiny/eval.json: the chat template must
render exactly ``prompt_text``, the tokenizer must give exactly ``prompt_token_ids``, and
greedy generation (max 320 new tokens, as in the reference run) is compared token by token
with transformers' float32 greedy response. Prints per-task answer accuracy (the text after
</think> equals the expected answer and generation stopped on <|im_end|>).

    python bench/eval_tiny.py                   # F32 GGUF converted from the HF checkpoint
    python bench/eval_tiny.py --model X.gguf    # any conversion of the tiny model
    python bench/eval_tiny.py --multiturn       # prompt tokens processed per turn, 5-turn chat
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_DIR = REPO.parent / "shared" / "models" / "nemotron-h-tiny"
CACHE = REPO / "bench" / "cache"
MAX_NEW_TOKENS = 320


def tiny_f32_gguf() -> Path:
    out = CACHE / "nemotron-h-tiny-f32.gguf"
    if not out.exists():
        from nemocpu.convert import convert
        CACHE.mkdir(parents=True, exist_ok=True)
        convert(TINY_DIR, out, outtype="f32", progress=False)
    return out


def run_item(model, item) -> dict:
    from nemocpu.generate import encode_chat
    kw = dict(enable_thinking=item["enable_thinking"], tools=item["tools"])
    text, ids = encode_chat(model, item["messages"], **kw)      # what model.chat runs
    t0 = time.perf_counter()
    r = model.chat(item["messages"], temperature=0, max_tokens=MAX_NEW_TOKENS, **kw)
    im_end = model.tokenizer.token_to_id("<|im_end|>")
    return {
        "id": item["id"], "task": item["task"], "think": item["enable_thinking"],
        "prompt_text_ok": text == item["prompt_text"],
        "prompt_ids_ok": ids == item["prompt_token_ids"],
        "response_ok": r.token_ids == item["transformers_greedy_ids"],
        "correct": r.content == item["expected_answer"] and bool(r.token_ids) and r.token_ids[-1] == im_end,
        "reference_correct": item["answer_correct"],
        "seconds": time.perf_counter() - t0, "tokens": r.completion_tokens,
    }


def evaluate(model, items) -> list[dict]:
    return [run_item(model, it) for it in items]


def report(rows, reference_accuracy) -> str:
    cells = defaultdict(list)
    for r in rows:
        cells[f"{r['task']}|{'think' if r['think'] else 'nothink'}"].append(r)
    lines = ["| task | n | accuracy | transformers | same response as transformers |", "| --- | --- | --- | --- | --- |"]
    for key in sorted(cells):
        rs = cells[key]
        acc = sum(r["correct"] for r in rs) / len(rs)
        ref = reference_accuracy.get(key, {}).get("accuracy")
        same = sum(r["response_ok"] for r in rs)
        lines.append(f"| {key.replace('|', ', ')} | {len(rs)} | {acc:.2f} | {ref if ref is not None else '-'} | {same}/{len(rs)} |")
    n = len(rows)
    lines.append("")
    lines.append(f"overall accuracy {sum(r['correct'] for r in rows) / n:.2f} over {n} conversations; "
                 f"prompt text exact {sum(r['prompt_text_ok'] for r in rows)}/{n}, "
                 f"prompt ids exact {sum(r['prompt_ids_ok'] for r in rows)}/{n}, "
                 f"greedy response identical to transformers {sum(r['response_ok'] for r in rows)}/{n}")
    toks = sum(r["tokens"] for r in rows)
    secs = sum(r["seconds"] for r in rows)
    lines.append(f"{toks} tokens generated in {secs:.1f} s")
    return "\n".join(lines)


MULTITURN_QUESTIONS = ["Calculate 401 + 50.", "Compute 48 × 17.", "How many times does the letter \"e\" appear in \"Erdbeere\"?",
                       "Reverse the list: apple, pear, plum.", "Calculate 250 - 75."]


def multiturn(model, turns: int = 5) -> str:
    """Prompt tokens evaluated per turn with the prefix cache vs re-processing the whole chat."""
    from nemocpu.generate import Conversation, render_chat
    conv = Conversation(model, enable_thinking=True, temperature=0, max_tokens=MAX_NEW_TOKENS)
    lines = ["| turn | prompt tokens (full re-process) | evaluated with prefix reuse | answer |",
             "| --- | --- | --- | --- |"]
    tot_full = tot_cached = 0
    for i, q in enumerate(MULTITURN_QUESTIONS[:turns], 1):
        r = conv.send(q)
        full = len(model.tokenizer.encode(render_chat(model, conv.full_messages()[:-1]), parse_special=True))
        assert full == r.prompt_tokens
        tot_full += full
        tot_cached += r.prompt_tokens_evaluated
        lines.append(f"| {i} | {full} | {r.prompt_tokens_evaluated} | {r.text!r} |")
    lines.append(f"| total | {tot_full} | {tot_cached} | {tot_cached / tot_full:.0%} of full |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF of the tiny model (default: F32 conversion of the HF checkpoint)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--limit", type=int, help="only the first N conversations")
    ap.add_argument("--multiturn", action="store_true", help="measure prefix reuse over a 5-turn chat")
    ap.add_argument("--json", help="write per-conversation results to this file")
    args = ap.parse_args(argv)

    import nemocpu
    path = args.model or tiny_f32_gguf()
    model = nemocpu.load(path, threads=args.threads, n_ctx=4096)
    print(f"model {path} ({model.variant}, {model.threads} threads)")
    if args.multiturn:
        print(multiturn(model))
        return 0
    data = json.loads((TINY_DIR / "eval.json").read_text())
    items = data["prompts"][:args.limit] if args.limit else data["prompts"]
    rows = evaluate(model, items)
    print(report(rows, data["accuracy"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
