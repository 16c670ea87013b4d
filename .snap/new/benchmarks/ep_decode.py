"""Decode tokens/s of a random-weight model on several meshes (bf16 unless --dtype), how far each
mesh's greedy tokens agree with the first mesh's (and, where they part, how close the two tokens'
logits were), and the fraction of the bandwidth roofline each reaches (issue 15: expert
parallelism; any mesh spec works).

Roofline: the bytes a decode step must read, once, with only the experts it uses counted (b tokens
routed uniformly to k of X experts touch X (1 - (1 - k / X)^b) of them per layer, the expectation;
the lookup table's rows and the cache at its mean length are counted too), over the mesh's devices
times one device's copy bandwidth (`bench.copy_bandwidth`): `roofline` = that time over the step's.
A mesh that replicates weights (ep keeps attention on every device) reads more than those bytes.

    python benchmarks/ep_decode.py --shape qwen3-30b-a3b --meshes "ep=1;ep=2" --batch 1,16 [--layers 12]

`--layers` keeps the named shape's layers but fewer of them (a quick look at a big model).
"""

import argparse
import json
import math
import sys
import time

import jax
import numpy as np

from jaxllm import bench
from jaxllm.engine import Request
from jaxllm.models import quant
from jaxllm.models.attention import kv_cache_bytes
from jaxllm.models.weights import flat_params
from jaxllm.random_model import SHAPES, random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-30b-a3b")
    p.add_argument("--meshes", default="ep=1;ep=2", help="';'-separated mesh specs, each over the first devices it needs")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", help="float32: greedy tokens should agree exactly across meshes")
    args = p.parse_args(argv)
    if args.dtype == "float32":  # GPUs multiply float32 in TF32 by default: near-ties would flip
        jax.config.update("jax_default_matmul_precision", "highest")
    raw = dict(SHAPES[args.shape])
    if args.layers:
        raw["num_hidden_layers"] = args.layers
    sizes = dict(bench._sizes(False), b1_prompt=args.prompt)
    rng = np.random.default_rng(0)
    prompts = {b: [rng.integers(0, raw["vocab_size"], args.prompt).tolist() for _ in range(b)] for b in map(int, args.batch.split(","))}
    first = {}
    bandwidth = bench.copy_bandwidth()
    print(json.dumps({"copy_bandwidth_TB_s": round(bandwidth / 1e12, 3), "devices": jax.device_count()}), flush=True)
    for spec in args.meshes.split(";"):
        n = math.prod(int(item.split("=")[1]) for item in spec.split(","))
        model = random_model(raw, dtype=args.dtype, mesh=make_mesh(spec, devices=jax.devices()[:n]))
        out = {"shape": args.shape, "layers": raw["num_hidden_layers"], "mesh": spec}
        for b, batch in prompts.items():
            e = bench._engine(model, sizes, b, args.prompt + args.new, chunk=64)
            params = SamplingParams(max_new_tokens=args.new, ignore_eos=True).resolved()
            reqs = lambda: [Request(list(t), params, i) for i, t in enumerate(batch)]  # noqa: E731
            bench._run(e, reqs())  # compile
            tokens, start, n_tok = {}, None, 0
            t0 = time.perf_counter()
            for ev in e.run(reqs()):
                start = start or time.perf_counter()
                tokens.setdefault(ev.index, []).extend(ev.tokens)
                n_tok += len(ev.tokens)
            total = time.perf_counter() - t0
            rate = (n_tok - b) / (total - (start - t0))
            out[f"b{b}_tokens_per_s"] = round(rate, 1)
            need = step_bytes(model, b, args.prompt + args.new // 2)
            out[f"b{b}_step_GB"] = round(need / 1e9, 3)
            out[f"b{b}_roofline"] = round(need / (n * bandwidth) / (b / rate), 3)
            seqs = [tokens[i] for i in range(b)]
            if b not in first:
                first[b] = seqs
            else:
                same = [sum(x == y for x, y in zip(s, f)) / len(f) for s, f in zip(seqs, first[b])]
                out[f"b{b}_greedy_agreement"] = round(float(np.mean(same)), 3)
                gaps = divergence_gaps(model, batch, seqs, first[b])
                if gaps:
                    out[f"b{b}_diverged"] = len(gaps)
                    out[f"b{b}_largest_gap_at_divergence"] = max(gaps)
            del e
        print(json.dumps(out), flush=True)
        del model
    return 0


def divergence_gaps(model, prompts, seqs, refs) -> list[float]:
    """Where a sequence first leaves the first mesh's, how far apart this mesh's logits put the two
    tokens, over the logits' standard deviation: near zero means a near-tie that rounding decided."""
    cut = {i: next(j for j, (x, y) in enumerate(zip(s, r)) if x != y) for i, (s, r) in enumerate(zip(seqs, refs)) if s != r}
    gaps = []
    for i, j in cut.items():
        logits = np.asarray(model.logits([list(prompts[i]) + seqs[i][:j]]))[0, -1].astype(np.float64)
        gaps.append(float(abs(logits[seqs[i][j]] - logits[refs[i][j]]) / logits.std()))
    return [round(g, 6) for g in sorted(gaps)]


def step_bytes(model, batch: int, context: int) -> float:
    """Bytes one decode step of `batch` tokens must read (module docstring)."""
    cfg = model.config
    x, k = cfg.num_experts or 0, cfg.experts_per_token or 0
    used = x * (1 - (1 - k / x) ** batch) if x else 0
    total = 0.0
    for path, leaf in flat_params(model.params).items():
        size = quant.bytes_of(leaf)  # int4: half a byte
        if "embed_tokens" in path:
            total += batch * size / leaf.shape[0]
        elif x and "mlp" in path and leaf.ndim == 3 and leaf.shape[0] == x:
            total += size / x * used
        else:
            total += size
    return total + kv_cache_bytes(cfg, batch * context, model.dtype, model.kv_dtype)


if __name__ == "__main__":
    sys.exit(main())
