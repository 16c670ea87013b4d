"""GPU smoke check of the paged engine: the cuDNN kernels (paged decode, split flash prefill)
against the XLA ones on the same random model, and one long prompt's time to first token.

    PYTHONPATH=$PWD python benchmarks/serving_check.py [--shape qwen3-0.6b]
"""

import argparse
import time

import numpy as np

from jaxllm import runtime

runtime.set_gpu_flags()

import jax  # noqa: E402

from jaxllm.engine import Engine, Request  # noqa: E402
from jaxllm.random_model import random_model  # noqa: E402
from jaxllm.sampling import SamplingParams  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--long", type=int, default=32768)
    p.add_argument("--pages", type=int, default=4 * 256 - 1,
                   help="the pool's pages (fewer than 1,023: cuDNN's paged decode in blocks of rows)")
    args = p.parse_args()
    model = random_model(args.shape, dtype="bfloat16")
    cfg = model.config
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 40, 300, 1500, 3000, 17, 900, 64)]
    params = SamplingParams(max_new_tokens=32, ignore_eos=True, logprobs=True).resolved()
    outs = {}
    for impl in ("xla", runtime.attention_impl()):
        engine = Engine(model, batch_size=4, max_len=4096, num_pages=args.pages, page_size=16, prefill_tokens=1024,
                        chunk=16, attention=impl)
        t = time.perf_counter()
        got = {}
        for ev in engine.run([Request(pr, params, i) for i, pr in enumerate(prompts)]):
            got.setdefault(ev.index, []).extend(ev.tokens)
        outs[impl] = got
        print(f"{impl}: {time.perf_counter() - t:.1f}s, compiles {engine.counters}, hits {engine.blocks.stats}", flush=True)
        del engine
    other = runtime.attention_impl()
    agree = [np.mean(np.asarray(outs["xla"][i]) == np.asarray(outs[other][i])) for i in range(len(prompts))]
    first = [outs["xla"][i][0] == outs[other][i][0] for i in range(len(prompts))]
    print("token agreement per prompt (bf16, cudnn vs xla):", [f"{a:.2f}" for a in agree], "first tokens equal:", first)
    n = args.long
    engine = Engine(model, batch_size=1, max_len=n + 64, num_pages=-(-(n + 64) // 16), page_size=16, prefill_tokens=8192,
                    chunk=32)
    req = [Request(rng.integers(0, cfg.vocab_size, n).tolist(), SamplingParams(max_new_tokens=32, ignore_eos=True).resolved())]
    for run in ("compile", "warm"):
        t = time.perf_counter()
        first = None
        for ev in engine.run(req):
            first = first or time.perf_counter() - t
        print(f"long {n} {run}: ttft {first:.3f}s, total {time.perf_counter() - t:.2f}s, "
              f"peak {(jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use', 0) / 1e9:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
