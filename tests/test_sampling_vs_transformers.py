"""jaxllm's sampling against transformers' generation: the logits processors that
GenerationMixin._get_logits_processor builds from a GenerationConfig (its order and its handling of
top_k=0, top_p=1.0, min_p=None, temperature=1.0), applied to the same logits as jaxllm's `sample`.

What `sample` hands to its draw is captured (jax.debug.callback around jax.random.categorical), so
the real function is compared, not a copy of it. The ties and special values where the two once
differed have their own tests at the end; the properties skip inputs where float32 rounding or the
order among tied tokens decides (`_known_difference`)."""

import dataclasses
import itertools
import math
import warnings
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaxllm.errors import GenerationError
from jaxllm.sampling import PENALIZED, RowParams, SamplingParams, sample

SETTINGS = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
DENSITY = 1e-6  # probability mass jaxllm may mask that transformers keeps (top_p=1.0's float32 tail)
# Logits are compared to 2 ulp: XLA's division on CPU is not correctly rounded (1 ulp from numpy's and torch's).

# ---------------------------------------------------------------------------------------- helpers


_MODEL = []


def _hf_model():
    if not _MODEL:
        cfg = transformers.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                       num_attention_heads=1, num_key_value_heads=1)
        _MODEL.append(transformers.LlamaForCausalLM(cfg))
    return _MODEL[0]


