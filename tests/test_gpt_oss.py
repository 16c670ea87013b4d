"""gpt-oss's MXFP4 checkpoints (the Hub's: expert weights as `*_blocks` / `*_scales`, config.json
quantization_config quant_method "mxfp4"): dequantized as they load, bit for bit as transformers'
own dequantization (transformers.integrations.mxfp4, used here only), through the whole model, and
written back as floats by `convert --to-hf`. The float model's parity, generation, engine and MoE
tests are the generic ones (tests/test_parity.py, test_generation.py, test_engine.py, test_moe.py)."""

import json

import numpy as np
import pytest
import reference
import torch
from safetensors.numpy import load_file, save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

import jaxllm
from jaxllm.convert import convert
from jaxllm.engine import Engine
from jaxllm.errors import CheckpointError, ConfigError
from jaxllm.models import mxfp4

ARCH = "GptOssForCausalLM"
TOKENS = np.random.default_rng(2).integers(0, 128, (2, 12))


def _theirs(blocks, scales, dtype):
    return convert_moe_packed_tensors(torch.as_tensor(blocks), torch.as_tensor(scales), dtype=dtype).float().numpy()


def test_dequantize_equals_transformers_for_every_code_and_scale():
    """Every e2m1 code in both nibbles and every e8m0 scale byte but 255 (NaN in the format),
    float32 and bfloat16, expert by expert and transposed to [X, in, out] as transformers does."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 5, 17, 16), dtype=np.uint8)
    blocks[0, 0, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every byte: both nibbles' codes
    scales = np.resize(np.arange(255, dtype=np.uint8), (3, 5, 17))
    for ours_dtype, theirs_dtype in ((np.float32, torch.float32), (np.dtype("bfloat16"), torch.bfloat16)):
        got = mxfp4.mxfp4_dequantize(blocks, scales, ours_dtype)
        want = _theirs(blocks, scales, theirs_dtype)
        assert got.shape == want.shape == (3, 17 * 32, 5)
        np.testing.assert_array_equal(got.astype(np.float32).view(np.uint32), want.view(np.uint32))  # bits, signed zeros too


def _pack(rng, experts, rows, inputs):
    """Random MXFP4 blocks [X, rows, inputs / 32, 16] and scales (2 ** -7 .. 2 ** 0, the range
    trained weights fall in)."""
    blocks = rng.integers(0, 256, (experts, rows, inputs // 32, 16), dtype=np.uint8)
    scales = rng.integers(127 - 7, 128, (experts, rows, inputs // 32), dtype=np.uint8)
    return blocks, scales


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A tiny gpt-oss saved as the Hub saves it (experts as MXFP4, the rest float), the torch
    model given transformers' dequantization of those experts, and the packed tensors."""
    folder = tmp_path_factory.mktemp("gpt_oss_mxfp4")
    ref = reference.build(ARCH, folder, seed=4)
    tensors = load_file(folder / "model.safetensors")
    rng, packed = np.random.default_rng(1), {}
    for i, layer in enumerate(ref.model.layers):
        experts = layer.mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            x, inputs, rows = getattr(experts, name).shape
            blocks, scales = _pack(rng, x, rows, inputs)
            hf = f"model.layers.{i}.mlp.experts.{name}"
            del tensors[hf]
            tensors[hf + "_blocks"], tensors[hf + "_scales"] = blocks, scales
            packed[hf] = (blocks, scales)
            with torch.no_grad():
                getattr(experts, name).copy_(torch.as_tensor(_theirs(blocks, scales, torch.float32)))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                     "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, ref, packed


def test_packed_checkpoint_loads_bit_exact_and_matches_transformers(packed):
    """Each expert stack (gate: the even columns of gate_up_proj, up: the odd ones) equals
    transformers' dequantization bit for bit, in float32 and bfloat16; the logits equal the torch
    model's with those dequantized experts (1e-4)."""
    folder, ref, tensors = packed
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = jaxllm.load(folder, dtype=dtype)
        for i in range(model.config.num_layers):
            mlp = model.params["model"]["layers"][i]["mlp"]
            gate_up = _theirs(*tensors[f"model.layers.{i}.mlp.experts.gate_up_proj"], torch_dtype)
            down = _theirs(*tensors[f"model.layers.{i}.mlp.experts.down_proj"], torch_dtype)
            for ours, theirs in ((mlp["gate_proj"], gate_up[..., 0::2]), (mlp["up_proj"], gate_up[..., 1::2]),
                                 (mlp["down_proj"], down)):
                assert ours[...].dtype == np.dtype(dtype)
                np.testing.assert_array_equal(np.asarray(ours[...], np.float32), theirs)
    model = jaxllm.load(folder)
    err = reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS))
    print(f"gpt-oss MXFP4 checkpoint: logits max rel diff {err:.1e}")
    assert err <= 1e-4


def test_to_hf_writes_the_experts_as_floats(packed, tmp_path):
    """convert --to-hf of a packed checkpoint: float expert tensors (the dequantized values, no
    *_blocks / *_scales) and no quantization_config; it loads to the same logits."""
    folder, _, tensors = packed
    convert(folder, tmp_path / "orbax", progress=False)
    convert(tmp_path / "orbax", tmp_path / "hf", to_hf=True, progress=False)
    written = load_file(tmp_path / "hf" / "model.safetensors")
    assert not [n for n in written if n.endswith(("_blocks", "_scales"))]
    np.testing.assert_array_equal(written["model.layers.0.mlp.experts.down_proj"],
                                  _theirs(*tensors["model.layers.0.mlp.experts.down_proj"], torch.float32))
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    np.testing.assert_array_equal(np.asarray(jaxllm.load(tmp_path / "hf").logits(TOKENS)),
                                  np.asarray(jaxllm.load(folder).logits(TOKENS)))


def test_bad_mxfp4_files_are_one_line_errors(packed, tmp_path):
    """Blocks and scales that do not pair up, and an MXFP4 quantization_config on a family whose
    checkpoints are never packed, are refused in one line."""
    folder, _, _ = packed
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.experts.down_proj_scales"] = tensors["model.layers.1.mlp.experts.down_proj_scales"][:, :3]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"^MXFP4 tensors model\.layers\.1\.mlp\.experts\.down_proj_blocks .* do not pair up"):
        jaxllm.load(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mixtral", architectures=["MixtralForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"quantization_config \(quant_method 'mxfp4'\): jaxllm reads float"):
        jaxllm.load(tmp_path)


def test_engine_runs_sink_layers_by_the_xla_forms_whatever_the_platform_says(packed):
    """An engine asked for cuDNN kernels runs a model with sinks by the XLA forms (no cuDNN call
    takes a sink), so a decode step reads a bucket of the keys in use, not the page table's span."""
    folder, _, _ = packed
    engine = Engine(jaxllm.load(folder), batch_size=2, max_len=4096, page_size=16, attention="cudnn")
    assert engine.runner.attention == "xla"
    assert engine.runner.decode_keys(40) == 256
