"""Generation logic on a scripted fake model: reasoning/content split, tool calls, stop
conditions, thinking budget, streaming == non-streaming, prefix reuse across turns."""

from __future__ import annotations

import numpy as np
import pytest

from fake_model import FakeModel
from nemocpu.generate import Conversation, chat, generate, render_chat
from nemocpu.prefix_cache import PrefixCache
from nemocpu.tool_calls import parse_tool_calls

USER = [{"role": "user", "content": "What is 2+3?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "opts": {"type": "object"}}}}}


def test_reasoning_and_answer_are_separated():
    m = FakeModel("2 plus 3 is 5.\n</think>\n2 + 3 = 5")
    r = chat(m, USER, temperature=0)
    assert (r.reasoning, r.text, r.finish_reason) == ("2 plus 3 is 5.", "2 + 3 = 5", "stop")
    assert r.token_ids[-1] == 4 and r.completion_tokens == len(r.token_ids)
    assert r.prompt_tokens == r.prompt_tokens_evaluated > 0


def test_thinking_off_has_no_reasoning():
    m = FakeModel("2 + 3 = 5")
    r = chat(m, USER, enable_thinking=False)
    assert r.reasoning is None and r.text == "2 + 3 = 5"
    r = chat(m, USER, enable_thinking=False, template_kwargs={"truncate_history_thinking": True})
    assert r.reasoning is None and r.text == "2 + 3 = 5"


def test_streaming_yields_the_same_text_as_blocking():
    reply = "Let me think:\n1 é 🦙 2\n</think>\n\nThe answer: 5 ✓\n"
    m = FakeModel(reply)
    blocking = chat(m, USER)
    gen = chat(m, USER, stream=True)
    chunks = list(gen)
    assert "".join(c.text for c in chunks if c.kind == "reasoning") == blocking.reasoning == "Let me think:\n1 é 🦙 2"
    assert "".join(c.text for c in chunks if c.kind == "content") == blocking.text == "The answer: 5 ✓"
    assert gen.result.token_ids == blocking.token_ids
    kinds = [c.kind for c in chunks]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")   # all reasoning before content


def test_tool_calls_are_parsed_with_schema_types():
    m = FakeModel("I'll call it.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSao Paulo\n</parameter>\n"
                  "<parameter=days>\n2\n</parameter>\n<parameter=opts>\n{\"a\": [1]}\n</parameter>\n"
                  "</function>\n</tool_call>\n")
    r = chat(m, USER, enable_thinking=False, tools=[WEATHER])
    assert len(r.tool_calls) == 1
    call = r.tool_calls[0]
    assert call.name == "get_weather" and call.arguments == {"city": "Sao Paulo", "days": 2, "opts": {"a": [1]}}
    assert r.text == "I'll call it." and r.content.startswith("I'll call it.\n<tool_call>")


def test_tool_call_parser_handles_several_calls_and_no_schema():
    text = ("<tool_call>\n<function=a>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>\n"
            "<tool_call>\n<function=b>\n<parameter=y>\nmulti\nline\n</parameter>\n</function>\n</tool_call>")
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("a", {"x": "1"}), ("b", {"y": "multi\nline"})]
    assert parse_tool_calls("no calls here") == []


def test_max_tokens_and_stop_strings():
    m = FakeModel("one two three four five six", marker_text="Count:")
    r = generate(m, "Count:", max_tokens=3)
    assert r.finish_reason == "length" and r.completion_tokens == 3
    r = generate(m, "Count:", stop=["four"])
    assert r.finish_reason == "stop" and r.text == "one two three "
    chunks = list(generate(m, "Count:", stop=[" thr"], stream=True))
    assert "".join(c.text for c in chunks) == "one two"


def test_stop_token_ids_override():
    m = FakeModel("a b c", marker_text="Go:")
    b_id = m.tokenizer.encode(" b")[0]
    r = generate(m, "Go:", stop_token_ids=[b_id])
    assert r.text == "a" and r.token_ids[-1] == b_id and r.finish_reason == "stop"


def test_chat_stop_token_ids_add_to_the_end_of_turn():
    m = FakeModel("2 plus 3 is 5.\n</think>\n2 + 3 = 5")
    plus = m.tokenizer.encode(" +")[0]
    r = chat(m, USER, stop_token_ids=[plus])
    assert r.token_ids[-1] == plus and r.finish_reason == "stop" and r.text == "2"


@pytest.mark.parametrize("name, value", [("thinking_budget", -1), ("thinking_budget", "x"), ("thinking_budget", True),
                                         ("max_tokens", -1), ("max_tokens", 2.5)])
def test_bad_counts_are_refused_before_generating(name, value):
    m = FakeModel("2 + 3 = 5")
    with pytest.raises(ValueError, match=f"{name} must be a non-negative integer"):
        chat(m, USER, **{name: value})
    conv = Conversation(m)
    with pytest.raises(ValueError, match=name):
        conv.send("hi", **{name: value})
    assert conv.messages == []        # the refused message is not left in the history


@pytest.mark.parametrize("budget", [0, 2, 5])
def test_thinking_budget_ends_the_thought_at_a_line_end(budget):
    m = FakeModel("l1\nl2\nl3\nl4\nl5\nl6\n</think>\nanswer")
    r = chat(m, USER, thinking_budget=budget)
    close = m.tokenizer.token_to_id("</think>")
    assert close in r.token_ids
    assert r.reasoning_tokens <= budget + 2     # ended at the first newline after the budget
    before = m.tokenizer.decode(r.token_ids[:r.token_ids.index(close)])
    assert before == "" or before.endswith("\n")


def test_thinking_budget_forces_after_the_grace_period():
    m = FakeModel("x" * 200 + "\n</think>\nanswer")   # one very long line
    r = chat(m, USER, thinking_budget=4)
    close = m.tokenizer.token_to_id("</think>")
    assert close in r.token_ids
    from nemocpu.generate import THINKING_GRACE_TOKENS
    assert r.reasoning_tokens <= 4 + THINKING_GRACE_TOKENS + 1
    i = r.token_ids.index(close)
    assert m.tokenizer.decode(r.token_ids[i - 1:i]) == "\n"   # a newline is inserted before </think>


def test_cancel_mid_stream_keeps_a_consistent_state():
    m = FakeModel("a b c d e f g h", marker_text="Go:")
    gen = generate(m, "Go:", stream=True)
    next(gen)
    gen.close()
    assert gen.result.finish_reason == "cancelled"
    r = generate(m, "Go:")     # the cache must still give the right answer afterwards
    assert r.text == "a b c d e f g h"


def test_prefix_cache_reuses_the_longest_prefix():
    m = FakeModel("x")
    cache = PrefixCache(m.session())
    _, reused = cache.prefill([1, 2, 3, 4], boundaries=[2])
    assert reused == 0
    _, reused = cache.prefill([1, 2, 3, 4, 5, 6])          # live state is a prefix
    assert reused == 4
    _, reused = cache.prefill([1, 2, 9, 9])                # back to the snapshot at 2
    assert reused == 2 and cache.session.tokens == [1, 2, 9, 9]
    _, reused = cache.prefill([1, 2, 9, 9])                # the whole prompt is cached: re-run the last token
    assert reused == 2
    _, reused = cache.prefill([7])
    assert reused == 0 and cache.session.tokens == [7]


def test_prefix_cache_evaluates_long_prompts_in_chunks_and_survives_a_ctrl_c():
    m = FakeModel("x", n_ctx=2048)
    session = m.session()
    step = session.prefill_step
    calls = []
    real_eval = session.eval

    def eval_then_interrupt(ids, all_logits=False):
        calls.append(len(ids))
        out = real_eval(ids, all_logits)
        if len(calls) == 2:
            raise KeyboardInterrupt       # what Python raises once the C call returns
        return out
    session.eval = eval_then_interrupt
    cache = PrefixCache(session)
    ids = [5 + i % 20 for i in range(2 * step + 30)]
    with pytest.raises(KeyboardInterrupt):
        cache.prefill(ids)
    assert calls == [step, step]      # stopped after the chunk it was in
    session.eval = real_eval
    logits, reused = cache.prefill(ids)                       # the interrupted state is not trusted
    assert reused == 0 and session.tokens == ids
    every = PrefixCache(m.session()).eval(ids, all_logits=True)
    assert every.shape[0] == len(ids) and np.array_equal(every[-1], logits[-1])


def test_conversation_turns_cost_only_their_new_tokens():
    m = FakeModel("thinking...\n</think>\nanswer")
    conv = Conversation(m, system="Be brief.")
    full, evaluated = [], []
    for i in range(5):
        r = conv.send(f"question {i}?")
        assert r.text == "answer" and r.reasoning == "thinking..."
        full.append(r.prompt_tokens)
        evaluated.append(r.prompt_tokens_evaluated)
    assert evaluated[0] == full[0]
    for i in range(1, 5):
        # new user turn + previous answer (its reasoning is dropped by the template) + generation prompt
        assert evaluated[i] < 40 < full[i]
    assert len(conv.messages) == 10
    # the state the cache resumed from holds exactly the prompt a fresh run would evaluate
    prompt = m.tokenizer.encode(render_chat(m, conv.full_messages()[:-1]), parse_special=True)
    assert conv.cache.session.tokens[:full[-1]] == prompt


def test_conversation_regenerate_and_reset():
    m = FakeModel("ok")
    conv = Conversation(m, enable_thinking=False)
    conv.send("hi")
    r = conv.regenerate()
    assert r.text == "ok" and [x["role"] for x in conv.messages] == ["user", "assistant"]
    assert r.prompt_tokens_evaluated < r.prompt_tokens      # regeneration reuses the history
    conv.reset()
    assert conv.messages == []
    with pytest.raises(ValueError):
        conv.regenerate()


def test_unknown_sampling_argument_is_rejected():
    m = FakeModel("x")
    with pytest.raises(TypeError, match="temprature"):
        chat(m, USER, temprature=0.5)


def test_an_abandoned_stream_cannot_corrupt_a_newer_generation():
    m = FakeModel("a b c d e f", marker_text="Go:")
    old = generate(m, "Go:", stream=True)
    next(old)
    assert generate(m, "Go:").text == "a b c d e f"
    with pytest.raises(RuntimeError, match="superseded"):
        list(old)
    assert generate(m, "Go:").text == "a b c d e f"
