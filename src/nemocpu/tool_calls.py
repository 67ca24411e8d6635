"""Tool calls in Nemotron 3 Nano's output (the Qwen3-Coder XML format its template teaches):

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Parameter values are text; when the tool's JSON schema gives the parameter a non-string
type, the value is read as JSON (numbers, booleans, objects, arrays), like vLLM's
``qwen3_coder`` parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.S)
_PARAM = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)

    def as_message(self) -> dict:
        """The OpenAI-style entry for an assistant message's ``tool_calls``."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _param_types(tools) -> dict[str, dict[str, str]]:
    types = {}
    for t in tools or []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        props = (fn.get("parameters") or {}).get("properties") or {}
        types[fn.get("name")] = {k: (v or {}).get("type", "string") for k, v in props.items()}
    return types


def _value(raw: str, typ) -> object:
    # The template writes "\n{value}\n" around each value.
    v = raw[1:] if raw.startswith("\n") else raw
    v = v[:-1] if v.endswith("\n") else v
    if typ in (None, "string") or (isinstance(typ, list) and "string" in typ):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_tool_calls(text: str, tools=None) -> list[ToolCall]:
    types = _param_types(tools)
    calls = []
    for body in _CALL.findall(text):
        for name, params in _FUNCTION.findall(body):
            name = name.strip()
            ptypes = types.get(name, {})
            args = {k.strip(): _value(v, ptypes.get(k.strip())) for k, v in _PARAM.findall(params)}
            calls.append(ToolCall(name, args))
    return calls


def strip_tool_calls(text: str) -> str:
    """The answer text around the tool-call blocks."""
    return _CALL.sub("", text).strip()
