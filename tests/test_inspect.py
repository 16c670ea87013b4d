"""`python -m jaxllm.inspect`: reports a checkpoint without loading it, and finds what is wrong."""

import numpy as np
import reference
from safetensors.numpy import load_file, save_file

from jaxllm import inspect as jinspect


def test_report_of_a_good_checkpoint(tmp_path, capsys):
    ref = reference.build("Qwen3MoeForCausalLM", tmp_path)
    assert jinspect.main([str(tmp_path), "--batch", "2", "--context", "64"]) == 0
    out = capsys.readouterr().out
    assert "Qwen3MoeForCausalLM" in out and "6 experts, top 2" in out
    count = sum(p.numel() for p in ref.parameters())
    assert f"parameters    {count:,}" in out
    assert "batch 2 x 64 tokens" in out and "match the weight map" in out and "note" not in out
    positions = ref.config.max_position_embeddings
    assert jinspect.main([str(tmp_path), "--context", str(positions + 1)]) == 0
    assert f"beyond the {positions:,} positions this model serves" in capsys.readouterr().out


def test_report_lists_every_problem(tmp_path, capsys):
    reference.build("LlamaForCausalLM", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = np.ones(7, np.float32)
    tensors["model.layers.0.extra.weight"] = np.ones(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    assert jinspect.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "3 problems" in out
    assert "missing model.layers.1.mlp.up_proj.weight (expected shape [96, 64])" in out
    assert "model.norm.weight has shape [7], expected [64]" in out
    assert "unexpected model.layers.0.extra.weight" in out


def test_list_and_bad_input(tmp_path, capsys):
    assert jinspect.main(["--list"]) == 0
    assert "Phi3ForCausalLM" in capsys.readouterr().out
    assert jinspect.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no such file or folder") and "\n" not in err


def test_a_quantized_folder_counts_its_parameters_not_its_scales(tmp_path, capsys):
    """A folder converted with --quantize reports the model's parameter count, as its source does:
    the scales and offsets beside the quantized kernels are storage, not parameters."""
    from jaxllm.convert import convert

    ref = reference.build("LlamaForCausalLM", tmp_path / "hf")
    count = sum(p.numel() for p in ref.parameters())
    for quantize in ("int8", "int4"):
        convert(tmp_path / "hf", tmp_path / quantize, quantize=quantize, progress=False)
        assert jinspect.main([str(tmp_path / quantize)]) == 0
        out = capsys.readouterr().out
        assert f"parameters    {count:,} " in out, out


def test_a_tensor_that_is_not_float_is_a_problem_as_load_says(tmp_path, capsys):
    """A bool or integer tensor where a float weight belongs: inspect reports it (exit 1) in the
    words `jaxllm.load` refuses it with, rather than saying everything matches."""
    import pytest

    import jaxllm

    reference.build("LlamaForCausalLM", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.norm.weight"] = np.ones(64, np.bool_)
    tensors["model.layers.0.input_layernorm.weight"] = np.ones(64, np.int64)
    save_file(tensors, tmp_path / "model.safetensors")
    assert jinspect.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 problems" in out and "match the weight map" not in out
    assert "tensor model.norm.weight holds bool values where a float weight belongs" in out
    assert "tensor model.layers.0.input_layernorm.weight holds int64 values where a float weight belongs" in out
    with pytest.raises(jaxllm.CheckpointError, match="holds int64 values where a float weight belongs") as err:
        jaxllm.load(tmp_path, tokenizer=False)
    assert "holds bool values" in str(err.value) and "\n" not in str(err.value)


def test_scan_of_damaged_data_prints_the_header_report_then_the_error(tmp_path, capsys):
    """--scan on a converted folder whose data files are damaged: the report of the headers (all
    there is to know without the data) comes first, then the one-line error of the scan (exit 2)."""
    from jaxllm.convert import convert

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "damaged", progress=False)
    for data in (tmp_path / "damaged" / "params").rglob("d/*"):
        data.write_bytes(data.read_bytes()[:50])
    assert jinspect.main([str(tmp_path / "damaged"), "--scan"]) == 2
    captured = capsys.readouterr()
    assert "architecture  LlamaForCausalLM" in captured.out and "match the weight map" in captured.out
    assert "values" not in captured.out
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("error: could not read the parameters") and "convert again" in err[-1]
