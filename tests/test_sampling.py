"""Sampling: filters never leak excluded tokens, seeds reproduce, bad values are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm import generation_config
from jaxllm.errors import ConfigError, GenerationError
from jaxllm.sampling import RowParams, SamplingParams, sample

V, N = 40, 4000
LOGITS = np.random.default_rng(0).normal(0, 2.0, V).astype(np.float32)


def draw(**kw):
    params = SamplingParams(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw}).resolved()
    rp = jax.tree.map(jnp.asarray, RowParams.of([params] * N))
    logits = jnp.broadcast_to(LOGITS, (N, V))
    tokens, _ = jax.jit(sample)(logits, jnp.zeros((N, V), bool), rp, jnp.arange(N))
    return np.asarray(tokens)


def probs(logits):
    p = np.exp(logits - logits.max())
    return p / p.sum()


def check_distribution(tokens, allowed):
    """Every draw is allowed, and the frequencies match the renormalised probabilities."""
    assert set(tokens.tolist()) <= set(allowed.tolist())
    p = np.zeros(V)
    p[allowed] = probs(LOGITS)[allowed]
    p /= p.sum()
    counts = np.bincount(tokens, minlength=V)
    sigma = np.sqrt(N * p * (1 - p)) + 1
    assert np.all(np.abs(counts - N * p) < 5 * sigma)


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-6])
def test_a_tiny_top_p_keeps_the_most_likely_token(top_p):
    """top_p keeps the fewest tokens whose mass reaches it, so always the most likely one, even for
    a value that is 0 in float32 (1e-300, 1e-45), which once masked every token (token 0 drawn)."""
    assert set(draw(top_p=top_p).tolist()) == {int(np.argmax(LOGITS))}


def test_top_k():
    check_distribution(draw(top_k=5), np.argsort(-LOGITS)[:5])


def test_top_p():
    order = np.argsort(-LOGITS)
    mass_before = np.cumsum(probs(LOGITS)[order]) - probs(LOGITS)[order]
    allowed = order[mass_before < 0.7]
    assert 1 < len(allowed) < V
    check_distribution(draw(top_p=0.7), allowed)


def test_min_p():
    p = probs(LOGITS)
    allowed = np.nonzero(p >= 0.1 * p.max())[0]
    assert 1 < len(allowed) < V
    check_distribution(draw(min_p=0.1), allowed)


def test_filters_compose_in_order():
    """top-k 8, then top-p over those 8, then min-p: the intersection as transformers applies it."""
    order = np.argsort(-LOGITS)[:8]
    p8 = probs(LOGITS[order])
    kept = order[(np.cumsum(p8) - p8) < 0.9]
    p = probs(LOGITS)
    kept = kept[p[kept] >= 0.05 * p.max()]
    check_distribution(draw(top_k=8, top_p=0.9, min_p=0.05), kept)


def test_temperature_zero_is_greedy():
    assert set(draw(temperature=0.0).tolist()) == {int(LOGITS.argmax())}


def test_repetition_penalty_matches_transformers_rule():
    logits = jnp.asarray([[2.0, -1.0, 1.5, 0.5]])
    seen = jnp.asarray([[True, True, False, False]])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0).resolved()
    rp = jax.tree.map(jnp.asarray, RowParams.of([params]))
    token, _ = sample(logits, seen, rp, jnp.zeros(1, jnp.int32))
    assert int(token[0]) == 2  # 2.0 -> 1.0 (divided), 1.5 untouched, -1 -> -2 (multiplied)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.5, "temperature=-0.5 is invalid"),
    ("top_p", -0.1, "top_p=-0.1 is invalid: use a number in \\[0, 1\\]; 1 disables it, 0 keeps only the most likely"),
    ("top_p", 1.5, "top_p=1.5 is invalid"),
    ("top_k", -1, "top_k=-1 is invalid"),
    ("min_p", 2.0, "min_p=2.0 is invalid"),
    ("repetition_penalty", 0.0, "repetition_penalty=0.0 is invalid"),
    ("max_new_tokens", 0, "max_new_tokens=0 is invalid"),
    ("temperature", float("nan"), "temperature=nan is invalid"),
    ("temperature", 1e300, "temperature=1e\\+300 is invalid: beyond float32"),  # would be inf on the device
    ("repetition_penalty", 1e39, "repetition_penalty=1e\\+39 is invalid: beyond float32"),
    ("min_tokens", -1, "min_tokens=-1 is invalid: use a whole number from 0 to max_new_tokens \\(256\\)"),
    ("min_tokens", 300, "min_tokens=300 is invalid"),  # beyond max_new_tokens
    ("stop_token_ids", [2, -1], "stop_token_ids=\\[2, -1\\] is invalid: use a list of token ids"),
    ("stop_token_ids", [2, True], "stop_token_ids=\\[2, True\\] is invalid"),
    ("stop_token_ids", 2, "stop_token_ids=2 is invalid"),
    ("stop_token_ids", list(range(65)), "stop_token_ids='<65 ids>' is invalid: name at most 64 tokens"),
    ("skip_special_tokens", "no", "skip_special_tokens='no' is invalid: use True or False"),
])
def test_invalid_values(field, value, message):
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**{field: value}).resolved()


NUMBERS = {"max_new_tokens": 8, "temperature": 0.5, "top_k": 5, "top_p": 0.5, "min_p": 0.25, "repetition_penalty": 1.5,
           "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 7, "top_logprobs": 3, "min_tokens": 2}
WHOLE = ("max_new_tokens", "top_k", "seed", "top_logprobs", "min_tokens")


@pytest.mark.parametrize("field", NUMBERS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400, -10**400, True, False, np.bool_(True),
                                   "1", [1], 1 + 0j, np.array([1, 2])], ids=lambda v: repr(v)[:20])
def test_every_number_field_refuses_the_class_of_bad_values(field, value):
    """NaN, infinities, ints beyond any range, bools (not numbers, though Python counts them ints), text, lists,
    complex numbers: one line naming the field and what it takes."""
    kw = {"max_new_tokens": 8} if field == "min_tokens" else {}
    with pytest.raises(GenerationError, match=rf"^{field}=.* is invalid: (beyond float32, .*)?use "):
        SamplingParams(**{**kw, field: value}).resolved()


@pytest.mark.parametrize("field, value", [(f, v) for f, v in NUMBERS.items()] + [(f, float(v)) for f, v in NUMBERS.items() if f in WHOLE]
                         + [(f, 2**70) for f in WHOLE] + [("seed", -1), ("seed", 2**32), ("seed", 2**64), ("top_k", -1),
                                                          ("temperature", -1e-9)])
def test_whole_number_fields_refuse_floats_and_seeds_their_range(field, value):
    """A float for a count (top_k 5.0), a count beyond int32 (2**70) or a seed outside [0, 2**32) (negative, 64-bit) is
    refused; the same number of
    the field's kind is taken, as a numpy scalar too (np.float32(0.5), np.int64(8))."""
    kw = {"max_new_tokens": 8} if field == "min_tokens" else {}
    if isinstance(value, float) and field in WHOLE or value in (-1, 2**32, 2**64, 2**70, -1e-9):
        with pytest.raises(GenerationError, match=rf"^{field}=.* is invalid: use "):
            SamplingParams(**{**kw, field: value}).resolved()
        return
    for kind in (np.int64, np.int32, np.uint32) if field in WHOLE else (np.float32, np.float64):
        got = getattr(SamplingParams(**{**kw, field: kind(value)}).resolved(), field)
        assert got == getattr(SamplingParams(**{**kw, field: value}).resolved(), field) and type(got) in (int, float)


