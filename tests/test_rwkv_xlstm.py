"""RWKV-4 and xLSTM beyond the per-architecture tests: xLSTM's fused weight layout (transformers 5 cannot build a
fused model: its _init_weights fails on the fused gates' bias), and the options jaxllm refuses in one line."""

import json

import numpy as np
import pytest
import reference
import torch
from safetensors.torch import load_file, save_file

import jaxllm
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOKENS = np.random.default_rng(5).integers(0, 128, (2, 20))
FUSED = {"mlstm_layer.qkv_opreact": ("q", "k", "v", "ogate_preact"), "mlstm_layer.ifgate_preact": ("igate_preact", "fgate_preact"),
         "ffn.proj_up_gate_z": ("proj_up_gate", "proj_up")}


def test_xlstm_fused_layout_reads_as_the_single_one(tmp_path):
    """The tiny model's tensors fused as weight_mode "fused" holds them (rows q|k|v|o, i|f, gate|up, biases alike, as
    xLSTMLayer and xLSTMFeedForward split them): the logits of transformers' model of the single tensors."""
    ref = reference.build("xLSTMForCausalLM", tmp_path, seed=4)
    tensors = load_file(tmp_path / "model.safetensors")
    for i in range(ref.config.num_hidden_layers):
        for fused, parts in FUSED.items():
            base = f"backbone.blocks.{i}.{fused.rsplit('.', 1)[0]}."
            for p in ("weight", "bias"):
                tensors[f"backbone.blocks.{i}.{fused}.{p}"] = torch.cat([tensors.pop(f"{base}{n}.{p}") for n in parts])
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(raw, weight_mode="fused")))
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert model.config.fused_projections
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= 1e-4


@pytest.mark.parametrize("arch, edit, match", [
    ("xLSTMForCausalLM", dict(mode="train"), r"mode 'train' is not supported .*: use 'inference'$"),
    ("xLSTMForCausalLM", dict(inference_state_dtype="bfloat16"), r"inference_state_dtype 'bfloat16' .* use 'float32'$"),
    ("xLSTMForCausalLM", dict(weight_mode="packed"), r"weight_mode 'packed' .* use 'single' or 'fused'$"),
    ("xLSTMForCausalLM", dict(norm_reduction_force_float32=False), r"norm_reduction_force_float32=false is not supported: .*; set it to true"),
    ("xLSTMForCausalLM", dict(embedding_dim=64), r"embedding_dim=64 differs from hidden_size=128"),
    ("xLSTMForCausalLM", dict(num_heads=3), r"qk_dim_factor=0.5 gives .* 64 channels, not a multiple of num_heads=3"),
    ("xLSTMForCausalLM", dict(v_head_dim=32), r"'v_head_dim', which xlstm config cannot set .*: remove it"),
    ("xLSTMForCausalLM", dict(gate_soft_cap=0), r"'gate_soft_cap' must be a positive number"),
    ("RwkvForCausalLM", dict(rescale_every=None), r"'rescale_every' must be an integer, got null"),
    ("RwkvForCausalLM", dict(attention_hidden_size=0), r"'attention_hidden_size' must be a positive integer"),
    ("Qwen3ForCausalLM", dict(layer_types=["mlstm"] * 3), r"asks for mlstm layers, which jaxllm's Qwen3ForCausalLM does not have"),
], ids=["mode", "state-dtype", "weight-mode", "norm-float32", "embedding-dim", "heads", "property", "cap", "rescale", "width",
        "elsewhere"])
def test_unsupported_options_are_refused_in_one_line(arch, edit, match):
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match=match) as info:
        spec.config(dict(spec.tiny_config, model_type=spec.hf_model_type, **edit))
    assert "\n" not in str(info.value)
