"""`nemocpu chat` for real, in a pseudo-terminal, against the embedded tiny model."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = ">>>"   # prompt_toolkit draws the trailing space as a cursor move


def spawn(tmp_path, *args, timeout=60):
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", NEMOCPU_HISTORY=str(tmp_path / "history"),
               TERM="xterm", COLUMNS="200", LINES="50")
    child = pexpect.spawn(sys.executable, ["-m", "nemocpu", "chat", "--threads", "1", *args],
                          env=env, timeout=timeout, encoding="utf-8", dimensions=(50, 200))
    child.expect_exact(PROMPT)
    return child


def ask(child, text, *expected):
    child.sendline(text)
    for e in expected:
        child.expect_exact(e)
    child.expect(r"\d+ tokens at [\d.]+ t/s")
    child.expect_exact(PROMPT)


def saved(child, path):
    child.sendline(f"/save {path}")
    child.expect_exact("[saved")
    child.expect_exact(PROMPT)
    return json.loads(path.read_text())


def test_answers_arithmetic_with_thinking(tmp_path):
    child = spawn(tmp_path, "--temp", "0")
    ask(child, "Calculate 401 + 50.", "Result: 451", "401 + 50 = 451")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_answers_arithmetic_without_thinking(tmp_path):
    child = spawn(tmp_path, "--temp", "0", "--no-think")
    ask(child, "What is 55 × 4?", "55 × 4 = 220")
    child.sendeof()                      # Ctrl-D quits
    child.expect(pexpect.EOF)


def test_ctrl_c_stops_the_answer_and_keeps_the_conversation_then_reset(tmp_path):
    child = spawn(tmp_path, "--temp", "0")
    ask(child, "Calculate 401 + 50.", "401 + 50 = 451")
    # a near-uniform sampler (seeded) rambles for thousands of tokens: interrupt it
    for cmd in ("/set temperature 50", "/set seed 0", "/no_think"):
        child.sendline(cmd)
        child.expect_exact(PROMPT)
    child.sendline("Tell me a story.")
    time.sleep(2.0)
    t0 = time.monotonic()
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    assert time.monotonic() - t0 < 10
    conv = saved(child, tmp_path / "chat.json")
    roles = [m["role"] for m in conv["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][1]["content"] == "401 + 50 = 451"
    assert conv["messages"][2]["content"] == "Tell me a story."
    # the conversation goes on after the interruption
    child.sendline("/set temperature 0")
    child.expect_exact(PROMPT)
    ask(child, "What is 55 × 4?")
    assert len(saved(child, tmp_path / "chat2.json")["messages"]) == 6
    child.sendline("/reset")
    child.expect_exact("[conversation cleared]")
    child.expect_exact(PROMPT)
    assert saved(child, tmp_path / "chat3.json")["messages"] == []
    # after /reset the model answers as in a fresh chat
    child.sendline("/think")
    child.expect_exact(PROMPT)
    ask(child, "Calculate 401 + 50.", "401 + 50 = 451")
    child.sendintr()                     # Ctrl-C at the prompt arms, a second one quits
    child.expect_exact("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)


def test_load_restores_a_saved_conversation(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"system": "Be brief.", "messages": [
        {"role": "user", "content": "Calculate 401 + 50."}, {"role": "assistant", "content": "401 + 50 = 451"}]}))
    child = spawn(tmp_path, "--temp", "0")
    child.sendline(f"/load {path}")
    child.expect_exact("[loaded 2 messages")
    child.expect_exact(PROMPT)
    out = saved(child, tmp_path / "again.json")
    assert out["system"] == "Be brief." and len(out["messages"]) == 2
    child.sendline("/load /nonexistent/file.json")
    child.expect_exact("cannot load /nonexistent/file.json")
    child.expect_exact(PROMPT)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [], "thinking_budget": "abc"}))
    child.sendline(f"/load {bad}")
    child.expect_exact("thinking_budget must be a non-negative integer")
    child.expect_exact(PROMPT)
    out = saved(child, tmp_path / "after-bad.json")      # the conversation was kept
    assert out["system"] == "Be brief." and len(out["messages"]) == 2
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_help_system_budget_regen_and_history(tmp_path):
    child = spawn(tmp_path, "--temp", "0")
    child.sendline("/help")
    child.expect_exact("/budget N")
    child.expect_exact(PROMPT)
    child.sendline("/system Be brief.")
    child.expect_exact("[system prompt set]")
    child.expect_exact(PROMPT)
    child.sendline("/budget 2")
    child.expect_exact("[reasoning budget 2 tokens]")
    child.expect_exact(PROMPT)
    ask(child, "Calculate 401 + 50.")
    first = saved(child, tmp_path / "one.json")
    assert first["system"] == "Be brief." and first["thinking_budget"] == 2
    user, answer = first["messages"]
    # the full reasoning is three lines (README); a budget of 2 tokens ends it at the first line end
    assert answer["reasoning_content"].strip().count("\n") == 0, answer
    child.sendline("/regen")
    child.expect(r"\d+ tokens at [\d.]+ t/s")
    child.expect_exact(PROMPT)
    again = saved(child, tmp_path / "two.json")
    assert again["messages"][0] == user and len(again["messages"]) == 2
    assert again["messages"][1] == answer            # greedy: the same reply again, not a second one
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    assert "Calculate 401 + 50." in (tmp_path / "history").read_text()


def test_plain_mode_reads_stdin_and_prints_answers(tmp_path):
    import subprocess
    inp = 'Calculate 401 + 50.\n/no_think\n"""\nWhat is\n55 × 4?\n"""\n'
    r = subprocess.run([sys.executable, "-m", "nemocpu", "chat", "--temp", "0", "--hide-reasoning", "--threads", "1"],
                       input=inp, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "401 + 50 = 451"
    assert "\x1b[" not in r.stdout and "<think>" not in r.stdout
    assert "[reasoning off]" in r.stderr and "t/s" in r.stderr


def test_single_prompt_flag(tmp_path):
    import subprocess
    r = subprocess.run([sys.executable, "-m", "nemocpu", "chat", "-p", "Calculate 401 + 50.", "--temp", "0",
                        "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<think>\n") and r.stdout.rstrip().endswith("</think>\n401 + 50 = 451")


def test_bad_settings_and_overlong_prompts_fail_cleanly(tmp_path):
    import subprocess
    base = [sys.executable, "-m", "nemocpu", "chat", "--threads", "1"]
    r = subprocess.run(base + ["-p", "hi", "--top-p", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "top_p" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["-p", "word " * 600, "--n-ctx", "256"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "the context holds 256" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["-p", "hi", "--max-tokens", "-1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--max-tokens must be >= 0" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + [str(tmp_path / "missing.gguf"), "-p", "hi"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "missing.gguf" in r.stderr and "Traceback" not in r.stderr
