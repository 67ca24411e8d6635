"""The ``nemocpu`` command. Each subcommand lives in its own module and registers itself
here through ``register(subparsers)``; that module imports its heavy dependencies only
when the subcommand runs, so ``nemocpu --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import NemocpuError

# (module, attribute) pairs: each module defines register(subparsers).
SUBCOMMAND_MODULES = [
    "nemocpu.commands.chat",
    "nemocpu.commands.run",
    "nemocpu.commands.convert",
    "nemocpu.commands.bench",
    "nemocpu.commands.info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemocpu",
        description="Run NVIDIA Nemotron-H (Nemotron 3 Nano) GGUF models on the CPU: chat, run, convert, bench, info.")
    parser.add_argument("--version", action="version", version=f"nemocpu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # subcommand not built yet
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NemocpuError as e:
        print(f"nemocpu: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
