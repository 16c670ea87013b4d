"""Load a checkpoint and report memory: `python memory_worker.py CHECKPOINT MESH_OR_NONE` prints JSON
{baseline_mb, peak_mb, placed_mb}. Peak is VmHWM, the high-water mark of this address space
(ru_maxrss would not do: it survives exec, so it would report the parent's size at fork)."""

import json
import os
import sys

import jax

mesh = None if sys.argv[2] == "none" else sys.argv[2]
if mesh:
    jax.config.update("jax_num_cpu_devices", 4)
import jax.numpy as jnp  # noqa: E402

import jaxllm  # noqa: E402
import jaxllm.models  # noqa: E402,F401  (import cost before the baseline)

jnp.zeros(1).block_until_ready()  # the backend is up before the baseline
page = os.sysconf("SC_PAGE_SIZE")
baseline = int(open("/proc/self/statm").read().split()[1]) * page / 2**20
model = jaxllm.load(sys.argv[1], mesh=mesh, tokenizer=False)
jax.block_until_ready(model.params)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
peak = int(status["VmHWM"].split()[0]) / 1024
placed = sum(x.nbytes for x in jax.tree.leaves(model.params)) / 2**20
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "placed_mb": placed}))
