"""Load times: converting a Hugging Face checkpoint on every load vs restoring a converted one.

    python benchmarks/convert_timing.py --shape qwen3-0.6b --dtype bfloat16 [--mesh tp=4]

Writes a random-weight HF checkpoint of the named shape (jaxllm.random_model.SHAPES) as safetensors,
then times direct loads of the HF folder, `python -m jaxllm.convert`, and loads of the converted
folder. A load is timed in its own process after the imports, best of 3 (the files are in the page
cache then: these are warm-cache figures), or with --cold once after dropping the page cache. `--gguf FILE` times a GGUF file instead of a random model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import sys, time, jax
import jaxllm, orbax.checkpoint
times = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter()
    m = jaxllm.load(sys.argv[1], dtype=sys.argv[2], mesh=sys.argv[3] or None, tokenizer=False)
    jax.block_until_ready(m.params)
    times.append(time.perf_counter() - t)
    del m
print(min(times))
"""


def write_hf(folder: Path, shape: str, dtype: str) -> int:
    from jaxllm import safetensors_io
    from jaxllm.models import weights
    from jaxllm.random_model import SHAPES, random_model

    model = random_model(shape, dtype)
    from jaxllm.models import registry

    raw = dict(SHAPES[shape], torch_dtype=dtype)
    arch = registry.architecture_of(raw)
    specs = arch.weight_map(model.config)
    flat = weights.flat_params(model.params)
    layout = {n: (s, flat[next(iter(flat))].dtype) for n, s in weights.hf_layout(specs, {p: v.shape for p, v in flat.items()}).items()}
    folder.mkdir(parents=True)
    safetensors_io.write_safetensors(folder, layout, weights.export_tensors(specs, flat))
    (folder / "config.json").write_text(json.dumps(raw))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def drop_page_cache() -> None:
    """Cold-cache timing (Linux, root): write back and drop the page cache."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed_load(path: Path, dtype: str, mesh: str, cold: bool = False) -> float:
    if cold:
        drop_page_cache()
    args = [str(path), dtype, mesh or "", "1" if cold else "3"]
    out = subprocess.run([sys.executable, "-c", LOAD, *args], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--mesh", default="")
    p.add_argument("--gguf", default=None, help="time this .gguf file instead of a random model")
    p.add_argument("--cold", action="store_true", help="drop the page cache before each load (root); one load each")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        src = Path(args.gguf) if args.gguf else tmp / "hf"
        if args.gguf:
            size, args.shape = src.stat().st_size, src.name
        else:
            size = write_hf(src, args.shape, args.dtype)
        direct = timed_load(src, args.dtype, args.mesh, args.cold)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxllm.convert", str(src), str(tmp / "orbax"), "--dtype", args.dtype],
                       check=True, capture_output=True)
        convert_s = time.perf_counter() - t
        restored = timed_load(tmp / "orbax", args.dtype, args.mesh, args.cold)
        direct_again = timed_load(src, args.dtype, args.mesh, args.cold)
    rows = [("checkpoint", f"{args.shape}, {args.dtype}, {size / 1e9:.2f} GB on disk, mesh {args.mesh or 'one device'}, "
                           f"{'cold' if args.cold else 'warm'} page cache"),
            ("load HF folder (convert on load)", f"{direct:.2f} s (again: {direct_again:.2f} s)"),
            ("python -m jaxllm.convert (whole CLI)", f"{convert_s:.2f} s"),
            ("load converted folder (orbax restore)", f"{restored:.2f} s"),
            ("speed-up of restore over converting", f"{min(direct, direct_again) / restored:.2f}x")]
    for k, v in rows:
        print(f"{k:<40} {v}")


if __name__ == "__main__":
    main()
