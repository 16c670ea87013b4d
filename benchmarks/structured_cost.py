"""What structured outputs (constrained decoding) cost: batch decode of a random-weight model with a
real tokenizer (llguidance needs one), tokens/s of the whole run (prefill included), each setting on a
warm engine (its second run; prefix caching off). Settings: every row plain; every row constrained to
a JSON schema; one constrained row beside plain ones (the whole batch then decodes one step per call
while it runs: docs/architecture.md).

    python benchmarks/structured_cost.py --tokenizer DIR_OR_tokenizer.json [--shape qwen3-0.6b] [--rows 64]

The tokenizer's vocabulary replaces the shape's (e.g. SmolLM2's 49,152, saved from the GGUF with
`jaxllm.load(gguf).tokenizer.save_pretrained(dir)`).
"""

import argparse
import time

import numpy as np
from transformers import PreTrainedTokenizerFast

import jaxllm
from jaxllm.engine import Engine, Request
from jaxllm.random_model import SHAPES, random_model

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "values": {"type": "array", "items": {"type": "integer"}, "maxItems": 40}},
          "required": ["name", "values"], "additionalProperties": False}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=256)
    args = p.parse_args()
    path = args.tokenizer if args.tokenizer.endswith(".json") else args.tokenizer + "/tokenizer.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=path)
    model = random_model({**SHAPES[args.shape], "vocab_size": len(tok)}, "bfloat16")
    model.tokenizer = tok
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, len(tok), args.prompt).tolist() for _ in range(args.rows)]
    pages = args.rows * -(-(args.prompt + args.new) // 16)
    engine = Engine(model, batch_size=args.rows, max_len=args.prompt + args.new, num_pages=pages, page_size=16,
                    prefill_tokens=8192, prefix_caching=False)
    plain = jaxllm.SamplingParams(max_new_tokens=args.new, ignore_eos=True, seed=1, temperature=0.0).resolved()
    json_ = jaxllm.SamplingParams(max_new_tokens=args.new, seed=1, temperature=0.0, structured=jaxllm.Structured(json_schema=SCHEMA)).resolved()
    settings = {"plain": [plain] * args.rows, "all json": [json_] * args.rows, "one json + plain": [json_] + [plain] * (args.rows - 1)}
    for name, params in settings.items():
        rates = []
        for _ in range(2):
            start, n, n_plain, plain_done = time.perf_counter(), 0, 0, 0.0
            for ev in engine.run([Request(pr, sp, i) for i, (pr, sp) in enumerate(zip(prompts, params))]):
                n += len(ev.tokens)
                if params[ev.index].structured is None:
                    n_plain += len(ev.tokens)
                    plain_done = time.perf_counter() - start
            wall = time.perf_counter() - start
            rates.append((n / wall, n, wall, n_plain / plain_done if plain_done else 0.0))
        rate, n, wall, prate = rates[1]
        print(f"{args.shape} rows {args.rows} {name}: {rate:,.1f} tokens/s ({n} tokens in {wall:.2f} s; plain rows "
              f"{prate:,.1f} tokens/s to their end; first run {rates[0][0]:,.1f})", flush=True)


if __name__ == "__main__":
    main()