def test_a_bad_value_from_generation_config_names_the_file():
    """A value the loader's field check lets through but sampling refuses (beyond float32) says it
    came from generation_config.json, not from the request that never set it."""
    with pytest.raises(GenerationError, match=r"temperature=1e\+39 is invalid: .* \(it comes from generation_config.json: "
                                              r"correct the file, or set temperature in the request\)$"):
        SamplingParams().resolved({"do_sample": True, "temperature": 1e39})
    with pytest.raises(GenerationError, match=r"use a smaller number$"):
        SamplingParams(temperature=1e39).resolved({"do_sample": True, "temperature": 0.5})


def test_generation_config_supplies_defaults():
    gen = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 77, "min_new_tokens": 5}
    p = SamplingParams(top_p=0.5).resolved(gen)
    assert (p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.min_tokens) == (0.6, 0.5, 50, 77, 5)
    # transformers' min_new_tokens beyond the length holds the EOS back to the end; stop ids lose their repeats, as vLLM's
    p = SamplingParams(max_new_tokens=3, stop_token_ids=[7, 2, 7]).resolved(gen)
    assert (p.min_tokens, p.stop_token_ids) == (3, (7, 2))
    assert SamplingParams().resolved({}).temperature == 0.0  # greedy without a generation config


def test_generation_config_settings_not_applied_are_named_once(caplog, monkeypatch):
    """Settings of transformers' generate that jaxllm does not apply are not dropped in silence: one
    warning names those that would change this request's answer (not neutral values, not sampling
    filters of a greedy request, not max_length behind a max_new_tokens), once per process."""
    monkeypatch.setattr(generation_config, "_warned", set(), raising=False)  # whatever other tests warned about
    gen = {"no_repeat_ngram_size": 3, "num_beams": 1, "typical_p": 0.9, "max_length": 100, "min_new_tokens": None}
    with caplog.at_level("WARNING", logger="jaxllm"):
        assert SamplingParams().resolved(gen).max_new_tokens == 256
        SamplingParams().resolved(gen)  # the same message: not again
        SamplingParams(max_new_tokens=5).resolved({"max_length": 100, "typical_p": 0.9})  # nothing unapplied
        SamplingParams(temperature=0.5).resolved({"typical_p": 0.9})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("generation_config.json sets no_repeat_ngram_size=3, max_length=100 (prompt + new tokens")
    assert "num_beams" not in messages[0] and "typical_p" not in messages[0] and "min_new_tokens" not in messages[0]
    assert messages[1].startswith("generation_config.json sets typical_p=0.9, which jaxllm does not apply")


