"""Chat-template rendering in a child process: the only place a template from a file runs.

jinja2's sandbox keeps templates away from Python's internals, but one template operation can
be a single long C-level step that holds the GIL (``9 ** 99999999``, ``'a' * 10**10``, comparing
two huge lists), and jinja folds constant expressions while compiling. Neither can be
interrupted inside the process. So nemocpu.chat_template sends (template source, variables)
to this process, which compiles and renders in jinja2's ImmutableSandboxedEnvironment under
an address-space limit, and kills it when the time limit passes; the next render starts a new
one. The file needs only the standard library and jinja2 (it is run by path, not imported
through nemocpu), so the child starts in ~0.1 s.

Protocol on stdin/stdout: 8-byte little-endian length + pickle of {"source", "variables",
"max_chars"} from the parent (trusted); the reply is 8-byte length + JSON {"text"} or {"error"}
(JSON, so that the parent never unpickles anything a template could influence).
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from datetime import datetime

MEMORY_LIMIT_BYTES = 4 << 30      # address space of the child (Linux; ignored where unsupported)
MAX_COMPILED = 8                  # templates kept compiled


def build_environment():
    import jinja2
    import jinja2.ext
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        # Only construction: no attribute access into the dict type from templates.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Namespaces reject underscore attributes (a path to CPython internals).
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attribute {name!r}")

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for training masks; rendering ignores it.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(lineno)

        def _passthrough(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def render_reply(get_template, variables: dict, max_chars: int) -> dict:
    """Compile (``get_template()``) and render: {"text": ...} or {"error": message}. The one
    render loop, of this process and of the parent's in-process fallback alike."""
    import jinja2

    try:
        parts, n = [], 0
        for chunk in get_template().generate(**variables):
            n += len(chunk)
            if n > max_chars:
                return {"error": f"chat template output exceeds {max_chars} characters"}
            parts.append(chunk)
        return {"text": "".join(parts)}
    except jinja2.TemplateError as e:
        return {"error": f"chat template error: {e}"}
    except MemoryError:
        return {"error": "chat template ran out of memory"}
    except RecursionError:
        return {"error": "chat template recursed too deeply"}
    except Exception as e:  # template code can raise anything (TypeError on bad data, ...)
        return {"error": f"chat template failed: {type(e).__name__}: {e}"}


def _compiled(env, cache: dict, source: str):
    template = cache.get(source)
    if template is None:
        if len(cache) >= MAX_COMPILED:
            cache.pop(next(iter(cache)))
        template = cache[source] = env.from_string(source)
    return template


def read_exact(f, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve(inp, out) -> None:
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass
    env, cache = build_environment(), {}
    out.write(struct.pack("<Q", 0))                  # ready
    out.flush()
    while True:
        head = read_exact(inp, 8)
        if head is None:
            return                                   # the parent closed the pipe or exited
        request = pickle.loads(read_exact(inp, struct.unpack("<Q", head)[0]) or b"")
        reply = render_reply(lambda: _compiled(env, cache, request["source"]), request["variables"],
                             request["max_chars"])
        data = json.dumps(reply).encode()
        out.write(struct.pack("<Q", len(data)) + data)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
