"""Generation: LongRoPE against transformers, batching, compiles. (Every architecture's cached decode
against its full forward: tests/test_parity.py; its greedy tokens against transformers: tests/test_engine.py.)"""

import dataclasses
import gc
import json
import shutil
import weakref

import numpy as np
import pytest
import reference
import torch
import transformers

import jaxllm
from jaxllm.engine import Engine
from jaxllm.errors import GenerationError

TOL = 1e-4


LONG_FACTORS = {"short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [1.0 + 0.5 * i for i in range(8)]}


@pytest.mark.parametrize("arch, overrides", [
    ("Phi3ForCausalLM", dict(original_max_position_embeddings=16)),
    # Llama keeps the keys cached under the short factors (no recompute at the switch, unlike Phi-3)
    ("LlamaForCausalLM", dict(max_position_embeddings=64, head_dim=16, rope_parameters=dict(
        rope_type="longrope", original_max_position_embeddings=16, rope_theta=10000.0, **LONG_FACTORS))),
], ids=["phi3", "llama"])
def test_longrope_switch_mid_generation_matches_transformers(arch, overrides, tmp_path):
    """LongRoPE uses the short factors up to original_max_position_embeddings (16 here) and the
    long ones beyond; a 9-token prompt generating 32 crosses over during decode, and the padded
    prefill (bucket 16) must still count 9 tokens, as transformers does."""
    ref = reference.build(arch, tmp_path, seed=4, **overrides)
    model = jaxllm.load(tmp_path)
    assert model.config.rope.type == "longrope" and model.config.rope.original_max_position_embeddings == 16
    prompt = np.random.default_rng(8).integers(0, 128, 9).tolist()
    got = model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=32, ignore_eos=True))
    assert got.token_ids == reference.greedy(ref, prompt, 32)


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 128, n).tolist() for n in lengths]


def test_batch_invariance(llama):
    prompts = _prompts([3, 17, 60, 150])
    params = jaxllm.SamplingParams(max_new_tokens=24, ignore_eos=True)
    events = []
    together = llama.generate(prompts, params, on_token=lambda i, ids: events.append(("token", i)),
                              on_finish=lambda i, c: events.append(("finish", i, c)))
    finished = [e for e in events if e[0] == "finish"]  # once each, with the Completion returned, after its last token
    assert sorted(e[1] for e in finished) == list(range(len(prompts)))
    assert all(c == together[i] and ("token", i) not in events[events.index(("finish", i, c)):] for _, i, c in finished)
    for prompt, batched in zip(prompts, together):
        assert llama.generate(prompt, params).token_ids == batched.token_ids


def test_compiles_once_per_prefill_shape_and_decode_once(llama):
    """Prompts waiting at the same time are prefilled together in calls of (rows, length) buckets:
    compiles are bounded by those buckets, and a second run of the same work compiles nothing
    (prefix caching off: its hits would make the second run's chunks shorter, other work)."""
    engine = Engine(llama, batch_size=4, max_len=256, page_size=8, prefill_tokens=128, prefix_caching=False)
    lengths = [2, 5, 9, 15, 20, 31, 40, 63, 100, 127]  # 10 prompts over 4 buckets, more than 4 slots
    params = jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True)
    results = llama.generate(_prompts(lengths, seed=1), params, engine=engine)
    assert [len(r.token_ids) for r in results] == [12] * 10
    assert engine.counters.prefill <= 4 * 2
    assert engine.counters.decode <= 1  # none when an earlier engine of this model met the shape
    compiled = (engine.counters.prefill, engine.counters.decode)
    again = llama.generate(_prompts(lengths, seed=1), params, engine=engine)
    assert (engine.counters.prefill, engine.counters.decode) == compiled
    assert [r.token_ids for r in again] == [r.token_ids for r in results]
    # Slots refilled mid-run give the same tokens as a fresh run of each prompt.
    for i in (0, 9):
        assert llama.generate(_prompts(lengths, seed=1)[i], params).token_ids == results[i].token_ids


@pytest.mark.parametrize("prefill_tokens", [32, 8192])
def test_prompts_prefilled_together_match_one_by_one(llama, prefill_tokens):
    """Five prompts prefilled in calls of at most 32 tokens (chunks of the longer ones, two rows
    of 16) or all in one call: the same tokens and logprobs as each prompt alone."""
    prompts = _prompts([3, 5, 9, 12, 14], seed=5)
    params = jaxllm.SamplingParams(max_new_tokens=10, ignore_eos=True, logprobs=True)
    engine = Engine(llama, batch_size=5, max_len=64, page_size=4, prefill_tokens=prefill_tokens)
    together = llama.generate(prompts, params, engine=engine)
    for prompt, got in zip(prompts, together):
        alone = llama.generate(prompt, params)
        assert got.token_ids == alone.token_ids
        np.testing.assert_allclose(got.logprobs, alone.logprobs, atol=1e-5)