def hf_generation_config(gen: dict, **kwargs) -> transformers.GenerationConfig:
    """What generate() runs with: kwargs over the checkpoint's generation_config over transformers' defaults."""
    model = _hf_model()
    model.generation_config = transformers.GenerationConfig(**gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model._prepare_generation_config(None, **kwargs)[0]


def hf_process(logits, history, gen: dict, **kwargs) -> np.ndarray:
    """transformers' processed scores for one row: logits [V], history (prompt + generated ids)."""
    cfg = hf_generation_config(gen, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        procs = _hf_model()._get_logits_processor(cfg, input_ids_seq_length=max(len(history), 1), device="cpu")
    ids = torch.tensor([list(history)], dtype=torch.long).reshape(1, -1)
    return procs(ids, torch.tensor(np.asarray(logits, np.float32))[None]).numpy()[0]


_CAPTURED, _CATEGORICAL = [], jax.random.categorical


def _spy(key, row):
    jax.debug.callback(lambda r: _CAPTURED.append(np.asarray(r)), row, ordered=True)
    return _CATEGORICAL(key, row)


_sample = jax.jit(sample, static_argnames="sampling")  # as the engine runs it; traced with _spy in place


def jx_process(logits, history, params: SamplingParams, generated=None):
    """jaxllm's `sample` on one row: (greedy token, the logits its random draw samples from). `generated`: the ids of
    `history` the row generated, which OpenAI's penalties count (a step of kind PENALIZED); None: no such step."""
    seen = np.zeros((1, len(logits)), bool)
    seen[0, list(history)] = True
    rp = jax.tree.map(jnp.asarray, RowParams.of([params]))
    args = (jnp.asarray(logits, jnp.float32)[None], jnp.asarray(seen), rp, jnp.zeros(1, jnp.int32))
    _CAPTURED.clear()
    with mock.patch.object(jax.random, "categorical", _spy):
        if generated is None:
            greedy = int(_sample(*args, sampling=False)[0][0])
            token = int(_sample(*args, sampling=True)[0][0])
        else:
            counts = jnp.asarray(np.bincount(np.asarray(generated, int), minlength=len(logits))[None], jnp.int32)
            greedy = token = int(_sample(*args, sampling=PENALIZED, counts=counts)[0][0])
        jax.effects_barrier()
    assert len(_CAPTURED) == 1
    if params.temperature == 0:
        assert token == greedy
    return greedy, _CAPTURED[0]


def probs(scores):
    x = np.asarray(scores, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _penalised(x, history, penalty):
    x = np.asarray(x, np.float64).copy()
    idx = sorted(set(history))
    x[idx] = np.where(x[idx] < 0, x[idx] * penalty, x[idx] / penalty)
    return x


def _known_difference(x, history, kw) -> bool:
    """Inputs where the order among tied tokens (which of them a cut keeps) or float32 rounding decides
    a boundary: ties across the top-p cut, ties at the top-k cut with top_p < 1, a cumulative mass or
    min_p ratio within 1e-5 of its threshold, logits that overflow float32 once scaled."""
    s = _penalised(x, history, kw["repetition_penalty"]) / kw["temperature"]
    if not np.isfinite(s).any() or np.any(np.abs(s[np.isfinite(s)]) > 1e37):
        return True
    order = np.sort(s)[::-1]
    k = kw["top_k"] if 0 < kw["top_k"] < len(s) else len(s)
    kept = order[order >= order[k - 1]]
    if kw["top_p"] < 1 and len(kept) > k and np.isfinite(kept[-1]):
        return True
    p = probs(kept)
    before = np.cumsum(p) - p
    if kw["top_p"] < 1 and np.any(np.abs(before[1:] - kw["top_p"]) < 1e-5):
        return True
    cut = np.argmax(before >= kw["top_p"]) if np.any(before >= kw["top_p"]) else None
    if cut and kept[cut] == kept[cut - 1]:
        return True
    if kw["min_p"] > 0 and np.any(np.abs((kept - kept[0])[kept < kept[0]] - math.log(kw["min_p"])) < 1e-4):
        return True
    return False


# ---------------------------------------------------------------------------------------- strategies

F32 = dict(width=32, allow_subnormal=False)


def _normal(x):
    """No values near float32's smallest normal: XLA on CPU flushes subnormal results to zero."""
    return x if abs(x) > 1e-30 else 0.0


@st.composite
def rows(draw):
    v = draw(st.sampled_from([2, 3, 5, 8, 40]))  # few shapes: each compiles `sample`
    kind = draw(st.sampled_from(["normal", "ties", "extreme", "equal"]))
    if kind == "normal":
        x = draw(st.lists(st.floats(-20, 20, **F32).map(_normal), min_size=v, max_size=v))
    elif kind == "ties":
        x = draw(st.lists(st.sampled_from([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]), min_size=v, max_size=v))
    elif kind == "extreme":
        x = draw(st.lists(st.sampled_from([-np.inf, -1e30, -100.0, 100.0, 1e30]) | st.floats(-50, 50, **F32).map(_normal),
                          min_size=v, max_size=v))
        assume(np.isfinite(x).any())
    else:
        x = [draw(st.floats(-100, 100, **F32).map(_normal))] * v
    history = draw(st.lists(st.integers(0, v - 1), max_size=12))
    return np.asarray(x, np.float32), history


@st.composite
def settings_for(draw, v):
    return dict(
        temperature=draw(st.sampled_from([0.3, 0.7, 1.0, 1.5]) | st.floats(0.05, 5)),
        top_k=draw(st.sampled_from([0, 1, 2, 3, max(v - 1, 1), v, v + 5, 50])),
        top_p=draw(st.sampled_from([1.0, 0.9, 0.5, 0.1, 1e-6]) | st.floats(1e-6, 1.0)),
        min_p=draw(st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0]) | st.floats(0, 1)),
        repetition_penalty=draw(st.sampled_from([1.0, 1.0, 0.5, 1.3, 2.0])),
    )


# ---------------------------------------------------------------------------------------- properties


@SETTINGS
@given(st.data())
def test_filters_keep_the_tokens_and_distribution_transformers_does(data):
    """Penalty, temperature, top-k, top-p, min-p alone and together: the same tokens survive, with
    the same logits (a tail of total probability below DENSITY aside: see test_top_p_one_keeps_every_token)."""
    x, history = data.draw(rows())
    kw = data.draw(settings_for(len(x)))
    assume(not _known_difference(x, history, kw))
    ref = hf_process(x, history, {"do_sample": True}, **kw)
    _, ours = jx_process(x, history, SamplingParams(**kw).resolved({"do_sample": True}))
    kept = np.isfinite(ours)
    assert not np.any(kept & ~np.isfinite(ref))  # nothing transformers filters out
    assert probs(ref)[~kept].sum() < DENSITY  # and only a far tail (p < 1e-6) of what it keeps is lost
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=5e-7, atol=0)  # the same logits, to 2 ulp