@pytest.mark.parametrize("field, value", [
    ("num_return_sequences", 3), ("encoder_repetition_penalty", 1.3), ("encoder_no_repeat_ngram_size", 2),
    ("remove_invalid_values", True), ("guidance_scale", 1.5), ("max_time", 2.0), ("token_healing", True),
    ("dola_layers", "high"), ("force_words_ids", [[5]]), ("watermarking_config", {"greenlist_ratio": 0.25}), ("top_h", 0.4),
    ("min_length", 12), ("bad_words_ids", np.array([[3, 4]])), ("suppress_tokens", np.array([3]))])
def test_each_setting_generate_applies_and_jaxllm_does_not_is_named(field, value, caplog, monkeypatch):
    """Settings transformers' generate applies (to a decoder-only model: the encoder_ ones read its prompt) are named
    in the warning, not dropped in silence (these were); a numpy array value once raised numpy's 'truth value of
    an array is ambiguous' ValueError. min_length only where the prompt's length is unknown (else it is applied)."""
    monkeypatch.setattr(generation_config, "_warned", set())
    with caplog.at_level("WARNING", logger="jaxllm"):
        SamplingParams(temperature=0.5, max_new_tokens=4).resolved({field: value})
        generation_config._warned.clear()
        SamplingParams(temperature=0.5, max_new_tokens=4).resolved({field: value}, prompt_tokens=5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == (1 if field == "min_length" else 2) and all(f"sets {field}=" in m for m in messages), messages


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import reference

    folder = tmp_path_factory.mktemp("qwen3")
    reference.build("Qwen3ForCausalLM", folder, seed=2)
    return jaxllm.load(folder)


def test_seed_reproduces_and_is_batch_independent(tiny):
    prompts = [[1, 2, 3, 4], [9, 8, 7]]
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=20, seed=5, ignore_eos=True)
    a = tiny.generate(prompts, params)
    b = tiny.generate(prompts, params)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert tiny.generate(prompts[1], params).token_ids == a[1].token_ids
    other = tiny.generate(prompts[0], SamplingParams(**{**params.__dict__, "seed": 6}))
    assert other.token_ids != a[0].token_ids
    for seed in (np.int64(5), np.uint32(5), jnp.int32(5)):  # a numpy or JAX seed is the number it holds
        assert tiny.generate(prompts[0], SamplingParams(**{**params.__dict__, "seed": seed})).token_ids == a[0].token_ids


