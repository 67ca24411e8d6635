"""Long runs: 20,000 decode steps on the tiny model grow the process by no more than the KV
cache, and dropped snapshots give their memory back. Measured in a fresh subprocess from
/proc/self/statm (resident pages), so pytest's own allocations do not blur the numbers.
NEMOCPU_LONGRUN_STEPS overrides the step count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

STEPS = int(os.environ.get("NEMOCPU_LONGRUN_STEPS", "20000"))
SLACK = 24 << 20      # allocator and interpreter noise

_CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import nemocpu

    PAGE = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    steps = int(sys.argv[1])
    model = nemocpu.load(threads=1, n_ctx=steps + 64)
    s = model.session()
    logits = s.eval([3, 328, 209, 860, 231, 30, 26, 27])
    tok = int(np.argmax(logits[0]))
    for _ in range(256):                       # warm up: first-use allocations, caches, imports
        tok = int(np.argmax(s.eval([tok])[0]))
    rss0, kv0 = rss(), s.nbytes
    samples = []
    for i in range(steps - 256):
        logits = s.eval([tok])
        # greedy, but never let the tiny model settle into EOS forever: the walk covers the vocabulary
        tok = int(np.argmax(logits[0])) if i % 7 else (tok * 31 + i) % model.n_vocab
        if i % 1000 == 0:
            samples.append(rss() - rss0)
    assert np.all(np.isfinite(logits))
    out = dict(steps=s.n_past - 8, rss0=rss0, rss_growth=rss() - rss0, kv_growth=s.nbytes - kv0,
               state_bytes=s.nbytes, samples=samples)

    # snapshots: each is a deep copy of the state; dropped ones must be freed
    base = rss()
    for _ in range(100):
        snap = s.snapshot()
        del snap
    out["after_100_dropped_snapshots"] = rss() - base
    held = [s.snapshot() for _ in range(8)]
    out["holding_8_snapshots"] = rss() - base
    del held
    out["after_dropping_them"] = rss() - base
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_long_decode_and_snapshots_do_not_leak():
    r = subprocess.run([sys.executable, "-c", _CHILD, str(STEPS)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.splitlines()[-1])
    print(json.dumps(res))
    assert res["steps"] == STEPS
    # growth beyond the cache would be a leak of at least ~1 KB per step over 20k steps
    assert res["rss_growth"] <= res["kv_growth"] + SLACK, res
    snap = res["state_bytes"]
    assert res["holding_8_snapshots"] >= 4 * snap, "snapshots are deep copies: holding 8 must cost memory"
    assert res["after_100_dropped_snapshots"] <= snap + SLACK, res
    assert res["after_dropping_them"] <= snap + SLACK, res
