"""Where the offline workload's first run goes (issue 13: first run >= 40% of the steady rate):
one process, a random model, the bench's offline engine and requests; jax's compile log gives the
seconds spent tracing, lowering and compiling each program. Prints the first and second runs'
times, the programs compiled (with the runner's prefill shapes) and the sums.

    python benchmarks/first_run_probe.py --shape qwen3-0.6b [--cache DIR]

`--cache DIR` uses that persistent compilation cache (run twice, in two processes, for the warm
figure)."""

from __future__ import annotations

import argparse
import logging
import re
import time

import jax

from jaxllm import bench, runtime
from jaxllm.random_model import random_model


class _Log(logging.Handler):
    """Collects jax's "Finished ... in X sec" compile-log lines: (kind, name, seconds)."""

    PATTERN = re.compile(r"Finished (tracing \+ transforming|jaxpr to MLIR module conversion|XLA compilation) "
                         r"(?:of )?(.*?) in ([0-9.e-]+) sec")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.rows = []

    def emit(self, record):
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.rows.append((match.group(1), match.group(2), float(match.group(3))))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--cache")
    args = p.parse_args(argv)
    runtime.set_gpu_flags()
    if args.cache:
        runtime.use_compile_cache(args.cache)
    log = _Log()
    for name in ("jax._src.interpreters.pxla", "jax._src.dispatch", "jax._src.compiler", "jax._src.pjit"):
        logging.getLogger(name).addHandler(log)
    jax.config.update("jax_log_compiles", True)
    sizes = bench._sizes(jax.default_backend() == "cpu")
    model = random_model(args.shape, dtype="bfloat16")
    engine = bench._engine(model, sizes, sizes["offline_slots"], 2 * sizes["offline_hi"], pages=None, chunk=64)
    requests = bench.offline_requests(model.config, sizes)
    t = time.perf_counter()
    _, first, n = bench._run(engine, requests)
    wall_first = time.perf_counter() - t
    rows = list(log.rows)
    engine.blocks.reset_prefix_cache()
    _, steady, n2 = bench._run(engine, requests)
    jax.config.update("jax_log_compiles", False)
    by_kind = {}
    for kind, name, secs in rows:
        by_kind.setdefault(kind, []).append(secs)
        if kind == "XLA compilation":
            print(f"  compile {secs:6.2f} s  {name[:90]}")
    print("prefill calls compiled (rows, length, keys, sampling):", sorted(engine.runner.compiled_calls()))
    for kind, secs in by_kind.items():
        print(f"{kind}: {len(secs)} programs, {sum(secs):.2f} s")
    print(f"first run {first:.2f} s ({wall_first:.2f} wall), {n / first:,.0f} tokens/s; second run {steady:.2f} s, "
          f"{n2 / steady:,.0f} tokens/s; first / steady = {steady / first:.1%}")


if __name__ == "__main__":
    main()