@SETTINGS
@given(rows(), st.sampled_from([0.5, 0.9, 1.0, 1.1, 1.3, 2.0]))
def test_greedy_applies_the_repetition_penalty_to_prompt_and_generated_tokens(row, penalty):
    """temperature 0 is transformers' greedy search: the penalty (on every token of the history,
    however often it occurs) before the argmax."""
    x, history = row
    ref = hf_process(x, history, {"do_sample": False}, repetition_penalty=penalty)
    top2 = np.sort(ref[np.isfinite(ref)])[-2:]
    assume(len(top2) < 2 or top2[1] == top2[0] or top2[1] - top2[0] > 1e-6 * abs(top2[1]))  # no 1-ulp near-ties
    greedy, _ = jx_process(x, history, SamplingParams(temperature=0.0, repetition_penalty=penalty).resolved())
    assert greedy == int(np.argmax(ref))
    unfiltered = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=penalty).resolved()
    _, penalised = jx_process(x, history, unfiltered)  # temperature 1 and no filters: the penalised logits
    fin = np.isfinite(penalised)  # (less a far tail that top_p=1.0 drops: test_top_p_one_keeps_every_token)
    assert fin[np.argmax(ref)]
    np.testing.assert_allclose(penalised[fin], ref[fin], rtol=2.5e-7, atol=0)


def test_sample_draws_follow_transformers_distribution():
    """`sample` itself, jitted over 4000 rows with one seed each: frequencies match transformers'."""
    n, x = 4000, np.random.default_rng(0).normal(0, 1.5, 24).astype(np.float32)
    history, kw = [3, 3, 7, 11], dict(temperature=0.8, top_k=12, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    p = probs(hf_process(x, history, {"do_sample": True}, **kw))
    params = [SamplingParams(**kw, seed=i).resolved({"do_sample": True}) for i in range(n)]
    seen = np.zeros((n, len(x)), bool)
    seen[:, history] = True
    rp = jax.tree.map(jnp.asarray, RowParams.of(params))
    tokens, _ = jax.jit(sample)(jnp.broadcast_to(x, (n, len(x))), jnp.asarray(seen), rp, jnp.zeros(n, jnp.int32))
    counts = np.bincount(np.asarray(tokens), minlength=len(x))
    assert np.all(counts[p == 0] == 0)
    assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1)


def _peaked_llama(folder, vocab: int, seed: int):
    """A one-layer Llama with large random weights (peaked logits: few near-ties), saved to `folder`:
    (transformers' model, jaxllm's load of it)."""
    import jaxllm

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.fill_(1.0)
    hf.save_pretrained(folder)
    return hf, jaxllm.load(folder)


def test_generate_penalises_prompt_tokens_as_transformers_does(tmp_path):
    """End to end, greedy: jaxllm's `seen` holds the prompt and every generated token, as transformers'
    input_ids do (with penalty 1.8 the prompt's tokens, the unpenalised choices, never come back)."""

    hf, model = _peaked_llama(tmp_path, vocab=64, seed=0)
    prompt = [5, 9, 5, 9, 12, 5, 7, 30, 31, 5]
    for penalty in (1.0, 1.8, 0.6):
        ours = model.generate(prompt, SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=penalty,
                                                     ignore_eos=True)).token_ids
        with torch.no_grad():
            ids = torch.tensor([prompt])  # an explicit mask: without one, id 0 (the pad id) would be taken for padding
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, repetition_penalty=penalty,
                              max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert ours == ref, penalty


