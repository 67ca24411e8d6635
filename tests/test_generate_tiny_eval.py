"""Done-when check of the chat path on the real engine: for the tiny model's 100 eval
conversations, ``model.chat`` renders exactly the reference prompt, tokenizes it to exactly
the reference ids and reproduces transformers' float32 greedy response (F32 GGUF)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _eval_module():
    spec = importlib.util.spec_from_file_location("eval_tiny", REPO / "bench" / "eval_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_f32(tiny_gguf):
    import nemocpu
    return nemocpu.load(tiny_gguf("f32"), n_ctx=4096)


@pytest.mark.slow
def test_eval_conversations_match_transformers(tiny_f32, tiny_dir):
    data = json.loads((tiny_dir / "eval.json").read_text())
    rows = _eval_module().evaluate(tiny_f32, data["prompts"])
    assert len(rows) == 100
    assert all(r["prompt_text_ok"] for r in rows), [r["id"] for r in rows if not r["prompt_text_ok"]]
    assert all(r["prompt_ids_ok"] for r in rows), [r["id"] for r in rows if not r["prompt_ids_ok"]]
    same = sum(r["response_ok"] for r in rows)
    assert same >= 98, [r["id"] for r in rows if not r["response_ok"]]
    # our answer correctness agrees with transformers' wherever the responses are identical
    assert all(r["correct"] == r["reference_correct"] for r in rows if r["response_ok"])


def test_chat_streams_reasoning_then_answer(tiny_f32):
    gen = tiny_f32.chat([{"role": "user", "content": "Calculate 401 + 50."}], temperature=0, stream=True)
    chunks = list(gen)
    assert gen.result.text == "401 + 50 = 451" and gen.result.finish_reason == "stop"
    assert "".join(c.text for c in chunks if c.kind == "content") == gen.result.text
    assert "".join(c.text for c in chunks if c.kind == "reasoning") == gen.result.reasoning
    assert gen.result.reasoning.endswith("Result: 451")


def test_multiturn_reuses_state_and_matches_a_fresh_run(tiny_f32):
    from nemocpu.generate import Conversation
    from nemocpu.prefix_cache import PrefixCache
    conv = Conversation(tiny_f32, temperature=0, max_tokens=200)
    answers = [conv.send(q) for q in ("Calculate 401 + 50.", "Compute 48 × 17.", "Calculate 250 - 75.")]
    assert all(a.prompt_tokens_evaluated < a.prompt_tokens for a in answers[1:])
    # the cached third turn gives exactly what a fresh session computes from scratch
    fresh = tiny_f32.chat(conv.full_messages()[:-1], temperature=0, max_tokens=200,
                          cache=PrefixCache(tiny_f32.session()))
    assert fresh.prompt_tokens_evaluated == fresh.prompt_tokens
    assert fresh.token_ids == answers[-1].token_ids


@pytest.mark.slow
def test_multiturn_chat_matches_transformers_turn_by_turn(tiny_f32, tiny_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny tensors: one thread is several times faster on a shared machine
    try:
        _compare_turns(tiny_f32, hf, torch)
    finally:
        torch.set_num_threads(threads)


def _compare_turns(tiny_f32, hf, torch):
    from nemocpu.generate import Conversation, render_chat
    # short turns keep transformers' (slow, reference-PyTorch Mamba) side of the test cheap
    conv = Conversation(tiny_f32, temperature=0, max_tokens=40)
    for q, think in (("What is 55 × 4?", False), ("Calculate 401 + 50.", True), ("Compute 40 × 2.", False)):
        ours = conv.send(q, enable_thinking=think)
        assert ours.prompt_tokens_evaluated < ours.prompt_tokens or len(conv.messages) == 2
        ids = tiny_f32.tokenizer.encode(render_chat(tiny_f32, conv.full_messages()[:-1], enable_thinking=think),
                                        parse_special=True)
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=[2, 4])
        assert out[0, len(ids):].tolist() == ours.token_ids
