#!/usr/bin/env python3
"""llama.cpp-style entry point: ``python convert/convert_hf_to_gguf.py HF_DIR --outfile OUT.gguf
--outtype TYPE``. A thin wrapper over nemocpu.convert (the same code as ``nemocpu convert``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import nemocpu  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from nemocpu.convert import OUTTYPES, convert  # noqa: E402
from nemocpu.errors import NemocpuError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="Hugging Face checkpoint directory")
    ap.add_argument("--outfile", type=Path, required=True, help="output GGUF file")
    ap.add_argument("--outtype", default="auto", choices=OUTTYPES, help="weight type (default auto)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        convert(args.model, args.outfile, outtype=args.outtype, progress=not args.no_progress)
    except NemocpuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