def test_a_prompt_sent_again_compiles_nothing(llama):
    """model.generate with a prompt it has seen: every page but the last is a prefix-cache hit, so
    what is left is a chunk of a few tokens whose own call shape (here 1 x 48 under the CPU's
    budget of max_len = 768) was never compiled; it runs padded in the shape the first call
    compiled (1 x 192) instead, with the same tokens."""
    prompt = _prompts([100], seed=21)[0]
    params = jaxllm.SamplingParams(max_new_tokens=500, ignore_eos=True)  # 600 positions: max_len 768
    llama.engines.clear()
    first = llama.generate(prompt, params)
    (engine,) = llama.engines.values()
    assert engine.budget == 768 and engine.shapes.call(100, 1) == (1, 192)
    compiled = (engine.counters.prefill, engine.counters.decode)
    hits = engine.blocks.stats.hit_tokens
    for _ in range(2):
        assert llama.generate(prompt, params).token_ids == first.token_ids
    assert engine.blocks.stats.hit_tokens - hits >= 2 * 96
    assert (engine.counters.prefill, engine.counters.decode) == compiled
    assert not any(shape[:2] == (1, 48) for shape in engine.runner.compiled_calls())


def test_a_dropped_model_frees_its_cached_engines(llama):
    """generate's engines live on the model (model.engines) and refer back to it weakly: dropping
    the last reference frees the model, its weights and its KV pool at once, without waiting for
    Python's cycle collector (a notebook that loads one model after another on a GPU)."""
    model = dataclasses.replace(llama, engines={})
    model.generate([1, 2, 3], jaxllm.SamplingParams(max_new_tokens=2))
    (engine,) = model.engines.values()
    alive, freed = weakref.ref(model), weakref.ref(engine)
    gc.disable()  # freed by reference counts alone
    try:
        del model, engine
        assert alive() is None and freed() is None
    finally:
        gc.enable()
    own = jaxllm.Engine(dataclasses.replace(llama, engines={}))  # an engine the user builds keeps its model
    assert own.model.config is llama.config


def test_engines_kept_on_the_model_do_not_pile_up(llama):
    """generate keeps an engine per request size on the model: a longer request's engine replaces
    the shorter ones of its batch, and serves the shorter requests after it (up to 4x their
    length) with the same tokens, so the pools kept do not grow with every new size."""
    model = dataclasses.replace(llama, engines={})
    params = jaxllm.SamplingParams(max_new_tokens=8, ignore_eos=True)
    short, long = _prompts([20, 600], seed=8)
    first = model.generate(short, params)
    model.generate(long, params)
    assert [k[1] for k in model.engines] == [768]
    assert model.generate(short, params).token_ids == first.token_ids
    assert [k[1] for k in model.engines] == [768]


def test_prompt_longer_than_cache_fails_before_work(llama):
    engine = Engine(llama, batch_size=1, max_len=64)
    with pytest.raises(GenerationError, match="prompt of 60 tokens \\+ max_new_tokens=10 exceeds the engine's max_len 64"):
        llama.generate(_prompts([60])[0], jaxllm.SamplingParams(max_new_tokens=10), engine=engine)
    assert engine.counters.prefill == 0


def test_sampling_fields_as_keyword_arguments(llama):
    """model.generate(prompt, max_new_tokens=..., temperature=...) as transformers' generate takes them: the same
    completion as the SamplingParams holding those fields, set over `params` where both are given."""
    prompt = _prompts([6], seed=2)[0]
    want = llama.generate(prompt, jaxllm.SamplingParams(max_new_tokens=5, temperature=0.8, seed=3, logprobs=True))
    assert llama.generate(prompt, max_new_tokens=5, temperature=0.8, seed=3, logprobs=True) == want
    over = llama.generate(prompt, {"max_new_tokens": 9, "temperature": 0.8, "logprobs": True}, max_new_tokens=5, seed=3)
    assert over == want


