"""``nemocpu chat [MODEL]``: an interactive, streaming chat REPL (or one turn with -p).

On a terminal: line editing and history (prompt_toolkit), reasoning dimmed, speed after each
reply, Ctrl-C stops the reply and keeps the conversation, Ctrl-C twice / Ctrl-D / /exit quit.
Otherwise plain text: every stdin line is a message (or a command), answers go to stdout.
"""

from __future__ import annotations

import json
import os
import sys

from nemocpu.errors import NemocpuError

HELP = """commands:
  /think, /no_think   turn reasoning on / off
  /budget N | off     end reasoning after about N tokens
  /system TEXT        set the system prompt (empty TEXT removes it)
  /set NAME VALUE     sampling: temperature, top_k, top_p, min_p, seed, max_tokens, ...
  /reset              forget the conversation
  /regen              answer the last message again
  /save FILE          write the conversation to a JSON file
  /load FILE          read a conversation saved with /save
  /help               this text
  /exit               quit (also Ctrl-D, or Ctrl-C twice at the prompt)
multi-line input: start and end with \"\"\" (or end a line with \\); Alt+Enter adds a line on a terminal"""

DIM, RESET = "\x1b[2m", "\x1b[0m"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model (streaming, reasoning, tools)",
                       description="Chat with a Nemotron-H model through its chat template.")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded tiny model)")
    p.add_argument("-p", "--prompt", help="send one message, print the answer and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--no-think", action="store_true", help="answer without reasoning")
    p.add_argument("--think-budget", type=int, default=None, metavar="N",
                   help="end reasoning after about N tokens (at the next line end)")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the reasoning")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per reply (default: until the context is full)")
    s = p.add_argument_group("sampling (default: the model's recommendation for the mode)")
    s.add_argument("--temperature", "--temp", type=float, default=None, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--min-p", type=float, default=None)
    s.add_argument("--repeat-penalty", type=float, default=None, dest="repetition_penalty")
    s.add_argument("--presence-penalty", type=float, default=None)
    s.add_argument("--frequency-penalty", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all usable CPUs)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (needs a NEMOCPU_CUDA build; docs/cuda.md)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length (default 4096)")
    p.set_defaults(func=main)


def main(args) -> int:
    import nemocpu
    from nemocpu.generate import Conversation

    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                              "presence_penalty", "frequency_penalty", "seed")}
    for flag, value in (("--think-budget", args.think_budget), ("--max-tokens", args.max_tokens)):
        if value is not None and value < 0:
            raise NemocpuError(f"{flag} must be >= 0")
    model = nemocpu.load(args.model, threads=args.threads, n_ctx=args.n_ctx, device=args.device)
    try:
        from nemocpu.sampling import recommended_params
        for reasoning in (True, False):          # bad values fail now, not at the first message
            recommended_params(model.metadata, reasoning, **sampling)
        conv = Conversation(model, system=args.system, enable_thinking=not args.no_think,
                            thinking_budget=args.think_budget, max_tokens=args.max_tokens, **sampling)
    except (TypeError, ValueError) as e:
        raise NemocpuError(str(e)) from None
    repl = ChatRepl(conv, tty=sys.stdout.isatty(), hide_reasoning=args.hide_reasoning)
    if args.prompt is not None:
        return 0 if repl.reply(lambda: conv.send(args.prompt, stream=True)) else 1
    return repl.loop(interactive=sys.stdin.isatty() and sys.stdout.isatty())