class _OpenAIPenalties(transformers.LogitsProcessor):
    """OpenAI's presence and frequency penalties as vLLM applies them (transformers has neither):
    counted over the generated tokens only, after the repetition penalty (transformers runs a
    custom processor after its own)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        out = input_ids[:, self.prompt_len :]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0)


def test_penalties_and_logit_bias_match_vllms_rule_end_to_end(tmp_path):
    """Greedy under OpenAI's penalties and logit bias, beside the repetition penalty, in an engine
    short of pages: three prompts at a time preempt one another (a recomputed sequence counts its
    output again from its tokens), and each answer equals transformers' greedy generate with the
    bias as its sequence_bias (applied first, as vLLM does) and the penalties as vLLM applies them;
    zero penalties change nothing."""
    from jaxllm.engine import Engine
    from jaxllm.sampling import GREEDY, step_kind

    hf, model = _peaked_llama(tmp_path, vocab=48, seed=1)
    prompts = [[5, 9, 5, 9, 12, 5, 7, 30], [3, 3, 3, 40, 41], [17, 2, 8, 8, 1, 44, 20, 21, 22, 5, 6]]
    plain = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    engine = Engine(model, batch_size=3, max_len=32, num_pages=12, page_size=4, prefill_tokens=8, chunk=4)
    unpenalised = [c.token_ids for c in model.generate(prompts, plain, engine=engine)]
    zero = dataclasses.replace(plain, presence_penalty=0.0, frequency_penalty=0.0)
    assert step_kind([zero.resolved()]) == GREEDY and [c.token_ids for c in model.generate(prompts, zero, engine=engine)] == unpenalised
    banned = unpenalised[0][0]  # the first answer's first token
    for presence, frequency, repetition, bias in [(1.5, 0.0, 1.0, {}), (-0.5, 1.2, 1.3, {}),
                                                  (2.0, -2.0, 1.0, {banned: -100.0, 7: 3.5, 45: 2.5})]:
        params = dataclasses.replace(plain, presence_penalty=presence, frequency_penalty=frequency, repetition_penalty=repetition,
                                     logit_bias=bias)
        preempted = engine.scheduler.stats.preempted
        ours = [c.token_ids for c in model.generate(prompts, params, engine=engine)]
        assert engine.scheduler.stats.preempted > preempted, "the pool should run out of pages"
        assert ours != unpenalised, "the penalties should change the answers"
        for prompt, got in zip(prompts, ours):
            with torch.no_grad():
                ids = torch.tensor([prompt])  # an explicit mask: without one, id 0 (the pad id) would be taken for padding
                want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, repetition_penalty=repetition,
                                   sequence_bias={(t,): b for t, b in bias.items()} or None,
                                   logits_processor=[_OpenAIPenalties(len(prompt), presence, frequency)], max_new_tokens=12,
                                   min_new_tokens=12, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
            assert got == want, (presence, frequency, repetition, bias, prompt)
            assert not bias or banned not in got


def test_min_tokens_and_stop_token_ids_match_transformers_end_to_end(tmp_path):
    """Greedy with vLLM's min_tokens and stop_token_ids in an engine short of pages (sequences preempted and
    recomputed) against transformers' generate with min_new_tokens and the stop ids among its eos_token_id: the
    checkpoint's EOS is a token greedy picks second, so the plain answer ends there and min_tokens holds it back
    (MinNewTokensLengthLogitsProcessor); a stop id ends an answer as the EOS does, its id the last token and its text
    left out, and min_tokens holds it back too. Plain greedy rows still run the GREEDY step."""
    import jaxllm
    from jaxllm.engine import Engine
    from jaxllm.sampling import GREEDY, PENALIZED, step_kind

    hf, _ = _peaked_llama(tmp_path, vocab=48, seed=1)
    prompts = [[5, 9, 5, 9, 12, 5, 7, 30], [3, 3, 3, 40, 41], [17, 2, 8, 8, 1, 44, 20, 21, 22, 5, 6]]

    def reference(prompt, eos, min_new=0):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                              min_new_tokens=min_new, eos_token_id=eos, pad_token_id=0)[0, len(prompt):].tolist()
        return out[: next((i + 1 for i, t in enumerate(out) if t in (eos or ())), len(out))]  # through the first stop

    free = [reference(p, None) for p in prompts]
    eos, stop = free[0][1], free[1][2]  # greedy would end answer 0 at its second token and answer 1 at its third
    hf.generation_config.eos_token_id = eos
    hf.generation_config.save_pretrained(tmp_path)
    model = jaxllm.load(tmp_path)
    engine = Engine(model, batch_size=3, max_len=32, num_pages=12, page_size=4, prefill_tokens=8, chunk=4)
    plain = SamplingParams(max_new_tokens=12, temperature=0.0)
    assert step_kind([plain.resolved()]) == GREEDY and step_kind([SamplingParams(min_tokens=1).resolved()]) == PENALIZED
    preempted = engine.scheduler.stats.preempted
    for min_tokens, stops in [(0, ()), (5, ()), (0, (stop,)), (4, (stop, eos))]:
        got = model.generate(prompts, dataclasses.replace(plain, min_tokens=min_tokens, stop_token_ids=stops), engine=engine)
        for prompt, answer in zip(prompts, got):
            want = reference(prompt, [eos, *stops], min_tokens)
            assert answer.token_ids == want, (min_tokens, stops, prompt)
            assert answer.finish_reason == ("stop" if want[-1] in (eos, *stops) else "length")
    assert engine.scheduler.stats.preempted > preempted, "the pool should run out of pages"


def test_a_sampled_row_draws_the_same_beside_penalized_rows(tmp_path):
    """A call takes the largest kind of step its rows need (sampling.step_kind): a seeded sampled row
    decoded beside a penalized one (a call of kind PENALIZED, zero penalties for it) draws what it
    draws alone (calls of kind SAMPLED), and the penalized row's bias holds."""
    from jaxllm.engine import Engine, Request
    from jaxllm.sampling import PENALIZED, SAMPLED, step_kind

    _, model = _peaked_llama(tmp_path, vocab=48, seed=2)
    sampled = SamplingParams(max_new_tokens=10, temperature=0.9, seed=5, ignore_eos=True).resolved()
    penalized = SamplingParams(max_new_tokens=10, temperature=0.0, frequency_penalty=1.0, logit_bias={3: -100.0},
                               ignore_eos=True).resolved()
    assert (step_kind([sampled]), step_kind([sampled, penalized])) == (SAMPLED, PENALIZED)
    prompt = [5, 9, 5, 9, 12, 5, 7, 30]
    engine = Engine(model, batch_size=2, max_len=32, page_size=4, prefill_tokens=16, chunk=4)
    alone = model.generate(prompt, sampled, engine=engine).token_ids
    got = {0: [], 1: []}
    for ev in engine.run([Request(prompt, sampled, 0), Request(prompt[::-1], penalized, 1)]):
        got[ev.index] += ev.tokens
    assert got[0] == alone and 3 not in got[1] and len(got[1]) == 10


