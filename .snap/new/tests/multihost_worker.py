"""One process of the two-process test: `python multihost_worker.py PORT RANK CHECKPOINT OUT_JSON`.

Every process runs this same program (SPMD); the mesh tp=4 spans both processes' 2 CPU devices,
and process 0 writes the generated tokens."""

import json
import sys

import jax

port, rank, folder, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank, initialization_timeout=60)

import jaxllm  # noqa: E402

assert jax.device_count() == 4 and jax.local_device_count() == 2
model = jaxllm.load(folder, mesh="tp=4")
prompts = json.loads(sys.argv[5])
results = model.generate(prompts, jaxllm.SamplingParams(max_new_tokens=32, ignore_eos=True))
logits = model.logits([prompts[0]])
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump({"tokens": [r.token_ids for r in results], "logits_sum": float(logits.sum())}, f)
jax.distributed.shutdown()
