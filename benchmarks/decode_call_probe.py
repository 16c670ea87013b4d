"""Where a decode call's time goes, host and device: timers around the runner's pieces (the masks, the page
table, the inputs, the call, the wait for its outputs) per decode call, for plain rows in 16-step calls, plain
rows one step a call (chunk=1), and one structured-output row beside plain ones (which makes every call one step).

    python benchmarks/decode_call_probe.py TOKENIZER_JSON          # batch 64, prompt 512, 256 new
    PROBE=1,128,256 RUNS=1 python benchmarks/decode_call_probe.py TOKENIZER_JSON   # batch 1, plain only

Random weights of the Qwen3-0.6B shape over the tokenizer's vocabulary (llguidance needs a real tokenizer; e.g.
SmolLM2's, saved from its GGUF). Run it from two checkouts in one device call to compare commits.
"""

import os
import sys
import time
from collections import defaultdict

import jax
import numpy as np
from transformers import PreTrainedTokenizerFast

import jaxllm
from jaxllm import structured
from jaxllm.engine import Engine, Request
from jaxllm.random_model import SHAPES, random_model
from jaxllm.serving import runner as runner_mod

SECONDS, CALLS = defaultdict(float), defaultdict(int)


def timed(name, f):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = f(*args, **kwargs)
        SECONDS[name] += time.perf_counter() - start
        CALLS[name] += 1
        return out
    return wrapper


class _TimedNumpy:
    """numpy, with asarray timed (the runner's waits for device outputs, in code that reads them that way)."""

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, *args, **kwargs):
        return timed("asarray (wait)", np.asarray)(*args, **kwargs)


def main() -> None:
    runner_mod.structured.masks = timed("masks", structured.masks)
    runner_mod.np = _TimedNumpy()
    jax.device_get = timed("device_get (wait)", jax.device_get)  # the runner's waits for outputs (prefill calls too)
    Engine._decode = timed("engine._decode", Engine._decode)
    for name in ("decode", "table", "_decode_inputs"):
        setattr(runner_mod.Runner, name, timed(f"runner.{name}", getattr(runner_mod.Runner, name)))
    tok = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1])
    model = random_model({**SHAPES["qwen3-0.6b"], "vocab_size": len(tok)}, "bfloat16")
    model.tokenizer = tok
    rows, prompt, new = (int(x) for x in os.environ.get("PROBE", "64,512,256").split(","))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, len(tok), prompt).tolist() for _ in range(rows)]
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                               "values": {"type": "array", "items": {"type": "integer"}, "maxItems": 40}},
              "required": ["name", "values"], "additionalProperties": False}
    plain = jaxllm.SamplingParams(max_new_tokens=new, ignore_eos=True, seed=1, temperature=0.0).resolved()
    js = jaxllm.SamplingParams(max_new_tokens=new, seed=1, temperature=0.0, structured=jaxllm.Structured(json_schema=schema)).resolved()
    runs = ((16, "plain, 16 steps a call", [plain] * rows), (1, "plain, one step a call", [plain] * rows),
            (16, "one JSON row + plain", [js] + [plain] * (rows - 1)))
    for chunk, name, params in runs[: int(os.environ.get("RUNS", "3"))]:
        engine = Engine(model, batch_size=rows, max_len=prompt + new, num_pages=rows * -(-(prompt + new) // 16), page_size=16,
                        prefill_tokens=8192, prefix_caching=False, chunk=chunk)
        for _ in range(2):  # the second run: compiled
            SECONDS.clear()
            CALLS.clear()
            start, n = time.perf_counter(), 0
            for ev in engine.run([Request(p, s, i) for i, (p, s) in enumerate(zip(prompts, params))]):
                n += len(ev.tokens)
            wall = time.perf_counter() - start
        calls = max(CALLS["runner.decode"], 1)
        print(f"rows {rows} {name}: {n / wall:,.0f} tokens/s, {wall:.2f} s, {calls} decode calls; ms per call: "
              + ", ".join(f"{k} {1e3 * v / calls:.2f}" for k, v in SECONDS.items()), flush=True)


if __name__ == "__main__":
    main()