# ---------------------------------------------------------------------------------------- resolved()

GEN_CHOICES = {"do_sample": [False, True], "temperature": [None, 0.6, 1.0], "top_k": [0, 20],
               "top_p": [None, 0.9, 1.0], "min_p": [None, 0.1], "repetition_penalty": [None, 1.2]}
MISSING = object()


def _effective_hf(cfg):
    rep = float(cfg.repetition_penalty if cfg.repetition_penalty is not None else 1.0)
    if not cfg.do_sample:
        return (0.0, 0, 1.0, 0.0, rep)
    return (float(cfg.temperature), int(cfg.top_k or 0), float(cfg.top_p), float(cfg.min_p or 0.0), rep)


def _effective_jx(p):
    if p.temperature == 0:
        return (0.0, 0, 1.0, 0.0, p.repetition_penalty)
    return (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty)


def _configs():
    options = {k: [MISSING] + v for k, v in GEN_CHOICES.items()}
    for combo in itertools.product(*options.values()):
        yield {k: v for k, v in zip(options, combo) if v is not MISSING}


def test_resolved_reads_generation_config_as_transformers_does():
    """Every combination of do_sample and each field given or absent (top_k absent: 50 when sampling)."""
    for gen in _configs():
        assert _effective_jx(SamplingParams().resolved(gen)) == _effective_hf(hf_generation_config(gen)), gen


@pytest.mark.parametrize("user", [dict(top_k=10), dict(top_p=0.5), dict(min_p=0.2), dict(repetition_penalty=1.3),
                                  dict(temperature=0.7), dict(temperature=0.7, top_k=5)])
@pytest.mark.parametrize("gen", [{"do_sample": True}, {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.9}])
def test_resolved_request_values_override_a_sampling_config(gen, user):
    assert _effective_jx(SamplingParams(**user).resolved(gen)) == _effective_hf(hf_generation_config(gen, **user))