def test_eos_stops_and_logprobs(llama):
    prompt = _prompts([5], seed=4)[0]
    free = llama.generate(prompt, jaxllm.SamplingParams(max_new_tokens=16, ignore_eos=True, logprobs=True))
    # Make the 4th generated token an EOS id: generation must end right there.
    eos = free.token_ids[3]
    llama_eos = jaxllm.LoadedModel(llama.config.replace(eos_token_ids=(eos,)), llama.graphdef, llama.params)
    first = free.token_ids.index(eos)
    stopped = llama_eos.generate(prompt, jaxllm.SamplingParams(max_new_tokens=16))
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop"
    # logprobs are the model's own log-probabilities of the chosen tokens.
    full = np.asarray(llama.logits([prompt + free.token_ids]))[0]
    logp = full - np.log(np.exp(full - full.max(-1, keepdims=True)).sum(-1, keepdims=True)) - full.max(-1, keepdims=True)
    expected = [logp[len(prompt) - 1 + i, t] for i, t in enumerate(free.token_ids)]
    np.testing.assert_allclose(free.logprobs, expected, atol=1e-4)


def test_generation_config_eos_ids_replace_config_json_ones(llama, tmp_path):
    """transformers' generate stops at generation_config.json's eos_token_id when the file names
    one, not at config.json's as well: a config.json listing [2, X] with a generation_config.json
    of 2 generates through X, as transformers does (the union stopped at X); without the file,
    config.json's list is the one."""
    shutil.copytree(llama.path, tmp_path, dirs_exist_ok=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    prompt, run = [5, 9, 17, 33, 42], dict(max_new_tokens=12, do_sample=False)
    free = hf.generate(torch.tensor([prompt]), eos_token_id=None, **run)[0, len(prompt):].tolist()
    x = next(t for t in free[3:] if t != 2)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "eos_token_id": [2, x]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert hf.generate(torch.tensor([prompt]), **run)[0, len(prompt):].tolist() == free
    loaded = jaxllm.load(tmp_path)
    # the files' settings on the fixture's module structure: its compiled steps serve (a config of other
    # stop ids is another structure, compiled anew)
    model = jaxllm.LoadedModel(loaded.config, llama.graphdef, llama.params, generation_config=loaded.generation_config)
    got = model.generate(prompt, {"max_new_tokens": 12})
    assert (got.token_ids, got.finish_reason) == (free, "length")
    (tmp_path / "generation_config.json").unlink()  # transformers then stops at config.json's ids, so does the engine
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert hf.generate(torch.tensor([prompt]), **run)[0, len(prompt):].tolist() == free[: free.index(x) + 1]
    assert Engine(jaxllm.load(tmp_path), batch_size=1, max_len=64).eos.tolist() == sorted([2, x])


def test_kv_length_buckets_give_the_same_tokens(llama):
    """A long page table read in kv-length buckets (256, then 512) decodes the same tokens as a
    tight one read whole."""
    prompts = _prompts([230, 20], seed=3)
    params = jaxllm.SamplingParams(max_new_tokens=40, ignore_eos=True)
    wide = Engine(llama, batch_size=2, max_len=1024, chunk=16)
    a = llama.generate(prompts, params, engine=wide)
    assert wide.counters.decode == 2  # the 256 and 512 buckets
    tight = Engine(llama, batch_size=2, max_len=288, chunk=16)
    b = llama.generate(prompts, params, engine=tight)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_callbacks_and_chat_flag_are_checked_before_any_work(llama):
    """on_text / on_token that cannot be called as f(index, text) / f(index, ids), and a chat flag
    that is not a bool (chat="no" is truthy), are refused in one line before anything runs, not
    with a TypeError from inside the decode loop or a silently applied chat template."""
    params = {"max_new_tokens": 2}
    for name, bad in (("on_text", 5), ("on_token", "print"), ("on_token", lambda ids: None), ("on_text", lambda: None),
                      ("on_finish", lambda c: None)):
        with pytest.raises(jaxllm.InputError, match=f"{name} must be a function taking"):
            llama.generate([1, 2, 3], params, **{name: bad})
    for bad in ("no", 1, np.array([True, False])):
        with pytest.raises(jaxllm.InputError, match="chat must be True, False or None"):
            llama.generate([1, 2, 3], params, chat=bad)
    seen = []
    out = llama.generate([1, 2, 3], params, chat=np.bool_(False), on_token=lambda i, ids, *rest: seen.extend(ids))
    assert seen == out.token_ids


def test_prompt_logprobs_in_blocks_equal_the_whole_chunk(monkeypatch):
    """A prompt-scoring prefill takes its positions' logits a block at a time (steps.PROMPT_POSITIONS over
    the rows): the same values as the whole chunk's at once; each target's rank is its place in the
    vocabulary sorted by likelihood (1: the likeliest); the top of width 1 (Engine.score's) is the top-k's first."""
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    from jaxllm.sampling import top_of
    from jaxllm.serving import steps

    rng = np.random.default_rng(0)
    hidden, weight = rng.normal(size=(3, 16, 8)).astype(np.float32), rng.normal(size=(8, 40)).astype(np.float32)
    targets = rng.integers(-1, 40, (3, 16)).astype(np.int32)
    model = SimpleNamespace(logits=lambda h: jnp.asarray(h) @ weight)
    whole = steps._chunk_logprobs(model.logits(hidden), targets, 5)
    monkeypatch.setattr(steps, "PROMPT_POSITIONS", 12)  # blocks of 4 positions x 3 rows
    blocked = steps._prompt_logprobs(model, hidden, targets, 5, None)
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)
    np.testing.assert_array_equal(blocked[1][0], whole[1][0])
    np.testing.assert_allclose(blocked[1][1], whole[1][1], atol=1e-6)
    order = np.argsort(-(hidden @ weight), axis=-1)  # no ties among random logits
    np.testing.assert_array_equal(whole[2], np.argmax(order == np.maximum(targets, 0)[..., None], axis=-1) + 1)
    np.testing.assert_array_equal(blocked[2], whole[2])
    one = steps._chunk_logprobs(model.logits(hidden), targets, 1)  # Engine.score's width: an argmax (sampling.top_of)
    np.testing.assert_array_equal(one[1][0], whole[1][0][..., :1])
    np.testing.assert_allclose(one[1][1], whole[1][1][..., :1], atol=1e-6)
    tied = jnp.asarray([[0.0, 1.0, 1.0, 0.5]])  # ties: the lower id, as top_k orders them
    assert top_of(tied, 1)[0].tolist() == jax.lax.top_k(tied, 1)[1].tolist() == [[1]]


