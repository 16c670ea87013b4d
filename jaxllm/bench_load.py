"""`python -m jaxllm.bench --load`: how long loading takes (`load_section`, its table and JSON);
jaxllm.bench's command line hands `--load` and `--load-folder` to `load_main` here.

Timed: a random-weight Hugging Face checkpoint of each --shape (or the checkpoint of --load-folder),
each step in a fresh process: `jaxllm.load` of the safetensors, `python -m jaxllm.convert`'s work,
`jaxllm.load` of the converted (orbax) folder, and transformers' `from_pretrained` of the same files
(when torch and transformers are installed), with the peak host RSS above the process's baseline;
warm page cache (best of --repeat) and, where the page cache can be dropped (root), cold.

Also the helpers the speed benchmark shares with it, imported by jaxllm.bench from here (this
module imports jaxllm.bench only when run as the program, `python -m jaxllm.bench_load`): `section`, `hf_peer`, `fresh_python` (a step in a fresh process,
its failure one line), `check_out` and `write_json` (--out checked before the run, written atomically).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxllm
from jaxllm import convert, converted, safetensors_io
from jaxllm.errors import JaxllmError
from jaxllm.loader import plan
from jaxllm.models import weights
from jaxllm.random_model import SHAPES


def section(name, fn):
    """Run one measurement, saying how long it took (compiles included) on stderr."""
    t = time.perf_counter()
    value = fn()
    shown = f" -> {value}" if isinstance(value, (dict, float, int)) else ""
    print(f"  {name}: {time.perf_counter() - t:.1f}s{shown}", file=sys.stderr, flush=True)
    return value


HF_PEER = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_peer.py"
PEER_FIX = ("pip install torch transformers, and run from a source checkout of jaxllm (git clone, then pip install -e .; "
            "the peer is its benchmarks/hf_peer.py)")


def hf_peer_missing() -> str | None:
    """None when the transformers peer can run here, else what is missing (torch, transformers, or the
    source checkout that holds benchmarks/hf_peer.py), checked without importing torch."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    if not HF_PEER.exists():
        return f"jaxllm is not a source checkout here ({HF_PEER} is missing)"
    return None


def hf_peer():
    """The transformers peer's module. It lives outside the package (benchmarks/hf_peer.py in a
    source checkout), so the runtime never imports torch or transformers' model classes."""
    if why := hf_peer_missing():
        raise JaxllmError(f"the transformers peer cannot run: {why}: {PEER_FIX}")
    spec = importlib.util.spec_from_file_location("jaxllm_hf_peer", HF_PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_python(args: list[str], what: str, timeout: float) -> str:
    """The stdout of `python ARGS` run in a fresh process, or a one-line JaxllmError naming `what`
    failed and the child's last line on stderr (its exception), not the child's whole traceback."""
    try:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise JaxllmError(f"{what} did not finish in {timeout:g} s in its process and was stopped: "
                          "use smaller shapes or --skip that section") from None
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1].strip()
        code = f"signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}"
        raise JaxllmError(f"{what} failed in its process ({code}): {last[:300]}")
    return out.stdout


def why_not_writable(folder: str) -> str | None:
    """None when a new file can be made in `folder`, else why not (tried: permission bits lie for
    root and on read-only or virtual file systems such as /sys)."""
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist" if not os.path.exists(folder) else f"{folder} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".jaxllm-probe-")
    except OSError as err:
        return f"cannot create a file in {folder} ({err.strerror or err})"
    os.close(fd)
    os.remove(probe)
    return None


def check_out(path: str, flag: str = "--out") -> None:
    """A JaxllmError unless `path` can take the results file: not a folder, in a folder that exists
    and takes new files (where write_json writes its temporary file). Checked before the run."""
    if not path:
        raise JaxllmError(f"{flag} is empty: give a file path, e.g. {flag} bench.json")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise JaxllmError(f"cannot write {flag} {path}: it is a folder: give a file path")
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.path.isfile(target):  # /dev/null, a pipe: written in place
        if not os.access(target, os.W_OK):
            raise JaxllmError(f"cannot write {flag} {path}: no permission: give a path you can write")
        return
    why = why_not_writable(os.path.dirname(target))
    if why:
        raise JaxllmError(f"cannot write {flag} {path}: {why}: give a path in a folder you can write")