@pytest.mark.parametrize("max_length, prompt, want", [(10**6, 4, 60), (50, 4, 46), (64, 4, 60), (10**6, 70, 10**6 - 70)])
def test_a_files_max_length_past_the_context_reaches_only_the_context(max_length, prompt, want):
    """max_length=10**6 (prompt + new) gave a 4-token prompt 999,996 new tokens, refused as past the model's context:
    a file's max_length is a bound, so the context bounds it too (a prompt past the context: the context's own check)."""
    got = SamplingParams().resolved({"max_length": max_length}, prompt_tokens=prompt, context=64).max_new_tokens
    assert got == want


@pytest.mark.parametrize("gen, want", [({"max_length": 9}, [5, 2]), ({"max_length": 9, "max_new_tokens": 3}, [3, 3])])
def test_generate_sizes_each_answer_by_max_length_as_transformers(tiny, monkeypatch, gen, want):
    """generation_config.json's max_length counts the prompt: each prompt of a batch gets what is left of it (it got 256
    new tokens), behind the file's max_new_tokens; one that fills it is refused in one line, as generate refuses it."""
    monkeypatch.setattr(tiny, "generation_config", gen)
    params = SamplingParams(temperature=1.0, top_k=20, seed=5, ignore_eos=True)
    assert [len(r.token_ids) for r in tiny.generate([[1, 2, 3, 4], [9, 8, 7, 6, 5, 4, 3]], params)] == want
    if "max_new_tokens" not in gen:
        with pytest.raises(GenerationError, match="^a prompt of 9 tokens leaves no room under generation_config.json's max_length=9"):
            tiny.generate([list(range(1, 10))], params)


def test_without_a_seed_each_sequence_samples_afresh(tiny):
    """No seed: every sequence draws its own random seed (transformers' and vLLM's behaviour), so
    the rows of a batch and two calls differ; an explicit seed still reproduces (above)."""
    params = SamplingParams(max_new_tokens=12, temperature=1.0, ignore_eos=True)
    rows = [r.token_ids for r in tiny.generate([[5, 17, 33, 90]] * 4, params)]
    again = tiny.generate([5, 17, 33, 90], params).token_ids
    assert len({tuple(r) for r in rows + [again]}) == 5  # 12 tokens from 128: a collision is ~1e-20
    assert SamplingParams().with_seed().seed is not None and SamplingParams(seed=3).with_seed().seed == 3


