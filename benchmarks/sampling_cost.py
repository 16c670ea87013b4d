"""What sampled decoding costs beside greedy, and what OpenAI's penalties, logit bias and top_logprobs and vLLM's min_tokens add: batch-64
decode of a random-weight model (prompt 512, 256 new tokens, EOS ignored), tokens/s of the whole
run (prefill included), each setting on a warm engine (its second run; prefix caching off, so it prefills what the first did).

    python benchmarks/sampling_cost.py [--shape qwen3-0.6b] [--rows 64]

Run it from two checkouts in one device call to compare commits (PYTHONPATH=<checkout>).
"""

import argparse
import time

import numpy as np

import jaxllm
from jaxllm.engine import Engine, Request
from jaxllm.random_model import random_model

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=0.8, top_p=0.95, top_k=50),
    "sampled+penalties": dict(temperature=0.8, top_p=0.95, top_k=50, presence_penalty=0.5, frequency_penalty=0.5),
    "greedy+penalties": dict(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.5),
    "greedy+bias": dict(temperature=0.0, logit_bias={5: -100.0, 17: 2.0}),
    "sampled+top_logprobs": dict(temperature=0.8, top_p=0.95, top_k=50, top_logprobs=5),
    "greedy+min_tokens": dict(temperature=0.0, min_tokens=64),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=256)
    args = p.parse_args()
    model = random_model(args.shape, "bfloat16")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, args.prompt).tolist() for _ in range(args.rows)]
    engine = Engine(model, batch_size=args.rows, max_len=args.prompt + args.new, num_pages=args.rows * -(-(args.prompt + args.new) // 16), page_size=16, prefill_tokens=8192,
                    prefix_caching=False)  # a second run of the same prompts must not prefill only their last page
    fields = set(jaxllm.SamplingParams.__dataclass_fields__)
    for name, values in SETTINGS.items():
        if not set(values) <= fields:
            print(f"{args.shape} {name}: not in this checkout")
            continue
        params = jaxllm.SamplingParams(max_new_tokens=args.new, ignore_eos=True, seed=1, **values).resolved()
        rates = []
        for _ in range(2):
            start, n = time.perf_counter(), 0
            for ev in engine.run([Request(pr, params, i) for i, pr in enumerate(prompts)]):
                n += len(ev.tokens)
            rates.append(n / (time.perf_counter() - start))
        print(f"{args.shape} rows {args.rows} {name}: {rates[1]:,.1f} tokens/s (first run {rates[0]:,.1f})", flush=True)


if __name__ == "__main__":
    main()
