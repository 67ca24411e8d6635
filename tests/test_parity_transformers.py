"""The whole model against transformers 5.23.0's NemotronHForCausalLM (float32, eager), on
random tiny checkpoints of both families, converted to F32 GGUF by nemocpu's converter.

Error measure: for each position, max|ours - theirs| / max|theirs| over the vocabulary
(a per-element relative error is meaningless for logits near zero); the worst position
must be <= 1e-4. transformers clamps dt to time_step_min in its prefill path only
(reference §3.3.5), so nemocpu runs with dt_floor = time_step_min, which does the same.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers.engine_cases import rel_err  # noqa: E402
from helpers.hf_random import make_random_checkpoint  # noqa: E402

import nemocpu  # noqa: E402
from nemocpu.convert import convert  # noqa: E402

REL_TOL = 1e-4
N_DECODE = 64          # greedy steps compared (the 64; under a second per case)
CASES = {
    "moe-MEM*EME*M-g2": dict(pattern="MEM*EME*M", moe=True, n_groups=2),
    # a large time_step_min makes transformers' prefill dt clamp bite (dt_bias is in [-1, 1])
    "moe-M*EM*E-g1-mqa-clamp": dict(pattern="M*EM*E", moe=True, n_groups=1, num_key_value_heads=1,
                                    time_step_min=0.5),
    "moe-*MEEM-g4-mha": dict(pattern="*MEEM", moe=True, n_groups=4, num_key_value_heads=4, seed=3),
    "dense-M-*M--g2-clamp": dict(pattern="M-*M-", moe=False, n_groups=2, seed=5, time_step_min=0.5),
}



@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request, tmp_path_factory):
    """(transformers model, nemocpu model, config) for one random checkpoint."""
    from transformers import NemotronHForCausalLM

    torch.set_num_threads(2)
    kw = dict(CASES[request.param])
    seed = kw.pop("seed", 0)
    d = tmp_path_factory.mktemp(request.param.replace("*", "a"))
    cfg = make_random_checkpoint(d / "hf", seed=seed, dtype="float32", **kw)
    convert(d / "hf", d / "model-f32.gguf", outtype="f32", progress=False)
    ref = NemotronHForCausalLM.from_pretrained(d / "hf", dtype=torch.float32, attn_implementation="eager",
                                               experts_implementation="eager").eval()
    ours = nemocpu.load(d / "model-f32.gguf", threads=2, n_ctx=256, kv_type="f32",
                        dt_floor=float(cfg.time_step_min))
    return ref, ours, cfg, N_DECODE


def _prompt(cfg, n=23, seed=0):
    return np.random.default_rng(seed).integers(5, cfg.vocab_size, n).tolist()


def test_prefill_logits_match(pair):
    ref, ours, cfg, _ = pair
    ids = _prompt(cfg)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    got = ours.session().eval(ids, all_logits=True)
    assert got.shape == want.shape
    err = rel_err(got, want)
    assert err <= REL_TOL, f"prefill max relative error {err:.2e}"


def test_decode_logits_and_greedy_tokens_match(pair):
    ref, ours, cfg, n_decode = pair
    ids = _prompt(cfg, n=11, seed=1)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n_decode, min_new_tokens=0,
                           eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    want_tokens = out.sequences[0, len(ids):].tolist()
    want_logits = [x[0].numpy() for x in out.logits]
    assert len(want_tokens) == n_decode

    sess = ours.session()
    logits = sess.eval(ids)[0]
    for step in range(n_decode):
        err = rel_err(logits, want_logits[step])
        assert err <= REL_TOL, f"step {step}: relative error {err:.2e}"
        tok = int(np.argmax(logits))
        assert tok == want_tokens[step], f"greedy token differs at step {step}: {tok} vs {want_tokens[step]}"
        logits = sess.eval([tok])[0]
    assert sess.n_past == len(ids) + n_decode


def test_chunked_prefill_matches_one_prefill(pair):
    """A prompt fed in pieces gives the same last logits as transformers on the whole prompt.
    (transformers' own cached multi-token path is its prefill path too, clamp included.)"""
    ref, ours, cfg, _ = pair
    ids = _prompt(cfg, n=30, seed=2)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0, -1].numpy()
    sess = ours.session()
    sess.eval(ids[:1])          # n_past == 0, single token: the clamp applies (prefill)
    sess.eval(ids[1:17])
    got = sess.eval(ids[17:])[0]
    assert rel_err(got, want) <= REL_TOL