def test_top_and_prompt_logprobs_match_transformers(llama, tmp_path):
    """top_logprobs of greedy generation against transformers' generate(output_logits=True) log_softmax
    top-k, and prompt_logprobs against a forward's log_softmax at the next token: a batch (prefill and
    decode steps), a prompt scored in three chunks, a prompt whose pages the prefix cache holds (every
    position computed again), and max_new_tokens=0 (the prompt alone, OpenAI's echo with max_tokens 0)."""
    hf = reference.build("LlamaForCausalLM", tmp_path, seed=11)  # the llama fixture's weights
    prompts, k, new = _prompts([5, 40], seed=6), 5, 6
    engine = Engine(llama, batch_size=2, max_len=64, page_size=4, prefill_tokens=64)  # chunks of 16: 40 takes three
    params = jaxllm.SamplingParams(max_new_tokens=new, ignore_eos=True, top_logprobs=k, prompt_logprobs=True)
    outs = llama.generate(prompts, params, engine=engine)
    again = llama.generate(prompts[1], params, engine=engine)  # its pages are in the prefix cache now
    alone = llama.generate(prompts[1], dict(vars(params), max_new_tokens=0), engine=engine)
    assert (alone.token_ids, alone.finish_reason, alone.top_logprobs) == ([], "length", [])
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
            want = torch.log_softmax(torch.stack(ref.logits, 1)[0].float(), -1).topk(k)
            logp = torch.log_softmax(hf(ids).logits[0].float(), -1)
        assert out.token_ids == ref.sequences[0, len(prompt):].tolist() and out.logprobs == [pairs[0][1] for pairs in out.top_logprobs]
        np.testing.assert_array_equal([[t for t, _ in pairs] for pairs in out.top_logprobs], want.indices.numpy())
        np.testing.assert_allclose([[lp for _, lp in pairs] for pairs in out.top_logprobs], want.values.numpy(), atol=1e-5)
        given = logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].numpy()  # each prompt token given those before it
        top = logp[:-1].topk(k)
        for got in (out, again, alone) if prompt == prompts[1] else (out,):
            assert got.prompt_logprobs[0] is None and got.prompt_top_logprobs[0] is None
            np.testing.assert_allclose(got.prompt_logprobs[1:], given, atol=1e-5)
            np.testing.assert_array_equal([[t for t, _ in pairs] for pairs in got.prompt_top_logprobs[1:]], top.indices.numpy())
            np.testing.assert_allclose([[lp for _, lp in pairs] for pairs in got.prompt_top_logprobs[1:]], top.values.numpy(), atol=1e-5)
            assert got.prompt_ranks[0] is None  # vLLM's rank: the tokens at least as likely, itself included
            assert got.prompt_ranks[1:] == (logp[:-1] >= torch.from_numpy(given)[:, None]).sum(-1).tolist()
