"""What the gated-DeltaNet layers' token-by-token prefill costs on a GPU: time to first token and
batch-1 decode of a Qwen3.5-shaped model (transformers' Qwen3_5TextConfig defaults: hidden 4096, 32
layers, 24 of them linear attention; about 9B parameters) beside the Llama-3-8B shape, random
weights in bfloat16, in one process.

    python benchmarks/hybrid_prefill_probe.py [--prompts 512,2048,8192] [--new 128]

With a cache the engine runs the delta rule token by token: on one GPU as one Pallas kernel per layer
call (models/delta_rule_gpu.py), with --scan as a lax.scan (session 25), as many sequential steps
as the prompt has tokens.
"""

import argparse
import gc
import time

import numpy as np

import jaxllm
from jaxllm.engine import Engine
from jaxllm.models import delta_rule_gpu
from jaxllm.random_model import random_model

QWEN3_5 = dict(architectures=["Qwen3_5ForCausalLM"], model_type="qwen3_5_text")  # the config class's defaults
# BambaConfig's defaults (hidden 4096, 32 layers, Mamba2 heads of 64 x 256 state) with Bamba-9B's attention layers
BAMBA = dict(architectures=["BambaForCausalLM"], model_type="bamba", attn_layer_indices=[9, 18, 27])


def measure(name, raw, lengths, new):
    model = random_model(raw)
    max_len = max(lengths) + new + 16
    engine = Engine(model, batch_size=1, max_len=max_len, num_pages=max_len // 16 + 8, page_size=16, prefill_tokens=2048, prefix_caching=False,
                    chunk=16)
    rng = np.random.default_rng(0)
    for n in lengths:
        prompt = rng.integers(0, 32000, n).tolist()
        one = jaxllm.SamplingParams(max_new_tokens=1, ignore_eos=True)
        many = jaxllm.SamplingParams(max_new_tokens=new + 1, ignore_eos=True)
        model.generate(prompt, one, engine=engine)  # compile this length's programs
        model.generate(prompt, many, engine=engine)
        t = time.perf_counter()
        model.generate(prompt, one, engine=engine)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(prompt, many, engine=engine)
        total = time.perf_counter() - t
        print(f"{name:10s} prompt {n:6d}: first token {ttft * 1e3:8.1f} ms, decode {new / max(total - ttft, 1e-9):7.1f} tokens/s",
              flush=True)
    del engine, model
    gc.collect()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", default="512,2048,8192")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--scan", action="store_true", help="the delta rule as a lax.scan (before session 26), not the Pallas kernel")
    p.add_argument("--only", default="llama3-8b,qwen3.5-9b,bamba-9b")
    a = p.parse_args()
    delta_rule_gpu.ENABLED = not a.scan
    lengths = [int(x) for x in a.prompts.split(",")]
    shapes = {"llama3-8b": "llama3-8b", "qwen3.5-9b": QWEN3_5, "bamba-9b": BAMBA}
    for name in a.only.split(","):
        measure(name + (" (scan)" if a.scan and name != "llama3-8b" else ""), shapes[name], lengths, a.new)


if __name__ == "__main__":
    main()