def write_json(path: str, value, flag: str = "--out") -> None:
    """`value` as JSON at `path`, atomically: a temporary file in the same folder, then os.replace,
    so a failure (or Ctrl-C) never leaves a half-written file. A path that is not a regular file
    (/dev/null, a pipe) is written in place; a symbolic link keeps pointing at the new file."""
    target = os.path.realpath(path)
    value = finite(value)
    try:
        if os.path.exists(target) and not os.path.isfile(target):
            with open(target, "w") as f:
                json.dump(value, f, indent=1, allow_nan=False)
            return
        if os.path.exists(target):
            mode = os.stat(target).st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f, indent=1, allow_nan=False)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise JaxllmError(f"cannot write {flag} {path}: {err.strerror or err}: give a path in a folder you can write") from None


def finite(value):
    """`value` (nested dicts and lists) with every NaN or infinite float as None: a rate of a section that
    measured nothing is "not measured", and the file stays JSON that any parser loads (json writes NaN,
    which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def run_settings(args, shapes: list[str]) -> dict:
    """What a results file records about its run, so that two files can be compared: the date, the
    versions, the command line and the settings it ran with (the device is the caller's: it needs JAX
    started)."""
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "jax": jax.__version__, "jaxllm": jaxllm.__version__,
            "argv": sys.argv[1:], "settings": {"shapes": shapes, "dtype": args.dtype, "quick": args.quick,
                                               "skip": sorted({n.strip() for n in args.skip.split(",")} - {""}),
                                               "quantize": args.quantize, "quantize_embeddings": args.quantize_embeddings,
                                               "kv_dtype": args.kv_dtype,
                                               "mesh": args.mesh, "compare": args.compare, "tp": args.tp, "repeat": args.repeat}}


_MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
LOAD_STEPS = ("safetensors", "sharded", "convert", "orbax", "transformers")  # sharded: with --mesh
LOAD_SKIPS = (*LOAD_STEPS, "cold")  # what --load's --skip takes


def write_checkpoint(folder, shape: str, dtype: str = "bfloat16", shard_bytes: int = 5 << 30) -> int:
    """A Hugging Face checkpoint of a named shape (random_model.SHAPES) in `folder`: config.json and
    safetensors shards of N(0, 0.02)-like weights (a random block repeated, so writing is as fast
    as the disk) and unit norms. No device is used. Returns the bytes of the safetensors files."""
    folder = Path(folder)
    raw = dict(SHAPES[shape], torch_dtype=dtype)
    raw.setdefault("model_type", _MODEL_TYPES.get(raw["architectures"][0], "llama"))
    p = plan(raw, dtype)
    specs = p.arch.weight_map(p.config)
    shapes = {path: leaf.shape for path, leaf in weights.flat_params(p.abstract).items()}
    np_dtype = np.dtype(p.dtype)
    layout = {name: (tuple(s), np_dtype) for name, s in weights.hf_layout(specs, shapes).items()}
    block = (0.02 * np.random.default_rng(0).standard_normal(1 << 22, np.float32)).astype(np_dtype)

    def tensors():
        for i, (name, (s, dt)) in enumerate(layout.items()):
            if len(s) == 1:
                yield name, np.ones(s, dt)
                continue
            start = (i * 7919) % block.size
            yield name, np.resize(np.concatenate([block[start:], block[:start]]), math.prod(s)).reshape(s)

    folder.mkdir(parents=True, exist_ok=True)
    files = safetensors_io.write_safetensors(folder, layout, tensors(), shard_bytes)
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    return sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))


def _memory() -> tuple[int, int] | None:
    """(resident bytes now, high-water mark) of this process (Linux), else None."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def load_worker(argv=None) -> None:
    """One timed step in this (fresh) process: `STEP PATH DTYPE [DST]`; prints JSON {seconds, peak
    host bytes above the baseline taken after the imports and the backend's start, ...}."""
    step, path, dtype, *rest = argv if argv is not None else sys.argv[1:]
    out = {}
    if step == "transformers":
        peer = hf_peer()
        peer.start_device()
        base = _memory()
        start = time.perf_counter()
        out["device"] = peer.load(path, dtype)
    else:
        import orbax.checkpoint  # noqa: F401 - imported before the baseline, as loading a converted folder does

        jax.numpy.zeros(1).block_until_ready()
        out["device"] = str(jax.devices()[0].device_kind)
        base = _memory()
        start = time.perf_counter()
        if step == "convert":
            convert.convert(path, rest[0], dtype=dtype, progress=False)
        else:  # safetensors, orbax, or sharded (safetensors onto the mesh rest[0])
            model = jaxllm.load(path, dtype=dtype, tokenizer=False, mesh=rest[0] if step == "sharded" else None)
            jax.block_until_ready(model.params)
            if jax.default_backend() == "cpu":  # the parameters themselves are host memory here
                out["placed_bytes"] = sum(x.nbytes for x in jax.tree.leaves(model.params))
    out["seconds"] = time.perf_counter() - start
    end = _memory()
    if base and end:
        out["peak_rss_above_baseline_bytes"] = max(end[1], end[0]) - base[0]
    print(json.dumps(out), flush=True)


