"""Microseconds per routed-expert block (gate, up, down of the chosen experts, weighted sum) for
the dispatch forms a decode step could use, on one device, bf16, random weights and routing:

- `ragged`: assignments sorted by expert, three `jax.lax.ragged_dot`s;
- `gather`: each assignment's expert matrices taken from the stacks (`jnp.take`), then batched
  matrix-vector products: reads k experts per token, wasteful once tokens share experts;

Both are `jaxllm.models.experts.MoE._experts`'s forms (`expert_form` picks one). A third form
measured on 2026-11-28 (every expert on every token, hidden units weighted by the routing) lost to
ragged_dot at every size on an H200 (Qwen3-30B-A3B 852-1,260 us, Mixtral 1,873-2,811 us) and
was dropped.

Each timed call runs 8 distinct layers' stacks, so nothing stays in L2. The roofline column is the
bytes of the experts the tokens touch over the copy bandwidth (`bench.copy_bandwidth`).

    python benchmarks/moe_probe.py [--shape qwen3-30b-a3b --shape mixtral-8x7b] [--tokens 1,8,64]
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import bench
from jaxllm.models.experts import MoE
from jaxllm.random_model import SHAPES

LAYERS = 8


class _Block:
    """What `MoE._experts` reads of its module: k, the activation and its own methods."""

    _weight = staticmethod(MoE._weight)
    _experts, _gathered = MoE._experts, MoE._gathered

    def __init__(self, k):
        self.k, self.act = k, jax.nn.silu


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", action="append")
    p.add_argument("--tokens", default="1,8,64")
    args = p.parse_args(argv)
    bandwidth = bench.copy_bandwidth()
    print(json.dumps({"copy_bandwidth_TB_s": round(bandwidth / 1e12, 3), "device": jax.devices()[0].device_kind}), flush=True)
    for shape in args.shape or ["qwen3-30b-a3b", "mixtral-8x7b"]:
        raw = SHAPES[shape]
        e = raw["hidden_size"]
        f = raw.get("moe_intermediate_size") or raw["intermediate_size"]
        x_n = raw.get("num_experts") or raw["num_local_experts"]
        k = raw["num_experts_per_tok"]
        key = jax.random.PRNGKey(0)
        mk = jax.jit(lambda key, shape: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(jnp.bfloat16), static_argnums=1)
        layers = [tuple(mk(jax.random.fold_in(key, 3 * i + j), s) for j, s in enumerate(((x_n, e, f), (x_n, e, f), (x_n, f, e))))
                  for i in range(LAYERS)]
        expert_bytes = 3 * e * f * 2
        for n in map(int, args.tokens.split(",")):
            x = mk(jax.random.fold_in(key, 999), (n, e))
            logits = jax.random.normal(jax.random.fold_in(key, 1000 + n), (n, x_n))
            weights, experts = jax.lax.top_k(jax.nn.softmax(logits), k)
            touched = len(np.unique(np.asarray(experts)))
            out = {"shape": shape, "tokens": n, "experts_touched": touched,
                   "roofline_us": round(touched * expert_bytes / bandwidth * 1e6, 1)}
            ref = None
            block = _Block(k)
            for name in ("ragged", "gather"):
                if name == "gather" and n * k > 4 * x_n:  # [N k, E, F] copies of 8 layers: out of memory
                    continue
                run = jax.jit(lambda x, w, ex, ls, form=name: [
                    block._experts(x, w, ex, [(a, None, None) for a in s], None, form=form) for s in ls])
                ys = run(x, weights, experts, layers)
                jax.block_until_ready(ys)
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    jax.block_until_ready(run(x, weights, experts, layers))
                    times.append(time.perf_counter() - t)
                out[f"{name}_us"] = round(sorted(times)[10] / LAYERS * 1e6, 1)
                y = np.asarray(ys[0], np.float32)
                ref = y if ref is None else ref
                out[f"{name}_rel_diff"] = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
            print(json.dumps(out), flush=True)
        del layers
    return 0


if __name__ == "__main__":
    sys.exit(main())
