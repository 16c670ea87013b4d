"""Randomized workloads through the paged engine. Two kinds:

- host only: the engine's calls recorded instead of run (no compile), many examples: every call
  a workload makes has a shape that Engine.precompile compiled for it;
- the tiny Llama through one engine shape (compiled once): random prompt lengths around the page
  size and the prefill budget up to max_len, shared prefixes, identical prompts, pools small
  enough to preempt, requests added between steps and aborted anywhere, seeded sampling, EOS
  stops. Every request's tokens and float32 log-probabilities must be those of its prompt served
  alone, the page pool's bookkeeping must hold after every step, nothing may stay allocated at the
  end, and nothing compiles after the first examples.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jaxllm
from jaxllm.engine import Engine, Request

HOST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Recorder:
    """Stands in for the runner's jitted steps: records each prefill call's (rows, length, keys,
    sampling), the shape of its program, and finishes every row at its first token; `compile`
    records what precompile asked for."""

    def __init__(self, runner):
        self.calls, self.compiled = set(), set()
        self.runner = runner
        runner._prefill = self.prefill
        runner.compile = self.compile

    def prefill(self, rows, length):
        def call(keys, sampling, params, state, slots, *rest):
            self.calls.add((rows, length, keys, sampling))
            m = len(slots)
            return state, np.ones(m, np.int32), np.zeros(m, np.float32), np.ones(m, bool)

        return call

    def compile(self, state, prefill_shapes, decode_keys, sampling=False):
        self.compiled |= {(n, c, s, sampling) for n, c, s in prefill_shapes}


class Tiny:
    """The tiny Llama, shown in one word in hypothesis' reports."""

    def __init__(self, model):
        self.model = model

    def __repr__(self):
        return "tiny Llama"


@pytest.fixture(scope="module")
def tiny(llama):
    return Tiny(llama)


@HOST
@given(budget=st.sampled_from([16, 48, 64, 256, 512]), batch=st.integers(1, 24),
       lengths=st.lists(st.integers(1, 120), min_size=1, max_size=24), sampled=st.lists(st.booleans(), min_size=24, max_size=24))
@example(budget=256, batch=16, lengths=[20] + [10] * 9, sampled=[False] * 24)  # a 4 x 64 call, then 6 chunks: 16 x 16
def test_precompile_compiles_every_prefill_call_a_workload_makes(tiny, budget, batch, lengths, sampled):
    """Prompts of any lengths, greedy and sampled mixed: each prefill call (its rows, length,
    keys and sampling) is one precompile compiled. It missed the greedy programs of a mix (a
    greedy prompt's call compiled at serve time) and calls of more rows at a shorter length than
    the longest chunk's (ten short prompts behind one longer, budget 256: a 16 x 16 call)."""
    engine = Engine(tiny.model, batch_size=batch, max_len=128, num_pages=batch * 32, page_size=4, prefill_tokens=budget, chunk=4)
    recorder = Recorder(engine.runner)
    engine.state = ()  # no device state: nothing runs
    rng = np.random.default_rng(len(lengths))
    reqs = [Request(rng.integers(0, 128, n).tolist(), jaxllm.SamplingParams(
        max_new_tokens=1, ignore_eos=True, temperature=1.0 if s else 0.0, seed=i).resolved(), i)
        for i, (n, s) in enumerate(zip(lengths, sampled))]
    engine.precompile(reqs)
    for _ in engine.run(reqs):
        pass
    assert recorder.calls <= recorder.compiled, sorted(recorder.calls - recorder.compiled)
