"""``nemocpu bench`` on the embedded tiny model: valid JSON, positive figures, byte accounting."""

import json
import math

import pytest

from nemocpu import arch
from nemocpu.bench_stats import n_params, state_bytes_per_token, weight_bytes_per_token
from nemocpu.cli import main


def bench_json(capsys, *argv) -> dict:
    assert main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_positive_medians(capsys):
    r = bench_json(capsys, "-p", "16", "-n", "4", "-t", "1", "-r", "2")
    for key in ("prefill_tps", "decode_tps", "decode_gbs", "bytes_per_token", "params", "file_bytes",
                "peak_rss_bytes"):
        assert r[key] > 0, key
    assert [t["test"] for t in r["tests"]] == ["pp16", "tg4"]
    for t in r["tests"]:
        assert len(t["seconds"]) == 2 and all(s > 0 for s in t["seconds"])
        # the reported figure is the median of the repetitions' rates
        rates = sorted(t["n_tokens"] / s for s in t["seconds"])
        assert math.isclose(t["tps"], (rates[0] + rates[1]) / 2)
    assert r["threads"] == 1


def test_depth_is_charged_kv_reads(capsys):
    r = bench_json(capsys, "-p", "0", "-n", "3", "-t", "1", "-r", "1", "-d", "40")
    assert r["prefill_tps"] is None and r["decode_tps"] > 0
    assert r["tests"][0]["test"] == "tg3 @ d40"
    hp = _tiny_hparams()
    # context grows 40 -> 42 during the test: the average (41) is charged
    assert r["state_bytes_per_token"] == state_bytes_per_token(hp, 41, "f16")
    assert r["state_bytes_per_token"] > state_bytes_per_token(hp, 0, "f16")


def test_table_output(capsys):
    assert main(["bench", "-p", "8", "-n", "2", "-t", "1", "-r", "1"]) == 0
    out = capsys.readouterr().out
    assert "| model" in out and "pp8" in out and "tg2" in out and "bytes touched per decoded token" in out


def test_bad_arguments_are_errors(capsys):
    assert main(["bench", "-r", "0"]) == 1
    assert "--reps must be >= 1" in capsys.readouterr().err
    assert main(["bench", "-p", "0", "-n", "0"]) == 1


def _tiny_hparams() -> arch.HParams:
    import nemocpu
    return nemocpu.load(threads=1).config


def test_weight_bytes_count_k_of_n_experts():
    """Hand-built tensor table: dense tensors whole, experts k/n, one embedding row, lm_head whole."""
    import numpy as np
    hp = arch.HParams(arch="nemotron_h_moe", n_vocab=10, n_embd=4, layer_kinds="E", n_head=1, n_head_kv=1,
                      head_dim=4, ssm_n_head=1, ssm_head_dim=4, ssm_d_state=4, ssm_n_group=1, ssm_conv_kernel=4,
                      n_expert=8, n_expert_used=2, n_ff_exp=4, n_ff_shexp=4, n_expert_shared=1)
    t = lambda nbytes, ne: (np.zeros(nbytes, np.uint8), 0, ne)   # noqa: E731
    tensors = {"token_embd.weight": t(400, (4, 10)), "output.weight": t(1000, (4, 10)),
               "blk.0.ffn_up_exps.weight": t(800, (4, 4, 8)), "blk.0.ffn_up_exps.weight_scale": t(32, (8,)),
               "blk.0.ffn_up_shexp.weight": t(64, (4, 4))}
    assert weight_bytes_per_token(hp, tensors) == 400 // 10 + 1000 + 800 * 2 // 8 + 32 * 2 // 8 + 64
    assert n_params(tensors) == 40 + 40 + 128 + 16
    del tensors["output.weight"]                  # tied: the lm_head reads the whole embedding
    assert weight_bytes_per_token(hp, tensors) == 400 + 800 * 2 // 8 + 32 * 2 // 8 + 64


@pytest.mark.parametrize("kv", ["f16", "f32"])
def test_state_bytes(kv):
    hp = _tiny_hparams()
    mamba = hp.layer_kinds.count("M") * (hp.ssm_n_head * hp.ssm_head_dim * hp.ssm_d_state * 4
                                         + (hp.ssm_conv_kernel - 1) * hp.ssm_conv_dim * 4)
    per_tok = hp.layer_kinds.count("*") * 2 * hp.n_head_kv * hp.head_dim * {"f16": 2, "f32": 4}[kv]
    assert state_bytes_per_token(hp, 100, kv) == mamba + 100 * per_tok
