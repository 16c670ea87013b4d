"""`python -m jaxllm.convert SRC DST`: a Hugging Face checkpoint (folder, hub id or .gguf file) into
jaxllm's orbax format (see jaxllm.converted), which `jaxllm.load(DST)` restores without converting
again; `--to-hf` writes any loadable checkpoint (typically a converted one) back as HF safetensors.

The output is built in a hidden folder beside DST and renamed into place at the end, so an
interrupted conversion never leaves a folder that looks complete; an existing DST is replaced only
with --force, and only once the new one is complete. One process (no multi-host conversion).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax

from jaxllm import checkpoint, converted, orbax_writing, runtime, safetensors_io
from jaxllm.errors import ArgumentParser, CheckpointError, JaxllmError, argv_text, check_interrupted, handle_signals, run_cli
from jaxllm.loader import QUANTIZE, open_checkpoint, plan
from jaxllm.models import quant, weights
from jaxllm.progress import Bar, add_revision, flag_terms

# Files of a checkpoint folder that are weights (rewritten by us, or another runtime's: rust-bert's
# .ot, TFLite, ONNX), not side files to carry over.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".ot", ".tflite",
                    ".onnx", ".onnx_data")
_SKIP = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "config.json"}


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m jaxllm.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="checkpoint folder, hub id or .gguf file (with --to-hf: any of those, or a converted folder)")
    p.add_argument("dst", help="output folder (must not exist unless --force)")
    add_revision(p, "SRC")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the source's dtype, else float32)")
    p.add_argument("--to-hf", action="store_true", help="write Hugging Face safetensors instead of orbax")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (only once the new one is complete)")
    p.add_argument("--mesh", default=None, help="convert onto a device mesh, e.g. 'tp=4' (default: one device)")
    p.add_argument("--quantize", choices=QUANTIZE, help="save quantized weights: int8, int4 or gguf (see jaxllm.load)")
    p.add_argument("--group-size", type=int, help="--quantize: input values per scale")
    p.add_argument("--quantize-embeddings", action="store_true",
                   help="with --quantize: the token embedding and output head in int8 too")
    p.add_argument("--shard-size", type=float, help="--to-hf: largest safetensors file, in GB (default 5)")
    return p.parse_args(argv)


_NAME_BYTES = 255  # the longest file name (NAME_MAX) of the usual file systems
_STEM_BYTES = _NAME_BYTES - len("..partial-") - 10  # what of DST's name a hidden folder beside it keeps (10: a pid's digits)


def _hidden(dst: Path, kind: str, pid: int | str = "") -> str:
    """The name of a hidden folder beside `dst`: `.NAME.KIND-PID`, KIND "partial" (the output being
    written) or "old" (the output --force replaces). A NAME too long to fit beside the rest is cut,
    with a hash of the whole name in place of the tail (so another output's folders are not taken
    for its), so any output name the system takes has its hidden folders too."""
    name = dst.name
    if len(os.fsencode(name)) > _STEM_BYTES:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
        while len(os.fsencode(name)) > _STEM_BYTES - 1 - len(digest):  # whole characters: orbax takes UTF-8 paths only
            name = name[:-1]
        name = f"{name}~{digest}"
    return f".{name}.{kind}-{pid}"


def _hidden_dirs(dst: Path, kind: str):
    prefix = _hidden(dst, kind)
    return sorted(p for p in dst.parent.iterdir() if p.name.startswith(prefix)
                  and p.name[len(prefix):].isascii() and p.name[len(prefix):].isdigit())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale(dst: Path) -> None:
    """Remove half-written outputs left by conversions that were killed (their process is gone); an
    old output a killed --force had moved aside goes back in place when the new one had not come in
    (a rerun then finds DST as it was), and is removed when it had (it was being removed)."""
    if not dst.parent.is_dir():
        return
    for kind in ("old", "partial"):
        for folder in _hidden_dirs(dst, kind):
            if _pid_alive(int(folder.name.rsplit("-", 1)[-1])):
                continue
            if kind == "old" and not os.path.lexists(dst):
                folder.rename(dst)
            else:
                folder.unlink() if folder.is_symlink() else shutil.rmtree(folder, ignore_errors=True)


def _check_dst(src: Path, dst: Path, force: bool) -> None:
    try:
        _clear_stale(dst)
        _check_dst_path(src, dst, force)
    except OSError as err:  # a path the system refuses to look at (a name too long, ...)
        raise _refused(dst, err) from None


def _check_dst_path(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and not dst.is_dir():  # --force replaces folders only: not offered here
        raise JaxllmError(f"{dst} exists and is a file, not a folder: remove it or choose another output")
    if dst.exists() and not force:
        raise JaxllmError(f"{dst} already exists: choose another folder, or pass --force to replace it")
    if dst.is_symlink() and not dst.exists() and not force:  # a link to nothing: was converted, then refused as 'Not a directory'
        raise JaxllmError(f"{dst} already exists, a link to {os.readlink(dst)} which does not exist: choose another folder, "
                          "or pass --force to replace the link")
    above = next((p for p in dst.parents if p.exists()), None)  # the nearest part of the path that exists
    if above is not None and not above.is_dir():
        raise JaxllmError(f"{above} is a file, not a folder, so {dst} cannot be made: choose another output")
    if src.resolve() == dst.resolve() or dst.resolve() in src.resolve().parents:  # --force would delete the source
        raise JaxllmError(f"the output {dst} holds the source {src}: replacing it would delete the source; choose another folder")
    if dst.exists() and src.resolve() in dst.resolve().parents:  # --force deleted part of it (a converted folder's params/)
        raise JaxllmError(f"the output {dst} is inside the source {src}: replacing it would delete part of the source; "
                          "choose a folder outside it")
    here = Path.cwd().resolve()
    if dst.exists() and (dst.resolve() == here or dst.resolve() in here.parents):  # a folder in use cannot be moved aside
        raise JaxllmError(f"the output {dst} is the current folder or holds it: choose another folder, or run from elsewhere")


def _copy_side_files(src: Path, folder: Path, raw: dict) -> None:
    """config.json from `raw`; from a folder also generation_config.json, tokenizer files, licence,
    README (everything but weights); from a .gguf the tokenizer rebuilt from its metadata."""
    (folder / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    if src.is_dir():
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in _SKIP and f.name != converted.MARKER and not f.name.lower().endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(f, folder / f.name)
    else:
        tok = checkpoint.load_tokenizer(src)
        if tok is not None:
            tok.save_pretrained(str(folder))


def _finish(tmp: Path, dst: Path) -> None:
    """Move the complete output into place; an old DST (--force) goes only after the new one is there."""
    old = None
    if os.path.lexists(dst):  # a link to nothing too (rename refused to put a folder in its place)
        old = dst.parent / _hidden(dst, "old", os.getpid())
        dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:  # interrupted or refused between the two renames: the old output goes back
        if old is not None and not os.path.lexists(dst):
            old.rename(dst)
        raise
    if old is not None:  # a link DST (to a folder) is replaced, its target kept; rmtree refuses a link
        old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)


def convert(src, dst, *, dtype=None, to_hf: bool = False, force: bool = False, mesh=None,
            shard_bytes: int = 5 << 30, progress: bool = True, quantize: str | None = None,
            group_size: int | None = None, quantize_embeddings: bool = False, revision: str | None = None) -> dict:
    """Convert `src` into `dst` (see the module docstring); returns timings and sizes. `dtype`
    None: the dtype the source stores its weights in, else float32. `revision`: `src` as a hub id,
    the branch, tag or commit hash to convert (default: main). Whatever ends it early (an
    error, a full or read-only disk, Ctrl-C, SIGTERM), nothing is left behind once it returns."""
    start = time.perf_counter()
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise JaxllmError(f"shard_bytes={shard_bytes!r:.40} is invalid: give the largest safetensors file's size, a positive "
                          "whole number of bytes")
    if isinstance(dst, str) and not dst.strip():  # an unset shell variable: was read as '.', the current folder
        raise JaxllmError("the output folder is empty: give the folder to write, e.g. ./converted")
    dst = Path(dst).expanduser()
    source = open_checkpoint(src, revision)
    _check_dst(source.path, dst, force)
    if not to_hf:  # orbax (tensorstore) takes UTF-8 paths only: undecodable bytes failed mid-write (a RuntimeError)
        argv_text(str(dst.absolute()), f"the output path {dst.absolute()}", "name it in UTF-8 (orbax takes UTF-8 paths only), "
                  "or write --to-hf")
    given = [flag for flag, value in (("--quantize", quantize), ("--quantize-embeddings", quantize_embeddings)) if value]
    if given and to_hf:  # a quantized converted folder exports its float values whatever they say: refused, not dropped
        raise JaxllmError(f"{' and '.join(given)} write{'s' if len(given) == 1 else ''} jaxllm's own format: drop --to-hf "
                          "(Hugging Face files hold float weights)")
    p = plan(source.raw, source.dtype if dtype is None else dtype, mesh, source, quantize=quantize, group_size=group_size,
             quantize_embeddings=quantize_embeddings)
    dtype_name = jax.numpy.dtype(p.dtype).name
    p.check()
    if mesh is None and jax.default_backend() != "cpu":
        # Onto the host's CPU device: the weights go from the source's pages to the writer without a
        # round trip through the accelerator, and a model larger than its memory converts too.
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        p.shardings = {path: cpu for path in weights.flat_params(p.abstract)}
    tmp = dst.parent / _hidden(dst, "partial", os.getpid())
    made = [folder for folder in dst.parents if not folder.exists()]  # made here, nearest first: gone on failure
    # A last sweep at exit, after the interpreter has joined every writer thread; kept on failure.
    sweep = functools.partial(_remove, tmp)
    atexit.register(sweep)
    try:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as err:
            raise _refused(dst, err) from None
        origin = dict(source=str(src), **({} if revision is None else dict(revision=revision)))  # the marker's record of it
        read_s, files = _write(source, p, tmp, dst, dtype_name, origin, to_hf, shard_bytes, progress)
        check_interrupted()  # a signal whose exception Python swallowed (in a garbage-collection callback)
        _finish(tmp, dst)
    except OSError as err:
        _remove(tmp, made)
        raise _refused(dst, err, tmp) from None
    except BaseException:
        _remove(tmp, made)
        raise
    atexit.unregister(sweep)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    return dict(seconds=time.perf_counter() - start, read_seconds=read_s, bytes=size, files=files, dtype=dtype_name)


def _write(source, p, tmp: Path, dst: Path, dtype_name: str, origin: dict, to_hf: bool, shard_bytes: int, progress: bool):
    """The parameters and side files into `tmp`, what makes it a checkpoint last (orbax: the marker; Hugging Face
    files: config.json, so a folder killed mid-write, its files at full length with zeros where no tensor was written
    yet, is none): (seconds reading, the files written)."""
    start = time.perf_counter()
    raw = dict(source.raw)
    if to_hf:
        for k in [k for k in ("torch_dtype", "dtype") if k in raw] or ["torch_dtype"]:
            raw[k] = dtype_name
        raw.pop("quantization_config", None)  # gpt-oss's MXFP4 experts are written back dequantized, as floats
    else:
        _copy_side_files(source.path, tmp, raw)
    with Bar(len(jax.tree.leaves(p.abstract)), "reading", enabled=progress) as bar:
        params = p.read(bar)
        jax.block_until_ready(params)
    read_s = time.perf_counter() - start
    if to_hf:
        specs = p.arch.weight_map(p.config)
        stored = weights.flat_params(params)
        del params
        shapes = weights.hf_layout(specs, {path: v.shape for path, v in stored.items()})  # a kernel's shape whatever its dtype
        flat = quant.Dequantized(stored, p.dtype)  # a quantized folder writes back its float values, one tensor at a time
        layout = {name: (shape, p.dtype) for name, shape in shapes.items()}
        with Bar(len(layout), "writing", enabled=progress) as bar:
            files = safetensors_io.write_safetensors(tmp, layout, weights.export_tensors(specs, flat), shard_bytes, bar)
        _copy_side_files(source.path, tmp, raw)
    else:
        meta = dict(dtype=dtype_name, architecture=p.arch.name, **origin, quantize=p.quantize)
        converted.save(tmp, params, meta, shown=dst)
        files = [converted.PARAMS, converted.MARKER]
    return read_s, files


def _refused(dst: Path, err: OSError, tmp: Path | None = None) -> JaxllmError:
    """The one-line error, naming `dst`, of a write the system refused (full disk, read-only
    folder, ...); with `tmp` (the source is being read too), a failure on a file outside `tmp` is
    a read of the source."""
    name = os.fsdecode(err.filename) if err.filename is not None else None
    if tmp is not None and name is not None and not os.path.abspath(name).startswith(os.path.abspath(tmp)):
        return CheckpointError(f"cannot read {name} ({err.strerror or type(err).__name__}): check the source checkpoint")
    return orbax_writing.write_error(dst, err) or JaxllmError(f"cannot write {dst}: {err.strerror or err}; check the disk "
                                                               "or choose another output folder")


def _remove(folder: Path, made: list[Path] = ()) -> None:
    """Remove a partial output for good: again while a write that was already under way when the
    conversion stopped (inside tensorstore, after its Python thread ended) brings it back; then
    the folders above it that the conversion `made` (nearest first), while they are empty."""
    for _ in range(40):
        shutil.rmtree(folder, ignore_errors=True)
        time.sleep(0.02)
        if not os.path.lexists(folder):
            break
    for parent in made:
        try:
            parent.rmdir()
        except OSError:  # gone already, or something else was put there meanwhile: kept
            if parent.exists():
                return


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.quiet()
    handle_signals()  # SIGTERM unwinds like Ctrl-C, so the partial output is removed (exit 143)

    def body() -> int:
        if args.shard_size is not None and not args.to_hf:  # was ignored: orbax writes no safetensors files
            raise JaxllmError("--shard-size goes with --to-hf (the largest safetensors file): pass --to-hf too, or drop "
                              "--shard-size")
        shard_size = 5.0 if args.shard_size is None else args.shard_size
        if not math.isfinite(shard_size) or shard_size * 1e9 < 1:  # below a byte: was refused as shard_bytes=0
            raise JaxllmError(f"--shard-size {shard_size} is invalid: give a positive, finite number of GB (e.g. 5), "
                              "at least 1e-9 (a byte)")
        with flag_terms():  # the library's messages name its arguments: here, the flags (a --shard-size beyond int64: one file)
            out = convert(args.src, args.dst, dtype=args.dtype, to_hf=args.to_hf, force=args.force, mesh=args.mesh,
                          shard_bytes=int(min(shard_size * 1e9, 2**62)), quantize=args.quantize, group_size=args.group_size,
                          quantize_embeddings=args.quantize_embeddings, revision=args.revision)
        kind = "Hugging Face safetensors" if args.to_hf else "jaxllm (orbax)"
        print(f"wrote {args.dst} ({kind}, {out['dtype']}, {out['bytes'] / 1e9:.2f} GB) in {out['seconds']:.1f}s "
              f"(reading and converting {out['read_seconds']:.1f}s)")
        return 0

    return run_cli(body, "interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
