"""``nemocpu convert HF_DIR -o OUT.gguf --outtype TYPE``: Hugging Face checkpoint -> GGUF."""

from __future__ import annotations

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "fp8", "auto")   # = nemocpu.convert.OUTTYPES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a Hugging Face Nemotron-H checkpoint to GGUF",
        description="Convert a Hugging Face NemotronHForCausalLM checkpoint (BF16/F16/F32 or ModelOpt FP8) "
                    "to a GGUF file in llama.cpp's layout. fp8 files run only in nemocpu; q8_0 is the "
                    "choice that llama.cpp can also run.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="checkpoint directory (config.json, *.safetensors, tokenizer)")
    p.add_argument("-o", "--outfile", required=True, metavar="OUT.gguf", help="output file")
    p.add_argument("--outtype", default="auto", choices=OUTTYPES,
                   help="weight type (default auto: keep the checkpoint's precision, FP8 stays FP8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..convert import convert

    out = convert(args.hf_dir, args.outfile, outtype=args.outtype, progress=not args.no_progress)
    print(f"wrote {out}", file=sys.stderr)
    return 0
