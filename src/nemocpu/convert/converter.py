"""HF NemotronH checkpoint -> GGUF, streamed: header first, then one tensor (chunk) at a time.

Peak memory does not grow with the model: tensors are read from the safetensors files in
row chunks (CHUNK_ELEMENTS), encoded and written before the next chunk is read. The output
is written to a temporary file next to the destination, fsync'ed and renamed at the end; any
failure, SIGINT or SIGTERM removes the temporary file, so OUT.gguf exists only when complete.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from ..arch import FP8_FORMAT, FP8_FORMAT_KEY, fp8_scale_name, gguf_kv
from ..errors import ConversionError
from . import types as ty
from .checkpoint import HFCheckpoint, read_json
from .plan import PlannedTensor, iter_source_rows, permute_rows, plan_tensors
from .vocab import add_tokenizer

EOS_IDS_KEY = "nemocpu.tokenizer.eos_token_ids"   # generation_config.json's eos ids (all of them)


def _auto_type(ckpt: HFCheckpoint):
    """llama.cpp's --outtype auto: the dtype of the first >= 2-D floating tensor."""
    for t in ckpt.tensors.values():
        if len(t.shape) >= 2 and t.dtype in ("BF16", "F16", "F32"):
            return {"BF16": T.BF16, "F16": T.F16, "F32": T.F32}[t.dtype]
    return T.F16


def _fp8_scale_of_sources(p: PlannedTensor) -> np.ndarray:
    """Scales of a losslessly copied FP8 tensor: 1 (per tensor), n_mat, or n_mat*rows values."""
    scales = [np.asarray(s, dtype=np.float32).reshape(-1) for s in p.fp8_scales]
    rows = p.spec.ne[1]
    if all(s.size == 1 for s in scales):
        return scales[0] if len(scales) == 1 else np.concatenate(scales)
    per_row = [np.broadcast_to(s, (rows,)) for s in scales]
    if p.transform == "permute":
        per_row = [permute_rows(s, p.permute_heads) for s in per_row]
    return np.concatenate(per_row).astype(np.float32)


def _scale_count(p: PlannedTensor, outtype: str) -> int:
    if p.sources_fp8 and outtype in ("fp8", "auto"):
        return _fp8_scale_of_sources(p).size
    return p.spec.n_elements // p.spec.ne[0]          # one scale per row


def _add_kv(writer: gguf.GGUFWriter, key: str, value, vtype: str) -> None:
    if vtype.startswith("ARRAY_"):
        writer.add_key_value(key, list(value), V.ARRAY, sub_type=V[vtype[6:]])
    else:
        writer.add_key_value(key, value, V[vtype])