def _hf_lengths(gen: dict, prompt: int, **kwargs) -> tuple[int, int]:
    """(new tokens at most, new tokens before an EOS may end) that generate() gives a prompt of `prompt` tokens
    (_prepare_generated_length, then _validate_generated_length's ValueError for a prompt that fills max_length)."""
    model = _hf_model()
    model.generation_config = transformers.GenerationConfig(**gen)
    default_max, default_min = (kwargs.get(k) is None and gen.get(k) is None for k in ("max_length", "min_length"))
    cfg = hf_generation_config(gen, **kwargs)
    cfg = model._prepare_generated_length(cfg, default_max, default_min, "input_ids", prompt, torch.zeros((1, prompt)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model._validate_generated_length(cfg, prompt, default_max)
    most = cfg.max_length - prompt
    return most, min(max(cfg.min_length - prompt, cfg.min_new_tokens or 0, 0), most)


@pytest.mark.parametrize("user", [{}, {"max_new_tokens": 3}, {"min_tokens": 2}])
@pytest.mark.parametrize("gen", [{"max_length": 30}, {"max_length": 30, "min_length": 12},
                                 {"max_length": 30, "min_length": 25, "min_new_tokens": 4}, {"max_length": 30, "max_new_tokens": 7},
                                 {"min_length": 12, "max_new_tokens": 9}, {"min_length": 12, "min_new_tokens": 0, "max_new_tokens": 9}])
def test_resolved_reads_max_and_min_length_as_transformers_does(gen, user):
    """generation_config.json's max_length and min_length count the prompt (the new tokens: what is left of them),
    each behind max_new_tokens / min_new_tokens; a prompt that fills max_length is refused as generate refuses it;
    the caller's max_new_tokens (min_tokens: transformers' min_new_tokens) wins. It was 256 new tokens, min_length none."""
    hf_kw = {"min_new_tokens" if k == "min_tokens" else k: v for k, v in user.items()}
    for prompt in (5, 10, 29, 30, 40):
        try:
            want = _hf_lengths(gen, prompt, **hf_kw)
        except ValueError:
            with pytest.raises(GenerationError, match=rf"^a prompt of {prompt} tokens leaves no room under generation_config"
                                                      r".json's max_length=30 \(prompt \+ new tokens\): set max_new_tokens"):
                SamplingParams(**user).resolved(gen, prompt_tokens=prompt)
            continue
        if user.get("min_tokens", 0) > want[0]:  # vLLM's rule for the caller's min_tokens; transformers warns, holds EOS back
            with pytest.raises(GenerationError, match=rf"^min_tokens=2 is invalid: .* max_new_tokens \({want[0]}\)$"):
                SamplingParams(**user).resolved(gen, prompt_tokens=prompt)
            continue
        p = SamplingParams(**user).resolved(gen, prompt_tokens=prompt)
        assert (p.max_new_tokens, p.min_tokens) == want, prompt


# ---------------------------------------------------------------------------------------- ties and special values


def _kept(x, kw, history=()):
    ref = hf_process(x, history, {"do_sample": True}, **kw)
    _, ours = jx_process(x, history, SamplingParams(**kw).resolved({"do_sample": True}))
    return int(np.isfinite(ref).sum()), int(np.isfinite(ours).sum())


def test_top_p_keeps_only_part_of_a_tie_at_its_cut():
    hf, ours = _kept(np.zeros(4, np.float32), dict(top_k=0, top_p=0.3))
    assert ours == hf == 2


def test_top_p_after_top_k_counts_the_tokens_tied_at_the_k_th_value():
    hf, ours = _kept(np.asarray([2, 1, 1, 1, 1], np.float32), dict(top_k=2, top_p=0.6))
    assert ours == hf == 3


def test_top_p_one_keeps_every_token():
    hf, ours = _kept(np.asarray([0, -20], np.float32), dict(top_k=0, top_p=1.0))
    assert ours == hf == 2


def test_resolved_null_top_k_is_transformers_default():
    gen = {"do_sample": True, "top_k": None}
    assert SamplingParams().resolved(gen).top_k == hf_generation_config(gen).top_k == 50


def test_resolved_top_p_zero_keeps_the_top_token():
    x, gen = np.asarray([2.0, 1.0, 0.5, 0.0], np.float32), {"do_sample": True, "top_p": 0.0, "top_k": 0}
    ref = hf_process(x, (), gen)
    _, ours = jx_process(x, (), SamplingParams().resolved(gen))
    assert np.array_equal(np.isfinite(ours), np.isfinite(ref))


@pytest.mark.parametrize("temperature", [1e-7, 1e-12, 1e-30])
def test_a_tiny_temperature_divides_as_transformers_does(temperature):
    """Below 1e-6 too (a floor there once made 1e-7 draw the token 1 ulp below the top 28% of the
    time, where transformers draws it at odds of 1e-4): the same logits, to 2 ulp."""
    x = np.asarray([10.0, np.nextafter(np.float32(10.0), np.float32(0)), 3.0, -np.inf], np.float32)
    kw = dict(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    ref = hf_process(x, (), {"do_sample": True}, **kw)
    _, ours = jx_process(x, (), SamplingParams(**kw).resolved({"do_sample": True}))
    np.testing.assert_allclose(ours, ref, rtol=5e-7, atol=0)


def test_a_temperature_that_would_overflow_float32_still_draws_the_top_token():
    """At 1e-36 these logits divided overflow to inf in float32 (transformers' draw then fails on NaN
    probabilities); ours stay finite, so the draw is the most likely token, not the first inf."""
    x = np.asarray([2000.0, 3000.0, -5.0], np.float32)
    _, ours = jx_process(x, (), SamplingParams(temperature=1e-36, top_k=0, top_p=1.0, min_p=0.0).resolved())
    assert np.isfinite(ours[:2]).all() and int(np.argmax(ours)) == 1


# ---------------------------------------------------------------------------------------- every setting together

COMBINED = dict(temperature=0.7, top_k=6, top_p=0.8, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5,
                frequency_penalty=0.7)


def hf_penalised_process(x, prompt, generated, kw: dict) -> np.ndarray:
    """transformers' processors in vLLM's order around OpenAI's penalties: the repetition penalty (over prompt and
    output), the presence and frequency penalties (`_OpenAIPenalties`, over the output), then temperature, top-k, top-p
    and min-p (a custom processor runs after transformers' own: composed by hand to keep vLLM's order)."""
    history = prompt + generated
    filters = {k: v for k, v in kw.items() if k not in ("repetition_penalty", "presence_penalty", "frequency_penalty")}
    x = hf_process(x, history, {"do_sample": False}, repetition_penalty=kw["repetition_penalty"])
    ids = torch.tensor([history])
    x = _OpenAIPenalties(len(prompt), kw["presence_penalty"], kw["frequency_penalty"])(ids, torch.tensor(x)[None]).numpy()[0]
    return hf_process(x, (), {"do_sample": True}, repetition_penalty=1.0, **filters)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", [
    COMBINED,
    {**COMBINED, "presence_penalty": -2.0, "frequency_penalty": 2.0, "repetition_penalty": 0.5},
    {**COMBINED, "top_p": 1e-9},  # the top token alone, penalties deciding which it is
    {**COMBINED, "min_p": 1.0},  # only tokens as likely as the top one
    {**COMBINED, "top_k": 1, "top_p": 1.0, "min_p": 0.0},
    {**COMBINED, "top_k": 0, "top_p": 0.5, "min_p": 0.0, "temperature": 1.6},
    {**COMBINED, "temperature": 1e-6},  # near-greedy: transformers' division, and the greedy token on top
    {**COMBINED, "top_k": 0, "top_p": 1.0, "min_p": 0.0},  # the penalties alone decide the distribution
], ids=lambda kw: ",".join(f"{k[:4]}={v:g}" for k, v in kw.items()))
def test_every_setting_together_matches_transformers_processors(kw, seed):
    """Temperature, top-k, top-p, min-p and the repetition, presence and frequency penalties at once (a step of kind
    PENALIZED, counting the output's tokens), extreme values among them: the same tokens survive with the same
    processed logits (so the same log-probabilities) as transformers' processors, to 2 ulp, and the most likely of
    them is the greedy token under the same penalties."""
    x = np.random.default_rng(seed).normal(0, 2.0, 16).astype(np.float32)
    top = np.argsort(-x).tolist()  # the most likely tokens generated (some often) and prompted: the penalties decide
    prompt, generated = [top[3], top[3], top[9], top[1]], [top[0], top[2], top[0], top[0], top[5], top[12]]
    ref = hf_penalised_process(x, prompt, generated, kw)
    params = SamplingParams(**kw).resolved({"do_sample": True})
    _, ours = jx_process(x, prompt + generated, params, generated=generated)
    assert np.array_equal(np.isfinite(ours), np.isfinite(ref)), (ours, ref)
    np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=5e-7, atol=0)
    greedy, _ = jx_process(x, prompt + generated, dataclasses.replace(params, temperature=0.0), generated=generated)
    assert greedy == int(np.argmax(ref)) == int(np.argmax(ours))
