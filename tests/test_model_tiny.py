"""The trained tiny model (../shared/models/nemotron-h-tiny) against transformers' float32
greedy outputs recorded in its reference.json.

F32 and BF16 files must reproduce every greedy continuation exactly (the tiny model's
time_step_min is 0, so there is no dt clamp to mirror). Quantized files are measured by
teacher-forced top-1 agreement: the reference sequence is fed once and, at every generated
position, our argmax must equal the reference token (free-running comparison would count
everything after a first divergence as wrong).
"""

from __future__ import annotations

import numpy as np
import pytest

import nemocpu
from helpers.engine_cases import greedy_continuation

STOP_IDS = {2, 4}       # </s>, <|im_end|> (reference.json "stop")


def greedy(model, prompt_ids, max_new):
    return greedy_continuation(model.session().eval, prompt_ids, max_new, STOP_IDS)


def agreement(model, prompt_ids, ref_ids) -> tuple[int, int]:
    """(positions where our argmax equals the reference token, positions)."""
    logits = model.session().eval(prompt_ids + ref_ids[:-1], all_logits=True)
    ours = np.argmax(logits[len(prompt_ids) - 1:], axis=1)
    return int(np.sum(ours == np.asarray(ref_ids))), len(ref_ids)


@pytest.fixture(scope="module", params=["f32", "bf16"])
def exact_model(request, tiny_gguf):
    return nemocpu.load(tiny_gguf(request.param), threads=2, n_ctx=2048)


def test_greedy_continuations_exact(exact_model, tiny_reference):
    for p in tiny_reference["prompts"]:
        assert exact_model.tokenize(p["prompt_text"], parse_special=True) == p["prompt_token_ids"], p["name"]
        got = greedy(exact_model, p["prompt_token_ids"], tiny_reference["max_new_tokens"])
        assert got == p["greedy_token_ids"], p["name"]
        assert exact_model.detokenize(got) == p["greedy_text"], p["name"]


def test_first_position_top5(exact_model, tiny_reference):
    for p in tiny_reference["prompts"]:
        logits = exact_model.session().eval(p["prompt_token_ids"])[0]
        top = [t["token_id"] for t in p["first_position_top5"]]
        assert np.argsort(-logits, kind="stable")[:5].tolist() == top, p["name"]
        want = np.array([t["logit"] for t in p["first_position_top5"]])
        np.testing.assert_allclose(logits[top], want, rtol=0, atol=1e-4 * np.abs(want).max())  # as parity


@pytest.mark.parametrize("outtype", ["q8_0", "fp8", "fp8-modelopt"])
def test_quantized_token_agreement(tiny_gguf, tiny_reference, outtype):
    model = nemocpu.load(tiny_gguf(outtype), threads=2, n_ctx=2048)
    same = total = 0
    for p in tiny_reference["prompts"]:
        s, n = agreement(model, p["prompt_token_ids"], p["greedy_token_ids"])
        same, total = same + s, total + n
    assert same / total >= 0.95, f"{outtype}: {same}/{total} tokens agree"


def test_embedded_default_model_runs(tiny_reference):
    """The embedded Q8_0 demo model loads with no path and answers like the reference."""
    model = nemocpu.load(threads=2)
    p = tiny_reference["prompts"][1]
    s, n = agreement(model, p["prompt_token_ids"], p["greedy_token_ids"])
    assert s / n >= 0.9


def test_chat_prefill_in_chunks_is_bit_identical():
    """The chat path evaluates prompts in pieces of the engine's own prefill step (so Ctrl-C can
    land), so the logits are the same bits as one call."""
    import numpy as np

    from nemocpu.prefix_cache import PrefixCache

    model = nemocpu.load(threads=2, n_ctx=2048)
    step = model.session().prefill_step
    assert step == 256
    ids = np.random.default_rng(0).integers(10, 4000, 2 * step + 188).tolist()
    whole = model.session().eval(ids, all_logits=True)
    chunked = PrefixCache(model.session()).eval(ids, all_logits=True)
    assert np.array_equal(whole, chunked)
