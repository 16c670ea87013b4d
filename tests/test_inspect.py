"""`python -m jaxllm.inspect`: reports a checkpoint without loading it, and finds what is wrong."""

import json

import numpy as np
import reference
from safetensors.numpy import load_file, save_file

from jaxllm import inspect as jinspect
from jaxllm.loader import estimate_memory, plan


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


def test_memory_estimate_follows_the_quantize_and_kv_dtype_flags(tmp_path, capsys):
    """--quantize, --group-size, --quantize-embeddings and --kv-dtype (generate's, serve's, convert's
    flags) change the memory lines as jaxllm.load would hold the model: the bytes estimate_memory
    gives for those arguments, weights smaller int8 -> int4 -> with int8 tables, the KV cache
    smaller in int8; bad combinations are one-line errors in the flags' terms."""
    ref = reference.build("LlamaForCausalLM", tmp_path)
    cfg = plan(json.loads((tmp_path / "config.json").read_text())).config

    def memory(*flags):
        assert jinspect.main([str(tmp_path), "--batch", "2", "--context", "64", *flags]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("memory ")]
        return {line.split()[1]: line for line in lines}

    kernels = sum(p.numel() for name, p in ref.named_parameters() if name.endswith("proj.weight"))
    sizes = {}
    for flags, load in [((), {}), (("--quantize", "int8"), dict(quantize="int8")),
                        (("--quantize", "int4"), dict(quantize="int4")),
                        (("--quantize", "int4", "--group-size", "16"), dict(quantize="int4", group_size=16)),
                        (("--quantize", "int4", "--quantize-embeddings"), dict(quantize="int4", quantize_embeddings=True)),
                        (("--kv-dtype", "int8"), dict(kv_dtype="int8"))]:
        lines = memory(*flags)
        for dtype in ("bfloat16", "float32"):
            m = estimate_memory(cfg, 2, 64, dtype, **load)
            total = m["params_bytes"] + m["kv_cache_bytes"]
            expected = f"weights {jinspect._size(m['params_bytes'])} + KV cache {jinspect._size(m['kv_cache_bytes'])}"
            assert expected in lines[dtype] and lines[dtype].endswith(f"= {jinspect._size(total)}"), (flags, lines[dtype])
        sizes[flags] = estimate_memory(cfg, 2, 64, "bfloat16", **load)
    (base, int8, int4, int4_g16, tables, kv8) = sizes.values()
    # int8 keeps a byte per kernel value where bfloat16 keeps two, a scale per 128 inputs (64 here) beside it
    assert 0.9 * kernels < base["params_bytes"] - int8["params_bytes"] < kernels
    assert int8["params_bytes"] > int4["params_bytes"] > tables["params_bytes"]
    assert int4_g16["params_bytes"] > int4["params_bytes"]  # more groups: more scales
    assert 0.5 * base["kv_cache_bytes"] < kv8["kv_cache_bytes"] < 0.6 * base["kv_cache_bytes"]
    assert "weights int4, embeddings int8" in memory("--quantize", "int4", "--quantize-embeddings")["bfloat16"]

    for flags, said in [(["--quantize-embeddings"], "--quantize-embeddings goes with --quantize"),
                        (["--group-size", "16"], "--group-size goes with --quantize"),
                        (["--quantize", "gguf"], "this checkpoint is not a GGUF file")]:
        assert jinspect.main([str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and said in err and "\n" not in err, err
