"""``nemocpu info [MODEL]``: version, CPU features and kernel variants, and the model's contents."""

from __future__ import annotations

import json
from collections import Counter


def register(sub) -> None:
    p = sub.add_parser("info", help="show the CPU, the kernel variants and a model's contents",
                       description="Print nemocpu's version, the CPU features and kernel variants, "
                                   "and (without loading weights) a GGUF model's hyperparameters and tensors.")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded tiny model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)


def collect(path=None) -> dict:
    import nemocpu
    from nemocpu import _core
    from nemocpu.data import default_model_path
    from nemocpu.model import active_variant
    from nemocpu.model_file import open_model_file

    info = {"nemocpu": nemocpu.__version__}
    feats = _core.cpu_features()
    info["cpu_features"] = sorted(k for k, v in feats.items() if v is True)
    info["compiled_variants"] = list(_core.compiled_variants())
    info["variants"] = list(_core.variants())
    info["active_variant"] = active_variant()
    from nemocpu import cuda
    info["cuda"] = cuda.info()                      # GPU build and devices (docs/cuda.md)
    mf = open_model_file(path if path is not None else default_model_path())
    hp = mf.hparams
    types = Counter("FP8" if mf.gguf.tensors[n].type_name == "I8" else mf.gguf.tensors[n].type_name
                    for n in mf.tensors if not n.endswith("_scale"))
    n_params = sum(mf.gguf.tensors[n].n_elements for n in mf.tensors if not n.endswith("_scale"))
    info["model"] = {
        "path": mf.path,
        "name": mf.metadata.get("general.name"),
        "file_bytes": mf.gguf.file_size,
        "gguf_version": mf.gguf.version,
        "tensors": len(mf.tensors),
        "tensor_types": dict(sorted(types.items())),
        "parameters": n_params,
        "hparams": hp.as_dict(),
        "chat_template": "tokenizer.chat_template" in mf.metadata,
        "tokenizer": {"model": mf.metadata.get("tokenizer.ggml.model"),
                      "pre": mf.metadata.get("tokenizer.ggml.pre"),
                      "n_tokens": len(mf.metadata.get("tokenizer.ggml.tokens") or [])},
    }
    mf.gguf.close()
    return info


def main(args) -> int:
    info = collect(args.model)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"nemocpu {info['nemocpu']}")
    print(f"CPU features:    {' '.join(info['cpu_features'])}")
    print(f"kernel variants: {', '.join(info['compiled_variants'])} compiled, {', '.join(info['variants'])} usable; "
          f"active: {info['active_variant']} (force with NEMOCPU_ISA=...)")
    c = info["cuda"]
    print("CUDA:            " + (f"runtime {c['runtime']}, driver {c['driver']}, archs {c['archs']}; devices: "
                                 f"{', '.join(c['devices']) or 'none usable'}" if c["built"]
                                 else "not built (pip install . -Ccmake.define.NEMOCPU_CUDA=ON)"))
    m = info["model"]
    hp = m["hparams"]
    print(f"\nmodel:          {m['path']}" + (f"  ({m['name']})" if m["name"] else ""))
    print(f"file:           {m['file_bytes'] / 2**20:.1f} MiB, GGUF v{m['gguf_version']}, {m['tensors']} tensors, "
          f"{m['parameters'] / 1e6:.1f} M parameters")
    print(f"tensor types:   {', '.join(f'{k} x{v}' for k, v in m['tensor_types'].items())}")
    print(f"architecture:   {hp['arch']}, {hp['n_layer']} layers {hp['layer_kinds']}")
    print(f"sizes:          n_embd {hp['n_embd']}, vocab {hp['n_vocab']}, attention {hp['n_head']}q/{hp['n_head_kv']}kv "
          f"x {hp['head_dim']}, mamba {hp['ssm_n_head']} heads x {hp['ssm_head_dim']}, state {hp['ssm_d_state']}, "
          f"{hp['ssm_n_group']} groups")
    if hp["n_expert"]:
        print(f"experts:        {hp['n_expert_used']} of {hp['n_expert']} (width {hp['n_ff_exp']}), shared width "
              f"{hp['n_ff_shexp']}, scale {hp['expert_weights_scale']:g}, norm {hp['expert_weights_norm']}")
    t = m["tokenizer"]
    print(f"tokenizer:      {t['model']} / {t['pre']}, {t['n_tokens']} tokens, chat template: "
          f"{'yes' if m['chat_template'] else 'no'}")
    return 0