class ChatRepl:
    def __init__(self, conv, tty: bool, hide_reasoning: bool):
        self.conv = conv
        self.tty = tty
        self.hide_reasoning = hide_reasoning
        self.out = sys.stdout

    # ---- output ---------------------------------------------------------------------
    def write(self, s: str, dim: bool = False) -> None:
        if dim and self.tty:
            s = f"{DIM}{s}{RESET}"
        self.out.write(s)
        self.out.flush()

    def info(self, s: str) -> None:
        # Status lines: dimmed on a terminal, on stderr otherwise so stdout holds only answers.
        if self.tty:
            self.write(s + "\n", dim=True)
        else:
            print(s, file=sys.stderr, flush=True)

    def reply(self, start) -> bool:
        """Stream one reply; Ctrl-C stops it and keeps what was said. False on error."""
        # The reasoning is wrapped whole in <think> tags (plain) or dim/reset codes (terminal),
        # so the text inside stays contiguous for readers and for terminal scrapers.
        open_r, close_r = (DIM, RESET + "\n\n") if self.tty else ("<think>\n", "\n</think>\n")
        stream = None
        in_reasoning = False
        try:
            stream = start()
            for chunk in stream:
                if chunk.kind == "reasoning":
                    if self.hide_reasoning:
                        continue
                    if not in_reasoning:
                        self.write(open_r)
                        in_reasoning = True
                    self.write(chunk.text)
                else:
                    if in_reasoning:
                        self.write(close_r)
                        in_reasoning = False
                    self.write(chunk.text)
            if in_reasoning:
                self.write(close_r)
            self.write("\n")
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()
            self.write((RESET if self.tty else "") + "\n")
            self.info("[interrupted]")
            return True
        except (ValueError, NemocpuError) as e:  # the context is full; the template failed; ...
            self.write((RESET if self.tty else "") + "\n")
            hint = "; /reset starts over" if "context" in str(e) else ""
            self.info(f"[error: {e}{hint}]")
            return False
        finally:
            if stream is not None:
                stream.close()
        r = self.conv.last_result
        if r is not None:
            calls = "".join(f", tool call {c.name}({json.dumps(c.arguments, ensure_ascii=False)})"
                            for c in r.tool_calls)
            self.info(f"[prompt {r.prompt_tokens_evaluated}/{r.prompt_tokens} tokens at {r.prompt_tokens_per_s:.1f} t/s"
                      f" | {r.completion_tokens} tokens at {r.tokens_per_s:.1f} t/s"
                      f"{', stopped: length' if r.finish_reason == 'length' else ''}{calls}]")
        return True

    # ---- input ----------------------------------------------------------------------
    def _make_reader(self, interactive: bool):
        if not interactive:
            def read(prompt: str) -> str:
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
                return line.rstrip("\n")
            return read
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event):
            event.current_buffer.insert_text("\n")

        history = InMemoryHistory()
        path = os.environ.get("NEMOCPU_HISTORY", os.path.join(os.path.expanduser("~"), ".nemocpu_history"))
        try:
            open(path, "a").close()
            history = FileHistory(path)
        except OSError:
            pass
        session = PromptSession(history=history, key_bindings=keys)
        return lambda prompt: session.prompt(prompt)

    def read_message(self, read) -> str:
        line = read(">>> ")
        if line.lstrip().startswith('"""'):
            parts = [line.lstrip()[3:]]
            while not parts[-1].rstrip().endswith('"""') or len(parts) == 1 and parts[0].rstrip() == "":
                parts.append(read("... "))
            parts[-1] = parts[-1].rstrip()[:-3]
            return "\n".join(parts).strip("\n")
        while line.endswith("\\"):
            line = line[:-1] + "\n" + read("... ")
        return line

    def loop(self, interactive: bool) -> int:
        read = self._make_reader(interactive)
        if interactive:
            self.info(f"nemocpu chat: {os.path.basename(self.conv.model.path)} — /help for commands, Ctrl-D to quit")
        armed = False   # a Ctrl-C at the prompt arms quitting; a second one quits
        while True:
            try:
                text = self.read_message(read)
            except EOFError:
                return 0
            except KeyboardInterrupt:
                if armed or not interactive:
                    return 0
                armed = True
                self.info("(Ctrl-C again or Ctrl-D to quit)")
                continue
            armed = False
            if not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                if self.command(text) == "exit":
                    return 0
                continue
            self.reply(lambda: self.conv.send(text, stream=True))

    # ---- commands -------------------------------------------------------------------
    def command(self, text: str):
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        c = self.conv
        if name in ("/exit", "/quit", "/bye"):
            return "exit"
        if name == "/help":
            self.info(HELP)
        elif name == "/think":
            c.enable_thinking = True
            self.info("[reasoning on]")
        elif name == "/no_think":
            c.enable_thinking = False
            self.info("[reasoning off]")
        elif name == "/budget":
            if arg in ("", "off", "none"):
                c.thinking_budget = None
                self.info("[no reasoning budget]")
            elif arg.isdigit():
                c.thinking_budget = int(arg)
                self.info(f"[reasoning budget {arg} tokens]")
            else:
                self.info("usage: /budget N | off")
        elif name == "/system":
            c.system = arg or None
            self.info("[system prompt set]" if arg else "[system prompt removed]")
        elif name in ("/reset", "/clear"):
            c.reset()
            self.info("[conversation cleared]")
        elif name == "/regen":
            if not any(m["role"] == "user" for m in c.messages):
                self.info("[nothing to regenerate]")
            else:
                self.reply(lambda: c.regenerate(stream=True))
        elif name == "/set":
            self._set(arg)
        elif name == "/save":
            self._save(arg)
        elif name == "/load":
            self._load(arg)
        else:
            self.info(f"unknown command {name}; /help lists them")
        return None

    _SETTABLE = {"temperature": float, "temp": float, "top_k": int, "top_p": float, "min_p": float,
                 "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
                 "seed": int, "max_tokens": int}

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        key = key.replace("-", "_")
        if key not in self._SETTABLE or not value.strip():
            self.info(f"usage: /set {'|'.join(self._SETTABLE)} VALUE")
            return
        name = {"temp": "temperature", "repeat_penalty": "repetition_penalty"}.get(key, key)
        try:
            v = self._SETTABLE[key](value.strip())
            if name != "max_tokens":
                from nemocpu.sampling import SamplingParams
                SamplingParams(**{name: v})          # validates the value
        except (ValueError, TypeError) as e:
            self.info(f"bad value for {key}: {e}")
            return
        self.conv.sampling[name] = v
        self.info(f"[{name} = {v}]")

    def _save(self, path: str) -> None:
        if not path:
            self.info("usage: /save FILE")
            return
        c = self.conv
        data = {"system": c.system, "enable_thinking": c.enable_thinking, "thinking_budget": c.thinking_budget,
                "messages": c.messages}
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=1)
        except OSError as e:
            self.info(f"cannot write {path}: {e.strerror or e}")
            return
        self.info(f"[saved {len(c.messages)} messages to {path}]")

    def _load(self, path: str) -> None:
        from nemocpu.generate import check_count

        if not path:
            self.info("usage: /load FILE")
            return
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            messages = data["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                raise ValueError("'messages' must be a list of {role, content} objects")
            system, budget = data.get("system"), data.get("thinking_budget")
            if system is not None and not isinstance(system, str):
                raise ValueError("'system' must be a string")
            check_count("thinking_budget", budget)
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.info(f"cannot load {path}: {e}")
            return
        c = self.conv
        c.messages = list(messages)
        c.system = system
        c.enable_thinking = bool(data.get("enable_thinking", c.enable_thinking))
        c.thinking_budget = budget
        self.info(f"[loaded {len(messages)} messages from {path}]")