def can_drop_page_cache() -> str | None:
    """None when this process can drop the page cache (Linux, root), else why not."""
    path = "/proc/sys/vm/drop_caches"
    if not os.path.exists(path):
        return "no /proc/sys/vm/drop_caches (not Linux)"
    if os.geteuid() != 0 or not os.access(path, os.W_OK):
        return "dropping the page cache needs root (write access to /proc/sys/vm/drop_caches)"
    try:
        drop_page_cache()
    except OSError as err:
        return f"writing /proc/sys/vm/drop_caches failed ({err.strerror})"
    return None


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _fresh(step: str, path, dtype: str, *rest, cold: bool = False, timeout: float = 1800) -> dict:
    """Run load_worker in a fresh process (after dropping the page cache when `cold`)."""
    if cold:
        drop_page_cache()
    start = time.perf_counter()
    cmd = ["-c", "from jaxllm.bench_load import load_worker; load_worker()", step, str(path), dtype, *map(str, rest)]
    result = json.loads(fresh_python(cmd, f"the {step} step", timeout).strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def load_section(shape: str | None, dtype: str, folder=None, repeat: int = 2, skip=(), workdir=None, mesh=None) -> dict:
    """Load timings of one checkpoint (see the module docstring); every step in a fresh process;
    with `mesh` (a spec such as "tp=2") also the safetensors load onto that mesh."""
    tmp = Path(tempfile.mkdtemp(prefix="jaxllm-load-", dir=workdir))
    try:
        if folder is None:
            folder = tmp / "hf"
            section(f"write {shape} checkpoint", lambda: fresh_python(
                ["-c", f"from jaxllm.bench_load import write_checkpoint; write_checkpoint({str(folder)!r}, {shape!r}, {dtype!r})"],
                f"writing the {shape} checkpoint", 3600))
        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        report = {"section": "load", "shape": shape, "folder": str(folder) if shape is None else None, "dtype": dtype,
                  "bytes": sum(f.stat().st_size for f in files), "files": len(files), "repeat": repeat, "steps": {}}
        why_not = "left out (--skip cold)" if "cold" in skip else can_drop_page_cache()
        report["cold_cache"] = why_not or "measured"
        peer_missing = hf_peer_missing()
        dst = tmp / "converted"

        def measure(step, path, *rest, before=None):
            runs = {}
            if why_not is None:
                before and before()
                runs["cold"] = section(f"{step}, cold page cache", lambda: _fresh(step, path, dtype, *rest, cold=True))
            warm = []
            for _ in range(repeat):
                before and before()
                warm.append(section(f"{step}, warm page cache", lambda: _fresh(step, path, dtype, *rest)))
            runs["warm"] = min(warm, key=lambda r: r["seconds"])
            return runs

        steps = report["steps"]
        if "safetensors" not in skip:
            steps["safetensors"] = measure("safetensors", folder)
        if mesh and "sharded" not in skip:
            steps["sharded"] = measure("sharded", folder, mesh)
            report["mesh"] = mesh
        if "convert" not in skip or "orbax" not in skip:
            clear = lambda: shutil.rmtree(dst, ignore_errors=True)  # noqa: E731 - each conversion writes a new folder
            converted = measure("convert", folder, dst, before=clear)
            if "convert" not in skip:
                steps["convert"] = converted
            if "orbax" not in skip:
                steps["orbax"] = measure("orbax", dst)
        if "transformers" not in skip:
            if peer_missing is None:
                steps["transformers"] = measure("transformers", folder)
            else:
                report["transformers"] = f"transformers not measured: {peer_missing} ({PEER_FIX})"
        report["device"] = next((r["warm"].get("device") for k, r in steps.items() if k != "transformers"), None)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_LOAD_NAMES = {"safetensors": "jaxllm.load, safetensors", "sharded": "jaxllm.load, safetensors, --mesh", "orbax": "jaxllm.load, converted (orbax)",
               "convert": "convert (in process)", "transformers": "transformers from_pretrained"}


def load_table(report: dict) -> str:
    """The load section's results as text."""
    gb = report["bytes"] / 1e9
    what = report["shape"] or report["folder"]
    rows = [f"load: {what}, {report['dtype']}, {gb:.2f} GB in {report['files']} safetensors files, device {report.get('device')}; "
            f"warm: best of {report['repeat']}, cold page cache: {report['cold_cache']}"]
    rows.append(f"{'step':<34} {'warm s':>7} {'GB/s':>6} {'cold s':>7} {'peak RSS GB':>11} {'vs transformers':>15}")
    peer = report["steps"].get("transformers", {}).get("warm", {}).get("seconds")
    for step, runs in report["steps"].items():
        warm, cold = runs["warm"], runs.get("cold")
        rss = warm.get("peak_rss_above_baseline_bytes")
        ratio = f"{warm['seconds'] / peer:.2f}x" if peer and step != "transformers" else "-"
        rows.append(f"{_LOAD_NAMES[step]:<34} {warm['seconds']:>7.2f} {gb / warm['seconds']:>6.2f} "
                    f"{(format(cold['seconds'], '7.2f') if cold else '-'):>7} {(format(rss / 1e9, '11.2f') if rss is not None else '-'):>11} "
                    f"{ratio:>15}")
    if "transformers" in report:
        rows.append(report["transformers"])
    return "\n".join(rows)


def skip_names(text: str, valid: tuple[str, ...], what: str, other: str = "", runs: tuple[str, ...] = ()) -> set[str]:
    """The names of a --skip list ("a,b"), or a JaxllmError naming the unknown ones and listing
    `valid` (`other`: what the other mode takes, for a name that belongs there), or one saying that
    the list leaves out every one of `runs` (what measures something), so the run would measure nothing."""
    names = {n.strip() for n in text.split(",")} - {""}
    unknown = sorted(names - set(valid))
    if unknown:
        raise JaxllmError(f"--skip {','.join(unknown)}: not {what}: give some of {', '.join(valid)}{other}")
    if runs and set(runs) <= names:
        raise JaxllmError(f"--skip {text.strip()} leaves nothing to measure: keep at least one of {', '.join(runs)}")
    return names


def load_runs(mesh) -> tuple[str, ...]:
    """The --load steps that measure something (sharded only with --mesh)."""
    return tuple(s for s in LOAD_STEPS if mesh or s != "sharded")


def check_load_folder(folder: str) -> None:
    """A JaxllmError unless `folder` is a Hugging Face checkpoint folder --load-folder can time:
    config.json and safetensors files (not a GGUF file, not a converted folder)."""
    path = Path(folder)
    fix = "give a Hugging Face checkpoint folder (config.json and *.safetensors)"
    if not path.exists():
        raise JaxllmError(f"--load-folder {folder} does not exist: {fix}")
    if not path.is_dir():
        kind = "a GGUF file" if path.suffix.lower() == ".gguf" else "a file, not a folder"
        raise JaxllmError(f"--load-folder {folder} is {kind}: --load times safetensors checkpoints; {fix}")
    if converted.is_converted(path):  # its steps read safetensors, then convert them
        raise JaxllmError(f"--load-folder {folder} was written by python -m jaxllm.convert: give the Hugging Face "
                          "folder it came from (the convert and orbax steps time this format)")
    missing = [what for what, there in (("config.json", (path / "config.json").is_file()),
                                        ("*.safetensors files", any(path.glob("*.safetensors")))) if not there]
    if missing:
        raise JaxllmError(f"--load-folder {folder} has no {' and no '.join(missing)}: {fix}")


def load_main(args, shapes) -> int:
    skip = skip_names(args.skip, LOAD_SKIPS, "a --load step", runs=load_runs(args.mesh))
    if args.repeat < 1:
        raise JaxllmError(f"--repeat {args.repeat}: give a whole number >= 1 (warm runs of each load step)")
    if args.out:
        check_out(args.out)
    if args.load_folder is not None:
        check_load_folder(args.load_folder)
    targets = [(None, args.load_folder)] if args.load_folder else [(s, None) for s in shapes]
    reports = []
    for shape, folder in targets:
        report = load_section(shape, args.dtype, folder, args.repeat, skip, args.load_dir, args.mesh)
        report.update(run_settings(args, shapes if folder is None else []))
        reports.append(report)
        print(load_table(report), flush=True)
    if args.out:
        write_json(args.out, reports[0] if len(reports) == 1 else reports)
    return 0


if __name__ == "__main__":  # `python -m jaxllm.bench_load ARGS` is `python -m jaxllm.bench --load ARGS`
    from jaxllm.bench import main

    sys.exit(main(["--load", *sys.argv[1:]], prog="python -m jaxllm.bench_load"))
