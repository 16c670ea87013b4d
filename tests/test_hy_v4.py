"""HY V4 beyond the generic tests: its checkpoints' other spellings (transformers' own module names, the Hub's), the
float32 head of a bfloat16 model, and the configs refused in one line."""

import json

import jax.numpy as jnp
import pytest
import reference
from reference import TOKENS
from safetensors.torch import load_file, save_file

import jaxllm
from jaxllm import loader
from jaxllm.errors import ConfigError
from jaxllm.models import registry
from jaxllm.models.hy_v4 import LOADED, SAVED, _apply

ARCH = "HYV4ForCausalLM"


@pytest.mark.parametrize("spelling", ["transformers", "hub"])
def test_other_spellings_load_the_same(tmp_path, spelling):
    """transformers' module names (attn_hc.fn, sinks, gate_proj, hc_head.hc_fn), or the Hub's (the MLPs' gate_proj beside
    the attention's linear_gate, hc_attn_layer.hc_fn without hc_pre): the saved file's logits. (Seed 2: under some
    seeds two keys score exactly 0 (relu) at the indexer's top-k boundary, and torch's topk orders such ties its own way.)"""
    ref = reference.build(ARCH, tmp_path, seed=2)
    tensors = load_file(tmp_path / "model.safetensors")
    ours = {_apply(LOADED, n): v for n, v in tensors.items()}
    if spelling == "hub":
        ours = {_apply(SAVED, n).replace("self_attn.linear_gate", "self_attn.LINEAR_GATE").replace(".linear_gate.", ".gate_proj.")
                .replace("self_attn.LINEAR_GATE", "self_attn.linear_gate").replace(".hc_pre.hc_attn_layer.", ".hc_attn_layer."): v
                for n, v in ours.items()}
    assert set(ours) != set(tensors)
    save_file(ours, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = jaxllm.load(tmp_path)
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= 1e-4


def test_the_head_stays_float32_in_a_bfloat16_model(tmp_path):
    reference.build(ARCH, tmp_path, seed=4)
    model = jaxllm.load(tmp_path, dtype="bfloat16")
    assert model.params["lm_head"]["kernel"].dtype == jnp.float32
    assert model.params["model"]["layers"][0]["attn_hc"]["fn"].dtype == jnp.float32
    assert model.params["model"]["embed_tokens"]["embedding"].dtype == jnp.bfloat16


TINY = dict(registry.get(ARCH).tiny_config, model_type="hy_v4")


@pytest.mark.parametrize("change, message", [
    (dict(indexer_types=["shared", "full", "full", "shared"]), r"indexer_types .* the first full"),
    (dict(indexer_types=["full", "shared"]), r"indexer_types .* each of the 4 layers"),
    (dict(hc_mult=0), r"hc_mult"),
    (dict(mlp_layer_types=["dense", "moe", "sparse", "sparse"]), r"mlp_layer_types"),
    (dict(index_head_dim=4), r"index_head_dim=4 is narrower than qk_rope_head_dim=8"),
], ids=["shared-first", "indexer-count", "no-streams", "mlp-type", "index-dim"])
def test_configs_transformers_cannot_run_are_refused(change, message):
    with pytest.raises(ConfigError, match=message) as info:
        loader.plan(json.loads(json.dumps(dict(TINY, **change))))
    assert "\n" not in str(info.value)