def build_writer(ckpt: HFCheckpoint, plan: list[PlannedTensor], outtype: str) -> gguf.GGUFWriter:
    """A GGUFWriter holding every key and tensor info, in llama.cpp's order."""
    hp = ckpt.hparams
    writer = gguf.GGUFWriter(path=None, arch=hp.arch)
    for p in plan:
        np_shape = tuple(reversed(p.spec.ne))
        writer.add_tensor_info(p.name, np_shape, np.dtype(np.float32), ty.tensor_nbytes(p.qtype, p.spec.ne),
                               raw_dtype=T(ty.ggml_type_id(p.qtype)))
        if p.qtype == ty.FP8:
            n = _scale_count(p, outtype)
            writer.add_tensor_info(fp8_scale_name(p.name), (n,), np.dtype(np.float32), 4 * n, raw_dtype=T.F32)

    # general.* as llama.cpp's prepare_metadata writes them
    total, shared, expert, n_exp = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, ckpt.dir, None, total)
    if meta.name is None:
        meta.name = ckpt.dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_exp)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)

    for key, value, vtype in gguf_kv(hp):
        if key != "general.architecture":
            _add_kv(writer, key, value, vtype)
    qtypes = {p.qtype for p in plan if p.spec.role != "f32"}
    if ty.FP8 in qtypes:
        writer.add_string(FP8_FORMAT_KEY, FP8_FORMAT)
    else:
        main = {"q4_0": T.Q4_0, "q8_0": T.Q8_0, "f16": T.F16, "bf16": T.BF16, "f32": T.F32}.get(outtype)
        writer.add_file_type(int(ty.FILE_TYPES[main if main is not None else _auto_type(ckpt)]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    add_tokenizer(writer, ckpt.dir, hp.n_vocab)
    gen = ckpt.dir / "generation_config.json"
    if gen.is_file():
        eos = read_json(gen).get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else eos
        if isinstance(eos, list) and eos and all(isinstance(i, int) for i in eos):
            writer.add_array(EOS_IDS_KEY, eos)
    return writer


# ---- tensor data --------------------------------------------------------------------------
F16_MAX = 65504.0


def _check_finite(p: PlannedTensor, k: int, rows: np.ndarray) -> None:
    """NaN/inf weights would be written silently and poison every output: refuse them."""
    if not np.isfinite(rows).all():
        raise ConversionError(p.sources[k].path, f"tensor {p.sources[k].name!r} contains NaN or infinite values")


def tensor_chunks(p: PlannedTensor, outtype: str):
    """Yield ("data", bytes) chunks of a planned tensor, then ("scale", bytes) for FP8."""
    if p.qtype != ty.FP8:
        for k, rows in iter_source_rows(p, raw_fp8=False):
            _check_finite(p, k, rows)
            if p.qtype == T.F16 and np.abs(rows).max(initial=0) > F16_MAX:
                raise ConversionError(p.sources[k].path, f"tensor {p.sources[k].name!r} has values beyond "
                                      f"the F16 range (|x| > {F16_MAX:g}); use --outtype bf16 or f32")
            yield "data", ty.encode_rows(rows, p.qtype)
        return
    if p.sources_fp8 and outtype in ("fp8", "auto"):       # lossless copy of ModelOpt codes
        for _, codes in iter_source_rows(p, raw_fp8=True):
            yield "data", np.ascontiguousarray(codes).reshape(-1)
        yield "scale", _fp8_scale_of_sources(p).view(np.uint8)
        return
    scales = []
    for k, rows in iter_source_rows(p, raw_fp8=False):
        _check_finite(p, k, rows)
        codes, s = ty.fp8_rows(rows)
        scales.append(s)
        yield "data", codes.reshape(-1)
    yield "scale", np.concatenate(scales).astype(np.float32).view(np.uint8)


@contextmanager
def _terminate_as_exception():
    """Turn SIGTERM into KeyboardInterrupt while converting, so cleanup code runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:           # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _write_data(writer: gguf.GGUFWriter, plan, outtype: str, fout, progress: bool) -> None:
    from tqdm import tqdm

    alignment = writer.data_alignment or gguf.GGUF_DEFAULT_ALIGNMENT
    infos = list(writer.tensors[0].items())
    total = sum(ti.nbytes for _, ti in infos)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               disable=not progress, desc="writing", dynamic_ncols=True)
    fout.write(b"\0" * (-fout.tell() % alignment))      # the data section starts aligned
    it = iter(infos)

    def begin(expected_name):        # the data must follow the tensor infos' order exactly
        name, ti = next(it)
        if name != expected_name:
            raise ConversionError(None, f"internal: writing {expected_name!r} where {name!r} belongs")
        return ti

    def finish(ti, written):
        if written != ti.nbytes:
            raise ConversionError(None, f"internal: wrote {written} bytes, expected {ti.nbytes}")
        fout.write(b"\0" * (-written % alignment))

    with bar:
        for p in plan:
            ti = begin(p.name)
            written = 0
            scale_bytes = None
            for kind, chunk in tensor_chunks(p, outtype):
                if kind == "scale":
                    scale_bytes = chunk
                    continue
                fout.write(chunk.tobytes())
                written += chunk.nbytes
                bar.update(chunk.nbytes)
            finish(ti, written)
            if p.qtype == ty.FP8:
                sti = begin(fp8_scale_name(p.name))
                fout.write(scale_bytes.tobytes())
                bar.update(scale_bytes.nbytes)
                finish(sti, scale_bytes.nbytes)


# A partial output is named .OUT.gguf.<pid>.<random>.part. A writer killed by SIGKILL (or power loss)
# cannot remove its own; the next conversion to the same OUT removes those whose writer is gone
# and that nobody has written to for this long (a live writer on another host sharing the folder
# has a pid that means nothing here, but it keeps its file's mtime fresh).
STALE_PART_SECONDS = 60


def _part_prefix(out: Path) -> str:
    return f".{out.name}.{os.getpid()}."


def remove_stale_parts(out: Path) -> list[Path]:
    """Remove the partial outputs that killed conversions to `out` left behind; return them."""
    removed = []
    for part in out.parent.glob(f".{glob.escape(out.name)}.*.part"):
        pid = part.name[len(out.name) + 2:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue                      # its writer is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue                      # alive under another user, or not a pid: not ours to judge
        try:
            if time.time() - part.stat().st_mtime < STALE_PART_SECONDS:
                continue
            part.unlink()
        except OSError:
            continue
        removed.append(part)
    return removed


def convert(hf_dir, out_path, outtype: str = "auto", progress: bool = True) -> Path:
    """Convert a NemotronH HF checkpoint directory to a GGUF file; return its path."""
    if outtype not in ty.OUTTYPES:
        raise ConversionError(None, f"unknown output type {outtype!r} (choose from {', '.join(ty.OUTTYPES)})")
    ckpt = HFCheckpoint(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = ckpt.dir / name
        if not path.is_file():
            problem = "cannot read: not a regular file" if path.exists() else "file not found"
            raise ConversionError(path, f"{problem} (the tokenizer is part of the GGUF)")
    plan = plan_tensors(ckpt)
    auto = _auto_type(ckpt)
    for p in plan:
        p.qtype = ty.choose_type(p.spec.role, p.spec.ne[0], outtype, auto, p.sources_fp8)
    writer = build_writer(ckpt, plan, outtype)

    out = Path(out_path)
    if out.is_dir():
        raise ConversionError(out, "is a directory; give the output file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for part in remove_stale_parts(out):
            print(f"removed {part}: the partial output of a conversion that was killed", file=sys.stderr)
        fd, tmp_name = tempfile.mkstemp(prefix=_part_prefix(out), suffix=".part", dir=out.parent)
    except OSError as e:      # a folder that cannot be made or written to
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(out) else ""
        raise ConversionError(out, f"cannot create the output: {e.strerror or e}{where}") from None
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)     # mkstemp's 0600 is not what a user expects
        with _terminate_as_exception():
            with os.fdopen(fd, "wb") as fout:
                writer.fout = [fout]
                writer.path = tmp
                writer.state = gguf.gguf_writer.WriterState.EMPTY
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                _write_data(writer, plan, outtype, fout, progress)
                fout.flush()
                os.fsync(fout.fileno())
                writer.fout = None
            os.replace(tmp, out)
    except OSError as e:      # disk full, file size limit, I/O error: a message, not a traceback
        tmp.unlink(missing_ok=True)
        where = f" ({e.filename})" if e.filename else ""
        raise ConversionError(out, f"writing failed: {e.strerror or e}{where}; no output was written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return out
