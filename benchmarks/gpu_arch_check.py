"""Every registered architecture's tiny model on a GPU (the CPU test suite's models, seeded random
weights saved by transformers): float32 logits against transformers' (run on the CPU), and the
engine's greedy tokens in bfloat16 with the GPU's attention kernels against the XLA ones.

    JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONPATH=$PWD:$PWD/tests python benchmarks/gpu_arch_check.py [--only A,B]

Prints one line per architecture; the float32 line holds to the parity tests' 1e-4.

Where the GPU machine's transformers is older than the one the tests pin (it may lack a family, or
read a config otherwise), build the models and their reference logits on the CPU machine and carry
them: `--save DIR` there (writes DIR/<name>/ with the checkpoint and reference.npz), `--saved DIR`
on the GPU (compares against those logits; transformers is not imported).
"""

import argparse
import os
import tempfile

import numpy as np
import reference  # tests/reference.py: transformers' model with seeded random weights

import jaxllm
from jaxllm import runtime
from jaxllm.engine import Engine, Request
from jaxllm.models import registry

TOL = 1e-4


def engine_tokens(model, prompts, impl):
    engine = Engine(model, batch_size=4, max_len=256, num_pages=64, page_size=16, prefill_tokens=64, chunk=8, attention=impl)
    params = jaxllm.SamplingParams(max_new_tokens=16, ignore_eos=True, logprobs=True).resolved()
    got = {}
    for ev in engine.run([Request(p, params, i) for i, p in enumerate(prompts)]):
        tokens, logprobs = got.setdefault(ev.index, ([], []))
        tokens += ev.tokens
        logprobs += ev.logprobs
    return [got[i] for i in range(len(prompts))]


def save(name: str, folder: str) -> None:
    """The tiny checkpoint of `name` in `folder`, with transformers' float32 logits of fixed tokens."""
    ref = reference.build(name, folder)
    tokens = np.random.default_rng(0).integers(0, 128, (2, 20))
    np.savez(os.path.join(folder, "reference.npz"), tokens=tokens, logits=reference.torch_logits(ref, tokens))


def check(name: str, folder: str, saved: bool = False) -> bool:
    if not saved:
        save(name, folder)
    want = np.load(os.path.join(folder, "reference.npz"))
    tokens = want["tokens"]
    err = reference.max_rel_diff(jaxllm.load(folder).logits(tokens), want["logits"])
    model = jaxllm.load(folder, dtype="bfloat16")
    rng = np.random.default_rng(1)
    room = model.config.context_length - 16  # tiny configs of learned positions hold 64
    prompts = [rng.integers(0, 128, min(n, room)).tolist() for n in (5, 30, 70, 100)]
    xla, gpu = engine_tokens(model, prompts, "xla"), engine_tokens(model, prompts, runtime.attention_impl())
    agree = [np.mean(np.asarray(a[0]) == np.asarray(b[0])) for a, b in zip(xla, gpu)]
    first = [a[0][0] == b[0][0] for a, b in zip(xla, gpu)]
    lp = max(abs(a[1][0] - b[1][0]) for a, b in zip(xla, gpu))
    ok = err <= TOL
    print(f"{name:34s} float32 rel diff {err:.1e} {'ok' if ok else 'FAIL'}; bf16 {runtime.attention_impl()} vs xla: "
          f"token agreement {['%.2f' % a for a in agree]}, first tokens equal {all(first)}, first logprob diff {lp:.3f}", flush=True)
    return ok


def _checked(name: str, saved: str | None) -> bool:
    """check(), a failure printed in one line and counted, so the other architectures still run."""
    try:
        return check(name, os.path.join(saved, name), saved=True) if saved else check(name, tempfile.mkdtemp())
    except Exception as e:  # noqa: BLE001 - a report line per architecture
        print(f"{name:34s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="", help="comma-separated architecture names (default: every registered one)")
    p.add_argument("--save", help="build the models and reference logits into this folder, and stop (a CPU machine)")
    p.add_argument("--saved", help="check the models that --save wrote into this folder")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or (sorted(os.listdir(args.saved)) if args.saved else registry.names())
    if args.save:
        for n in names:
            save(n, os.path.join(args.save, n))
        return
    failed = [n for n in names if not _checked(n, args.saved)]
    print(f"{len(names) - len(failed)}/{len(names)} within {TOL} in float32" + (f"; failed: {failed}" if failed else ""))


if __name__ == "__main__":
    main()