def test_zero_dim_array_values_are_numbers():
    """A 0-d JAX or numpy array (jnp.float32(0.7), np.array(8), what a jitted sweep hands back) is
    taken as the number it holds, as numpy scalars are, not refused as 'temperature=Array(0.7) is
    invalid: use ... a positive number'; arrays of several values and bools still are."""
    p = SamplingParams(max_new_tokens=jnp.int32(8), temperature=jnp.float32(0.5), top_k=np.array(5),
                       top_p=jnp.bfloat16(0.5), seed=jnp.uint32(3)).resolved()
    assert (p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed) == (8, 0.5, 5, 0.5, 3)
    assert all(type(getattr(p, f)) in (int, float) for f in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"))
    with pytest.raises(GenerationError, match="temperature=Array"):
        SamplingParams(temperature=jnp.array([0.5])).resolved()
    with pytest.raises(GenerationError, match="top_k=.*True.* is invalid"):
        SamplingParams(top_k=np.array(True)).resolved()


@pytest.mark.parametrize("gen, field", [
    ({"do_sample": True, "temperature": "0.7"}, "temperature"),  # transformers' TemperatureLogitsWarper refuses a string
    ({"do_sample": True, "temperature": float("nan")}, "temperature"),
    ({"do_sample": True, "temperature": [0.7]}, "temperature"),
    ({"do_sample": "true"}, "do_sample"),
    ({"do_sample": "false"}, "do_sample"),  # transformers samples: a non-empty string is true
    ({"do_sample": 1}, "do_sample"),
    ({"do_sample": True, "top_k": "50"}, "top_k"),
    ({"do_sample": True, "top_k": 5.0}, "top_k"),
    ({"do_sample": True, "top_k": True}, "top_k"),
    ({"do_sample": True, "top_k": -1}, "top_k"),
    ({"do_sample": True, "top_k": 2**70}, "top_k"),
    ({"do_sample": True, "top_p": "0.9"}, "top_p"),
    ({"do_sample": True, "min_p": "0.1"}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),  # once read as 1.0 (no penalty); transformers refuses it
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": "1.1"}, "repetition_penalty"),
    ({"max_new_tokens": 0}, "max_new_tokens"),  # once read as the default 256; transformers refuses it
    ({"max_new_tokens": "10"}, "max_new_tokens"),
    ({"max_new_tokens": 10.0}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"min_new_tokens": "3"}, "min_new_tokens"),  # once ignored in silence
    ({"min_new_tokens": 3.0}, "min_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"),
    ({"eos_token_id": "2"}, "eos_token_id"),
])
def test_a_wrong_typed_generation_config_field_is_named(gen, field):
    """A hand-made generation_config (or a model's, edited in place) is checked as loading checks the file: a
    wrong-typed or out-of-range value is one line naming the field, not a value read otherwise or a TypeError."""
    with pytest.raises(ConfigError, match=rf"^generation_config.json '{field}' must be .*: correct that field$"):
        SamplingParams().resolved(gen)


@pytest.mark.parametrize("gen, want", [
    ({"do_sample": True, "top_k": None, "temperature": None, "top_p": None, "min_p": None}, (1.0, 50, 1.0, 0.0, 1.0, 256)),
    ({"do_sample": True, "top_p": 1, "min_p": 0, "temperature": 1, "repetition_penalty": 1}, (1.0, 50, 1.0, 0.0, 1.0, 256)),
    ({"do_sample": None, "repetition_penalty": None, "max_new_tokens": None}, (0.0, 0, 1.0, 0.0, 1.0, 256)),
    ({"eos_token_id": [1, 2], "max_length": 100}, (0.0, 0, 1.0, 0.0, 1.0, 256)),
    ({"do_sample": np.bool_(True), "temperature": np.float32(0.5), "top_k": np.int64(7), "max_new_tokens": np.int32(9)},
     (0.5, 7, 1.0, 0.0, 1.0, 9)),
])
def test_generation_config_values_read_as_transformers_reads_them(gen, want):
    """null is transformers' default (top_k 50 when sampling), whole numbers are numbers, numpy scalars their values."""
    p = SamplingParams().resolved(gen)
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.max_new_tokens) == want
    assert all(type(getattr(p, f)) in (int, float) for f in ("temperature", "top_k", "top_p", "max_new_tokens"))


@pytest.mark.parametrize("gen", [[("do_sample", True)], "{}", 3])
def test_a_generation_config_that_is_no_dict_is_named(gen):
    with pytest.raises(ConfigError, match="^generation_config.json must hold a JSON object"):
        SamplingParams().resolved(gen)
