"""A GPU check of gpt-oss's attention sinks under the platform's kernels: a tiny seeded gpt-oss
(tests/reference.py) against transformers' float32 logits, and the paged engine's greedy tokens
with attention "cudnn" (which sends sink layers to the XLA / blocked forms: no cuDNN call takes a
sink) against "xla", float32 and bfloat16, chunked prefill, prefix cache and cascade decode on.

    PYTHONPATH=$PWD python benchmarks/gpt_oss_check.py      (needs torch and transformers)
"""

import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, "tests")
import reference  # noqa: E402

import jaxllm  # noqa: E402
from jaxllm import runtime  # noqa: E402
from jaxllm.engine import Engine  # noqa: E402

GREEDY = jaxllm.SamplingParams(max_new_tokens=24, ignore_eos=True)


def main():
    print(jax.devices(), "platform attention:", runtime.attention_impl())
    folder = tempfile.mkdtemp()
    ref = reference.build("GptOssForCausalLM", folder, seed=2)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 128, (2, 40))
    want = reference.torch_logits(ref, tokens)
    long, other = rng.integers(0, 128, 41).tolist(), rng.integers(0, 128, 23).tolist()
    prompts = [long, long[:20], other, other, long[:9] + other[:30]]
    for dtype in ("float32", "bfloat16"):
        model = jaxllm.load(folder, dtype=dtype)
        print(f"{dtype}: logits max rel diff vs transformers float32 {reference.max_rel_diff(model.logits(tokens), want):.2e}")
        outs = {}
        for attention in ("cudnn", "xla"):
            engine = Engine(model, batch_size=3, max_len=128, page_size=4, prefill_tokens=16, cascade=True, attention=attention)
            outs[attention] = [o.token_ids for o in model.generate(prompts, GREEDY, engine=engine)]
            print(f"  engine {attention}: cascaded {engine.scheduler.stats.cascaded}, chunked {engine.scheduler.stats.chunked}")
        same = sum(a == b for a, b in zip(outs["cudnn"], outs["xla"]))
        print(f"  cudnn vs xla engine: {same}/{len(prompts)} prompts give the same greedy tokens")
        alone = [model.generate(p, GREEDY).token_ids for p in prompts]
        print(f"  engine vs each prompt alone: {sum(a == b for a, b in zip(outs['cudnn'], alone))}/{len(prompts)} the same")


if __name__ == "__main__":
    main()
