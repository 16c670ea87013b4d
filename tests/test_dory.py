"""Dory's loop beyond the generic tests: recurrent_kv_cache_mode "last_loop" (the earlier loops attend the last loop's
cached keys, so a cached decode differs from a full forward) against transformers' own cached decoding, the
released checkpoint layout (each layer an attention block and an MLP block), and the configs refused in one line."""

import json

import numpy as np
import pytest
import reference
import torch
from reference import TOKENS, cached_decode_error
from safetensors.torch import load_file, save_file
from test_engine import GREEDY

import jaxllm
from jaxllm import loader
from jaxllm.engine import Engine
from jaxllm.errors import ConfigError
from jaxllm.models import registry

ARCH = "DoryForCausalLM"


def _transformers_cached(model, seq) -> np.ndarray:
    """transformers' logits of seq [2, 20] run as _cached_decode_error runs ours: 6 tokens, then one at a time."""
    with torch.no_grad():
        out = model(torch.as_tensor(seq[:, :6]), use_cache=True)
        logits, cache = [out.logits], out.cache
        for t in range(6, seq.shape[1]):
            out = model(torch.as_tensor(seq[:, t : t + 1]), cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    return torch.cat(logits, 1).numpy()


def test_last_loop_decodes_as_transformers_cache(tmp_path):
    """Decoding through the pages matches transformers' cached decoding (not its full forward); the engine prefills a
    prompt whole and shares no prefix (a split would change what the earlier loops read: ModelConfig.whole_prefill),
    and its greedy tokens are transformers' generate's."""
    ref = reference.build(ARCH, tmp_path, seed=5, recurrent_kv_cache_mode="last_loop")
    model = jaxllm.load(tmp_path)
    cfg = model.config
    assert [cfg.kv_shape(i) is not None for i in range(cfg.num_layers)] == [True] * 3 + [False] * 4 + [True]
    theirs = _transformers_cached(ref, TOKENS)
    full = reference.torch_logits(ref, TOKENS)
    assert reference.max_rel_diff(theirs, full) > 1e-2  # the mode changes what a cached decode computes
    assert reference.max_rel_diff(model.logits(TOKENS), full) <= 1e-4
    assert cached_decode_error(model, np.asarray(TOKENS, np.int32), theirs) <= 1e-4
    prompts = [list(range(3, 24)), [5, 9, 2, 77, 31, 8, 64]]
    engine = Engine(model, batch_size=2, max_len=64, num_pages=20, page_size=4, prefill_tokens=16, chunk=4)
    got = model.generate(prompts, GREEDY, engine=engine)
    assert not engine.blocks.prefix_caching and engine.scheduler.stats.chunked == 0
    for prompt, out in zip(prompts, got):
        assert out.token_ids == reference.greedy(ref, prompt, GREEDY.max_new_tokens)


def test_released_layout_loads_as_transformers_collapses_it(tmp_path):
    """The Hub's files: layers.{2i}.mixer (attention, its attn_alpha) and layers.{2i+1}.mixer (MLP, its mlp_alpha)."""
    ref = reference.build(ARCH, tmp_path, seed=3)
    tensors, renamed = load_file(tmp_path / "model.safetensors"), {}
    for name, value in tensors.items():
        parts = name.split(".")
        if parts[1] == "layers":
            i, rest = int(parts[2]), parts[3:]
            block, rest = ((2 * i, ["mixer"] + rest[1:]) if rest[0] == "self_attn" else (2 * i + 1, ["mixer"] + rest[1:])
                           if rest[0] == "mlp" else (2 * i, ["attn_alpha"]) if rest == ["lambda_1"] else (2 * i + 1, ["mlp_alpha"]))
            name = ".".join(parts[:2] + [str(block)] + rest)
        renamed[name] = value
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = jaxllm.load(tmp_path)
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= 1e-4


TINY = dict(registry.get(ARCH).tiny_config, model_type="dory")


@pytest.mark.parametrize("change, message", [
    (dict(n_input_layers=6), r"n_input_layers 3 \+ n_recurrent_layers 0 \+ n_output_layers 1 must make num_hidden_layers 4.*at least one"),
    (dict(n_recurrent_layers=6), r"n_input_layers 1 \+ n_recurrent_layers 3 \+ n_output_layers 1 must make num_hidden_layers 4"),
    (dict(n_recurrent_loops=0), r"n_recurrent_loops"),
    (dict(recurrent_kv_cache_mode="every_loop"), r"recurrent_kv_cache_mode 'every_loop' is not one Dory runs"),
    (dict(initializer_range=0), r"initializer_range"),
    (dict(layer_types=["sliding_attention", "mlp", "mlp", "full_attention"] * 2), r"layer_types lists 'mlp' blocks, but not as"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), r"rope_scaling"),
], ids=["no-loop", "sum", "no-loops", "mode", "init", "pairs", "flat-rope"])
def test_configs_transformers_cannot_run_are_refused(change, message):
    raw = dict(TINY, **change)
    with pytest.raises(ConfigError, match=message) as info:
        loader.plan(json.loads(json.dumps(raw)))
    assert "\n" not in str(info.value)
