"""python -m jaxllm.convert: HF -> orbax -> HF bit-exact, restore onto a mesh, interrupted conversions."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import reference
import torch

import jaxllm
from jaxllm import checkpoint, safetensors_io
from jaxllm.convert import convert, main
from jaxllm.models import registry, weights

TOKENS = np.array([[3, 17, 42, 7, 99, 5, 64, 12]])


def _tensors(folder):
    """{name: numpy array} of every tensor in a safetensors checkpoint folder."""
    source = checkpoint.SafetensorsCheckpoint(folder)
    return {name: np.asarray(source.get(name)) for name in source.names()}


def _expected(folder, arch_name):
    """The source's tensors that the model reads (a tied lm_head and rotary buffers are not)."""
    import re

    p = jaxllm.loader.prepare(folder)
    ignore = [re.compile(pattern) for pattern in p.arch.ignored(p.config)]
    return {k: v for k, v in _tensors(folder).items() if not any(p.match(k) for p in ignore)}


@pytest.mark.parametrize("arch_name", registry.names())
def test_round_trip_is_bit_exact(arch_name, tmp_path):
    """HF (float32) -> orbax -> HF: the same tensor names, shapes, dtypes and bytes."""
    reference.build(arch_name, tmp_path / "hf", seed=3)
    convert(tmp_path / "hf", tmp_path / "orbax", progress=False)
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False)
    want, got = _expected(tmp_path / "hf", arch_name), _tensors(tmp_path / "back")
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name


def test_bfloat16_round_trip_and_transformers_reads_the_export(tmp_path):
    """A bfloat16 checkpoint stays bfloat16 and bit-exact; the exported folder loads in transformers
    with the same logits as the original."""
    model = reference.build("Qwen3ForCausalLM", tmp_path / "f32", seed=4)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "orbax", progress=False)
    assert jaxllm.load(tmp_path / "orbax").params["model"]["norm"]["weight"].dtype == np.dtype("bfloat16")
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False, shard_bytes=200_000)
    assert (tmp_path / "back" / "model.safetensors.index.json").exists()  # sharded export
    want, got = _expected(tmp_path / "hf", "Qwen3ForCausalLM"), _tensors(tmp_path / "back")
    assert sorted(got) == sorted(want)
    assert all(got[k].tobytes() == want[k].tobytes() and got[k].dtype == want[k].dtype for k in want)
    import transformers

    def hf_logits(folder):
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager")
        with torch.no_grad():
            return loaded(torch.as_tensor(TOKENS)).logits

    assert torch.equal(hf_logits(tmp_path / "back"), hf_logits(tmp_path / "hf"))


def test_restore_onto_a_mesh_matches_a_direct_load(tmp_path):
    """Orbax restore onto a 4-device mesh: sharded as the rules say, the same parameters and logits
    as loading the HF folder onto that mesh (bit for bit), and as one device (to rounding)."""
    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=5)
    convert(tmp_path / "hf", tmp_path / "orbax", progress=False)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(1, 1, 4), ("dp", "fsdp", "tp"))
    direct = jaxllm.load(tmp_path / "hf", mesh=mesh)
    restored = jaxllm.load(tmp_path / "orbax", mesh=mesh)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(direct.params)):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = restored.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    assert len(q.sharding.device_set) == 4 and q.sharding.spec[0] == "tp"  # [heads, head_dim, embed]
    assert q.addressable_shards[0].data.shape[0] == q.shape[0] // 4
    np.testing.assert_array_equal(np.asarray(restored.logits(TOKENS)), np.asarray(direct.logits(TOKENS)))
    one_device = jaxllm.load(tmp_path / "hf").logits(TOKENS)
    assert reference.max_rel_diff(restored.logits(TOKENS), one_device) < 1e-5
    # a converted checkpoint can be loaded in another dtype (cast on read) and inspected
    assert jaxllm.load(tmp_path / "orbax", dtype="bfloat16").logits(TOKENS).shape == (1, 8, 128)
    assert restored.tokenizer is None or restored.tokenizer.__class__ is direct.tokenizer.__class__


def test_gguf_converts_with_its_tokenizer(tmp_path, gguf_path):
    """A GGUF file becomes an orbax folder with config and tokenizer, and generates the same text."""
    convert(gguf_path, tmp_path / "orbax", dtype="float32", progress=False)
    assert (tmp_path / "orbax" / "config.json").exists() and (tmp_path / "orbax" / "tokenizer.json").exists()
    model = jaxllm.load(tmp_path / "orbax")
    params = jaxllm.SamplingParams(max_new_tokens=12, temperature=0.0)
    out = model.generate("What is the capital of France?", params)
    assert "Paris" in out.text
    # written back as Hugging Face files, transformers reads them (config.json names its model_type)
    import transformers

    convert(tmp_path / "orbax", tmp_path / "hf", to_hf=True, progress=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rms_norm_eps"] == 1e-05  # the file's float32, as written
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        want = hf(torch.as_tensor(TOKENS)).logits.numpy()
    assert reference.max_rel_diff(model.logits(TOKENS), want) < 1e-4


def test_refuses_to_overwrite_without_force(tmp_path, capsys, monkeypatch):
    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("mine")  # not a folder: --force would not do either, so it is not offered
    for force in ([], ["--force"]):
        assert main([str(tmp_path / "hf"), str(tmp_path / "afile"), *force]) == 2
        err = capsys.readouterr().err
        assert "afile exists and is a file, not a folder: remove it or choose another output" in err and "--force" not in err
    assert (tmp_path / "afile").read_text() == "mine"
    (tmp_path / "afile").unlink()
    assert main([str(tmp_path / "hf"), str(tmp_path / "out"), "--force"]) == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "jaxllm.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main([str(tmp_path / "hf"), str(tmp_path / "one"), "--to-hf", "--shard-size", "1e300"]) == 0  # was an OverflowError
    assert sorted(p.name for p in (tmp_path / "one").glob("*.safetensors")) == ["model.safetensors"]
    assert main([str(tmp_path / "hf"), str(tmp_path), "--force"]) == 2  # would delete its own source
    assert "delete the source" in capsys.readouterr().err and (tmp_path / "hf" / "config.json").exists()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main([str(tmp_path / "hf"), ".", "--force"]) == 2
    assert "is the current folder" in capsys.readouterr().err


def test_force_puts_the_old_output_back_when_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    from pathlib import Path

    from jaxllm import convert as convert_module

    (tmp_path / "new").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    real = Path.rename

    def interrupted(self, target):  # Ctrl-C between moving the old output aside and the new one in
        if self.name == "new":
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_module._finish(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "old"



def test_force_over_a_link_leaves_nothing_behind(tmp_path):
    """--force where DST is a symbolic link to a folder: the link is replaced by the new output, its
    target kept, and no hidden '.out.old-PID' link is left beside it (shutil.rmtree refuses links)."""
    from jaxllm import convert as convert_module

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "made.txt").write_text("new")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("old")
    (tmp_path / "out").symlink_to(tmp_path / "target")
    convert_module._finish(tmp_path / "new", tmp_path / "out")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "made.txt").read_text() == "new"
    assert (tmp_path / "target" / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]


def test_bench_load_refuses_a_converted_folder(tmp_path, capsys):
    """`python -m jaxllm.bench --load-folder` times a Hugging Face folder (its safetensors step,
    then converts it): a converted folder is refused in one line before any step runs; it was
    timed as '0.00 GB in 0 safetensors files', its orbax load shown as the safetensors step."""
    from jaxllm import bench

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "orbax", progress=False)
    capsys.readouterr()
    argv = ["--load-folder", str(tmp_path / "orbax"), "--repeat", "1", "--skip", "cold,transformers",
            "--load-dir", str(tmp_path)]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --load-folder ") and "written by python -m jaxllm.convert" in err and "\n" not in err


def test_a_failed_conversion_leaves_no_folders_it_made(tmp_path, monkeypatch):
    """An exception mid-write into DST whose parent folders did not exist: neither DST nor the
    partial output nor the parent folders the conversion made are left; folders that were there stay."""
    from jaxllm import converted

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    real = converted.save

    def fails(folder, params, meta, shown=None):
        real(folder, params, meta, shown)
        raise RuntimeError("disk gone")

    monkeypatch.setattr(converted, "save", fails)
    (tmp_path / "there").mkdir()
    with pytest.raises(RuntimeError, match="disk gone"):
        convert(tmp_path / "hf", tmp_path / "there" / "new é" / "deeper" / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "there"] and list((tmp_path / "there").iterdir()) == []


def test_other_frameworks_weights_are_not_carried_over(tmp_path):
    """A clone of a hub repo holds the weights for other runtimes too (gpt2's: rust_model.ot and three
    .tflite files, 1.4 GB, beside the ONNX export): the side files carried over are the rest."""
    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    weights = ["rust_model.ot", "64-8bits.tflite", "model.onnx", "model.onnx_data", "flax_model.msgpack", "tf_model.h5"]
    for name in weights + ["README.md", "merges.txt"]:
        (tmp_path / "hf" / name).write_bytes(b"x" * 64)
    convert(tmp_path / "hf", tmp_path / "out", progress=False)
    carried = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"README.md", "merges.txt", "config.json", "jaxllm.json"} <= carried and not carried & set(weights)

def test_bad_inputs_give_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "orbax", progress=False)
    (tmp_path / "orbax" / "config.json").write_text((tmp_path / "orbax" / "config.json").read_text()
                                                    .replace('"hidden_size": 64', '"hidden_size": 32'))
    with pytest.raises(jaxllm.CheckpointError, match="has shape .* expected"):
        jaxllm.load(tmp_path / "orbax")
    assert not (tmp_path / "out").exists()
    # Damaged data files: the one line, and none of the tracebacks that orbax's and tensorstore's
    # reads still in flight leave behind (closed event loop, unawaited coroutines, asyncio's tasks).
    convert(tmp_path / "hf", tmp_path / "damaged", progress=False)
    for data in (tmp_path / "damaged" / "params").rglob("d/*"):
        data.write_bytes(data.read_bytes()[:50])
    code = f"import gc, jaxllm\ntry:\n    jaxllm.load({str(tmp_path / 'damaged')!r})\nexcept jaxllm.CheckpointError as e:\n    print(e)\ngc.collect()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "could not read the parameters" in out.stdout and "convert again" in out.stdout
    assert out.stderr == "", out.stderr[-3000:]


def _big_checkpoint(folder):
    """A random Llama of about 200 MB: big enough that a conversion takes a while."""
    reference.build("LlamaForCausalLM", folder, seed=7, vocab_size=32000, hidden_size=512, intermediate_size=1536,
                    num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)


def _wait_for(predicate, proc, seconds=120):
    end = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("sig, flags", [(signal.SIGKILL, []), (signal.SIGTERM, []), (signal.SIGKILL, ["--to-hf"])])
def test_interrupted_conversion_leaves_nothing_complete_looking(tmp_path, sig, flags):
    """Killed mid-way (SIGKILL: no chance to clean up; SIGTERM: cleans up): DST does not exist, only
    a hidden partial folder may, which loads as no checkpoint either (--to-hf's had config.json and its
    files at full length, zeros where no tensor was written yet: it loaded), `jaxllm.load(DST)` fails,
    and the next conversion succeeds and removes the stale partial output."""
    _big_checkpoint(tmp_path / "hf")
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "jaxllm.convert", str(tmp_path / "hf"), str(dst), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    started = "*.safetensors" if flags else "config.json"  # the first file written
    _wait_for(lambda: any(list(p.glob(started)) for p in tmp_path.glob(".out.partial-*")), proc)
    # Frozen at once (the tensors take ~1.4 s more here), so the signal lands mid-conversion
    # however fast or loaded the machine is; SIGTERM is handled when it resumes.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not dst.exists()
    partial = list(tmp_path.glob(".out.partial-*"))
    assert (partial != []) == (sig == signal.SIGKILL)
    for folder in partial:  # config.json missing (--to-hf) or the marker (orbax: a folder of no weights)
        with pytest.raises((jaxllm.ConfigError, jaxllm.CheckpointError)):
            jaxllm.load(folder, tokenizer=False)
    with pytest.raises(jaxllm.CheckpointError, match="no such file or folder"):
        jaxllm.load(dst)
    convert(tmp_path / "hf", dst, progress=False, to_hf=bool(flags))
    assert list(tmp_path.glob(".out.*")) == []
    assert jaxllm.load(dst, tokenizer=False).config.num_layers == 8


def test_a_hand_edited_marker_is_refused_in_one_line(tmp_path):
    import shutil

    from jaxllm.errors import CheckpointError

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "out", progress=False)
    edits = {"version as text": (lambda m: m.update(version="2"), "version '2', not a whole number"),
             "an entry not a dict": (lambda m: m["params"].update({next(iter(m["params"])): [4, 4]}), "without its 'shape'"),
             "an unknown param dtype": (lambda m: next(iter(m["params"].values())).update(dtype="nope"), "'nope'"),
             "an unknown dtype": (lambda m: m.update(dtype="float8"), "dtype 'float8'")}
    for what, (edit, says) in edits.items():
        folder = tmp_path / what.replace(" ", "_")
        shutil.copytree(tmp_path / "out", folder)
        marker = json.loads((folder / "jaxllm.json").read_text())
        edit(marker)
        (folder / "jaxllm.json").write_text(json.dumps(marker))
        with pytest.raises(CheckpointError) as err:
            jaxllm.load(folder)
        message = str(err.value)
        assert says in message and "jaxllm.json" in message and "re-run python -m jaxllm.convert" in message, what
        assert len(message.splitlines()) == 1
    assert jaxllm.load(tmp_path / "out").logits(TOKENS).shape[:2] == TOKENS.shape  # the unedited folder loads


@pytest.fixture(scope="module")
def int4_folder(tmp_path_factory):
    """A tiny Llama converted with --quantize int4 --quantize-embeddings (int4 kernels with offsets, int8 tables)."""
    tmp = tmp_path_factory.mktemp("int4")
    reference.build("LlamaForCausalLM", tmp / "hf", seed=6)
    convert(tmp / "hf", tmp / "out", progress=False, quantize="int4", quantize_embeddings=True)
    return tmp / "out"


DOWN = "model.layers.0.mlp.down_proj."
QUANTIZED_EDITS = {  # what an edit of a quantized folder's marker did, before it was refused
    "no scale": (lambda p: p.pop(DOWN + "scale"), f"the quantized '{DOWN}kernel' without its scales"),  # integers as floats
    "no scale, no offset": (lambda p: (p.pop(DOWN + "scale"), p.pop(DOWN + "offset")), "without its scales"),  # the same
    "no offset": (lambda p: p.pop(DOWN + "offset"), "holds 'model.layers.0.mlp.down_proj.kernel' as int4 without offsets"),
    "a scale of no groups": (lambda p: [p[DOWN + n].update(shape=[p[DOWN + n]["shape"][0], 0]) for n in ("scale", "offset")],
                             "which does not scale"),  # ZeroDivisionError
    "a scale of no dims": (lambda p: [p[DOWN + n].update(shape=[]) for n in ("scale", "offset")], "which does not scale"),  # IndexError
    "groups not dividing": (lambda p: [p[DOWN + n].update(shape=[p[DOWN + n]["shape"][0], 5]) for n in ("scale", "offset")],
                            "in whole groups"),  # was "group_size 19 does not divide", a setting never given
    "an offset of another shape": (lambda p: p[DOWN + "offset"].update(shape=[1, 1]), "not its scale's"),
    "an integer scale": (lambda p: p[DOWN + "scale"].update(dtype="int8"), "in int8, not a float dtype"),  # scales cast to int8
    "a kernel in uint8": (lambda p: p[DOWN + "kernel"].update(dtype="uint8"), "in uint8, not int8 or int4"),
    "a kernel with no inputs": (lambda p: p[DOWN + "kernel"].update(shape=[p[DOWN + "kernel"]["shape"][0], 0]),
                                "which does not scale"),  # ZeroDivisionError
}


@pytest.mark.parametrize("what", list(QUANTIZED_EDITS) + ["mode int8", "mode int3", "mode a list"])
def test_a_hand_edited_quantized_marker_is_refused_in_one_line(int4_folder, tmp_path, what):
    """The marker's quantized entries are what the model is built from: each inconsistent one is named in one line
    (they loaded wrong values without a word, or failed with a traceback)."""
    import shutil

    from jaxllm.errors import CheckpointError

    folder = tmp_path / "edited"
    shutil.copytree(int4_folder, folder)
    marker = json.loads((folder / "jaxllm.json").read_text())
    if what.startswith("mode"):
        mode = {"mode int8": "int8", "mode int3": "int3", "mode a list": ["int4"]}[what]
        marker["quantize"] = mode
        says = "says quantize 'int8' but holds" if mode == "int8" else "not one of int8, int4, gguf"
    else:
        edit, says = QUANTIZED_EDITS[what]
        edit(marker["params"])
    (folder / "jaxllm.json").write_text(json.dumps(marker))
    for quantize in (None, "int4"):
        with pytest.raises(CheckpointError) as err:
            jaxllm.load(folder, tokenizer=False, quantize=quantize)
        message = str(err.value)
        assert says in message and "jaxllm.json" in message and "re-run python -m jaxllm.convert" in message
        assert len(message.splitlines()) == 1


def test_the_unedited_quantized_folder_loads(int4_folder):
    model = jaxllm.load(int4_folder, tokenizer=False)
    assert model.quantize == "int4" and model.params["model"]["embed_tokens"]["embedding"].dtype == jax.numpy.int8
    assert np.isfinite(np.asarray(model.logits(TOKENS))).all()


@pytest.mark.parametrize("length", [241, 255])
def test_an_output_name_as_long_as_the_system_allows_converts(tmp_path, length):
    """An output name of up to 255 bytes (NAME_MAX): the hidden folders beside it (the partial
    output, the old one --force replaces) fit too, nothing is left beside it, and a stale partial
    output of a killed conversion to it is cleared."""
    from jaxllm import convert as convert_module

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    name = "x" + "é" * ((length - 1) // 2) + "x" * ((length - 1) % 2)  # two-byte characters: cut inside one too
    assert len(os.fsencode(name)) == length
    (tmp_path / "out").mkdir()
    dst = tmp_path / "out" / name
    convert(tmp_path / "hf", dst, progress=False)
    stale = dst.parent / convert_module._hidden(dst, "partial", 2**22 + 1)  # beyond any process id: a dead process's
    stale.mkdir()
    convert(tmp_path / "hf", dst, progress=False, force=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]
    assert jaxllm.load(dst, tokenizer=False).logits(TOKENS).shape[:2] == TOKENS.shape


def _same_params(a, b):
    flat_a, flat_b = weights.flat_params(a.params), weights.flat_params(b.params)
    assert sorted(flat_a) == sorted(flat_b)
    for path, x in flat_a.items():
        y = flat_b[path]
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), path


@pytest.mark.parametrize("arch_name, how", [("LlamaForCausalLM", "mapped"), ("LlamaForCausalLM", "orbax"),
                                            ("Qwen3MoeForCausalLM", "mapped")])
def test_a_converted_float_folder_quantizes_on_load_as_its_source_does(tmp_path, monkeypatch, arch_name, how):
    """quantize= on a folder converted without --quantize: each kernel restored and quantized on the
    host, one at a time, into the same integers, scales and logits as quantizing the source; and
    `convert --quantize` from it writes what converting the source with --quantize writes."""
    from jaxllm import converted
    from jaxllm.convert import main

    reference.build(arch_name, tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "cv", progress=False)
    if how == "orbax":  # the fallback: parameters restored by orbax, a parameter per call
        monkeypatch.setattr(converted, "_stored", lambda folder, saved: {})
        monkeypatch.setattr(converted, "RESTORE_GROUP_BYTES", 1)
    for quantize, group_size in (("int8", None), ("int4", 16)):
        want = jaxllm.load(tmp_path / "hf", quantize=quantize, group_size=group_size, tokenizer=False)
        got = jaxllm.load(tmp_path / "cv", quantize=quantize, group_size=group_size, tokenizer=False)
        assert got.quantize == quantize
        _same_params(got, want)
        np.testing.assert_array_equal(np.asarray(got.logits(TOKENS)), np.asarray(want.logits(TOKENS)))
    if how == "mapped":
        assert main([str(tmp_path / "cv"), str(tmp_path / "q8"), "--quantize", "int8"]) == 0
        back = jaxllm.load(tmp_path / "q8", tokenizer=False)
        assert back.quantize == "int8"
        _same_params(back, jaxllm.load(tmp_path / "hf", quantize="int8", tokenizer=False))


def test_many_small_shards_take_one_file_descriptor_at_a_time(tmp_path):
    """--to-hf with a small --shard-size on a large model: every shard was held open until the last
    tensor was written, so more shards than the process may open failed ('Too many open files',
    reported as a disk problem). Now one is open at a time: 300 shards under a limit of 64."""
    import resource

    layout = {f"t{i}": ((4,), np.float32) for i in range(300)}
    values = {name: np.full(4, i, np.float32) for i, name in enumerate(layout)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        files = safetensors_io.write_safetensors(tmp_path, layout, iter(values.items()), max_shard_bytes=16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(files) == 301 and files[-1] == "model.safetensors.index.json"
    got = _tensors(tmp_path)
    assert sorted(got) == sorted(values) and all(np.array_equal(got[k], v) for k, v in values.items())


@pytest.mark.parametrize("source, flags", [("folder", []), ("hub id", []), ("hub id", ["--to-hf"])])
def test_revision_reaches_the_checkpoint_lookup(tmp_path, capsys, monkeypatch, source, flags):
    """--revision (README's, as generate and inspect take it) was no flag of convert ('unrecognized arguments'): a hub
    id is looked up at that revision (and the marker says which), a local folder is refused in one line."""
    import huggingface_hub

    reference.build("LlamaForCausalLM", tmp_path / "org" / "name", seed=6)
    calls = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(tmp_path / "org" / "name")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path / ("org" if source == "hub id" else "."))  # no local folder shadows the id
    src = "org/name" if source == "hub id" else str(tmp_path / "org" / "name")
    capsys.readouterr()
    code = main([src, str(tmp_path / "out"), "--revision", "v2", *flags])
    err = capsys.readouterr().err.strip()
    if source == "folder":
        assert code == 2 and calls == [] and not (tmp_path / "out").exists()
        assert "--revision 'v2' picks a version of a hub repo" in err and "drop --revision" in err and "\n" not in err
        return
    assert code == 0 and calls and set(calls) == {("org/name", "v2")}, err
    if flags:
        assert _tensors(tmp_path / "out").keys() == _expected(tmp_path / "org" / "name", "LlamaForCausalLM").keys()
    else:
        marker = json.loads((tmp_path / "out" / "jaxllm.json").read_text())
        assert (marker["source"], marker["revision"]) == ("org/name", "v2")


def _tree(folder):
    """{path: bytes, or a link's target} of everything under `folder`: what a refused conversion must leave as it was."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """hf/: a tiny Llama; cv/: it converted."""
    tmp = tmp_path_factory.mktemp("sources")
    reference.build("LlamaForCausalLM", tmp / "hf", seed=6)
    convert(tmp / "hf", tmp / "cv", progress=False)
    return tmp


def _link(target):
    return lambda at: at.symlink_to(target)


OUTPUTS = {  # the output: (source, how it is made under the test's folder, flags, what the one line says)
    "a link to a file": ("hf", lambda at: (at.with_name("f").write_text("x"), at.symlink_to(at.with_name("f"))), ["--force"],
                         "exists and is a file, not a folder"),
    "a link to a folder": ("hf", lambda at: (at.with_name("d").mkdir(), at.symlink_to(at.with_name("d"))), [], "already exists"),
    "a link to nothing": ("hf", _link("nowhere"), [], "a link to nowhere which does not exist"),  # converted, then 'Not a directory'
    "a link to the source": ("hf", lambda at: at.symlink_to(at.with_name("hf")), ["--force"], "holds the source"),
    "a new folder in the source": ("hf", lambda at: None, [], None),  # dst: hf/new below, written
    "a folder inside the source": ("cv", lambda at: None, ["--to-hf", "--force"], "is inside the source"),  # its params/: deleted
    "a folder inside the source, no --force": ("cv", lambda at: None, ["--to-hf"], "already exists"),
    "the source": ("hf", lambda at: None, [], "already exists"),
    "the source, --force": ("hf", lambda at: None, ["--force"], "holds the source"),
}


@pytest.mark.parametrize("what", OUTPUTS)
def test_an_output_that_exists_is_refused_in_one_line(sources, tmp_path, capsys, what):
    """Each output that exists is refused before anything is written, and nothing is changed: --force over a folder
    inside the source deleted that part of it (a converted folder's params/ replaced by the export); a link to nothing
    was converted in full, then refused as 'Not a directory, check the disk'."""
    import shutil

    source, make, flags, says = OUTPUTS[what]
    shutil.copytree(sources / "hf", tmp_path / "hf")
    shutil.copytree(sources / "cv", tmp_path / "cv")
    dst = {"hf": tmp_path / "hf", "cv": tmp_path / "cv" / "params"}[source] if what.startswith(("the source", "a folder inside"))\
        else tmp_path / "hf" / "new" if what == "a new folder in the source" else tmp_path / "out"
    make(dst)
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main([str(tmp_path / source), str(dst), *flags])
    err = capsys.readouterr().err.strip()
    if says is None:  # a new folder: written there, the source as it was and still loads
        assert code == 0 and np.array_equal(jaxllm.load(dst).logits(TOKENS), jaxllm.load(tmp_path / "hf").logits(TOKENS))
        assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith("hf/new")} == before
        return
    assert code == 2 and says in err and "\n" not in err, err
    assert _tree(tmp_path) == before
    assert jaxllm.load(tmp_path / source, tokenizer=False).logits(TOKENS).shape[:2] == TOKENS.shape


def _fails_after(count, error):
    """A wrapper of a function that raises `error` from its `count`-th call on."""
    calls = []

    def wrap(real):
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) >= count:
                raise error
            return real(*args, **kwargs)
        return wrapped
    return wrap


class _FillingFile:
    """A file whose writes fail as on a full disk from the `count`-th on."""

    def __init__(self, f, count):
        self.f, self.count = f, count

    def write(self, data):
        _FillingFile.writes = getattr(_FillingFile, "writes", 0) + 1
        if _FillingFile.writes >= self.count:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _fill_disk(monkeypatch, to_hf):
    """A full disk: --to-hf's third tensor write; orbax's marker, written after the parameters."""
    from pathlib import Path

    if to_hf:
        _FillingFile.writes = 0
        monkeypatch.setattr(safetensors_io, "open", lambda path, mode="r", *a, **k: (
            _FillingFile(open(path, mode, *a, **k), 3) if mode == "r+b" else open(path, mode, *a, **k)), raising=False)
    else:
        real = Path.write_text
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (_ for _ in ()).throw(full) if self.name == "jaxllm.json"
                            else real(self, *a, **k))


def _read_fails(monkeypatch, to_hf):
    """A tensor of the source cannot be read (a damaged disk): orbax, the fourth read (before anything is saved);
    --to-hf, the fourth one exported, three written already."""
    error = OSError(errno.EIO, os.strerror(errno.EIO), "model.safetensors")
    if not to_hf:
        monkeypatch.setattr(safetensors_io.LazyTensor, "read", _fails_after(4, error)(safetensors_io.LazyTensor.read))
        return
    real = weights.export_tensors

    def export_tensors(*args):
        for i, item in enumerate(real(*args)):
            if i == 3:
                raise error
            yield item

    monkeypatch.setattr(weights, "export_tensors", export_tensors)


@pytest.mark.parametrize("to_hf", [False, True], ids=["orbax", "to-hf"])
@pytest.mark.parametrize("failure, says", [(_fill_disk, "the disk is full"), (_read_fails, "cannot read model.safetensors")],
                         ids=["disk full", "read fails"])
def test_a_write_that_fails_midway_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch, capsys, to_hf, failure, says):
    """A full disk or a source read failing after some tensors were written: one line, no DST and no hidden folder beside
    it, and the same conversion run again writes a folder that loads with its source's logits."""
    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    dst, flags = tmp_path / "out", ["--to-hf"] * to_hf
    failure(monkeypatch, to_hf)
    capsys.readouterr()
    assert main([str(tmp_path / "hf"), str(dst), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    monkeypatch.undo()
    assert main([str(tmp_path / "hf"), str(dst), *flags]) == 0
    assert np.array_equal(jaxllm.load(dst).logits(TOKENS), jaxllm.load(tmp_path / "hf").logits(TOKENS))


@pytest.mark.parametrize("moment", ["between the renames", "removing the old output"])
def test_a_killed_force_leaves_the_old_output_or_the_new_one(tmp_path, capsys, moment):
    """--force killed after moving the old output aside (a hidden '.out.old-PID'): the next conversion puts it back
    when the new one had not come in (so DST is not lost, and is refused without --force), and removes it when the
    new one had (it was being removed). It stayed beside DST for good."""
    from jaxllm import convert as convert_module

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "out", progress=False)
    old = tmp_path / convert_module._hidden(tmp_path / "out", "old", 2**22 + 1)  # beyond any process id: a dead one's
    if moment == "between the renames":
        (tmp_path / "out").rename(old)
    else:
        old.mkdir()
        (old / "config.json").write_text("{}")
    capsys.readouterr()
    assert main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]
    assert np.array_equal(jaxllm.load(tmp_path / "out").logits(TOKENS), jaxllm.load(tmp_path / "hf").logits(TOKENS))


ROUND_TRIPS = {  # source: (family (a GGUF file's architecture, lower case), config overrides, --dtype, --mesh)
    "dense": ("LlamaForCausalLM", {}, None, None),
    "dense, bfloat16 onto dp=4,tp=2": ("LlamaForCausalLM", {}, "bfloat16", "dp=4,tp=2"),
    "tied embeddings, float16": ("LlamaForCausalLM", dict(tie_word_embeddings=True), "float16", None),
    "MoE onto dp=2,ep=2,tp=2": ("Qwen3MoeForCausalLM", {}, None, "dp=2,ep=2,tp=2"),
    "GGUF dense": ("llama", {}, "float32", None),
    "GGUF MoE, bfloat16 onto dp=4,tp=2": ("qwen3moe", {}, "bfloat16", "dp=4,tp=2"),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_a_converted_folder_is_its_source(tmp_path, case):
    """Converted with --dtype and --mesh, the folder loads (on one device and onto the mesh) into the parameters and
    logits, bit for bit, of its source loaded in that dtype; exported back (float32), transformers reads the same logits
    as from the source (a Hugging Face one: bit for bit) or as jaxllm's (a GGUF one, which transformers dequantizes)."""
    import transformers
    from test_gguf_reference import write_family

    family, overrides, dtype, mesh = ROUND_TRIPS[case]
    IDS = TOKENS % 96  # noqa: N806 - in the GGUF files' vocabulary too
    if family.islower():
        src = tmp_path / "model.gguf"
        write_family(src, family)
    else:
        src = tmp_path / "hf"
        reference.build(family, src, seed=8, **overrides)
    convert(src, tmp_path / "cv", dtype=dtype, mesh=mesh, progress=False)
    want, got = jaxllm.load(src, dtype=dtype, tokenizer=False), jaxllm.load(tmp_path / "cv", tokenizer=False)
    _same_params(got, want)
    np.testing.assert_array_equal(np.asarray(got.logits(IDS)), np.asarray(want.logits(IDS)))
    if mesh is not None:
        on_mesh = jaxllm.load(tmp_path / "cv", mesh=mesh, tokenizer=False)
        np.testing.assert_array_equal(np.asarray(on_mesh.logits(IDS)),
                                      np.asarray(jaxllm.load(src, dtype=dtype, mesh=mesh, tokenizer=False).logits(IDS)))
    convert(tmp_path / "cv", tmp_path / "back", dtype="float32", to_hf=True, progress=False)

    def hf_logits(folder, **kwargs):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                                                  **kwargs)
        with torch.no_grad():
            return model(torch.as_tensor(IDS)).logits

    back = hf_logits(tmp_path / "back")
    if family.islower():
        assert reference.max_rel_diff(jaxllm.load(tmp_path / "cv", dtype="float32", tokenizer=False).logits(IDS),
                                      back.numpy()) < 1e-4
    elif dtype is None:
        assert torch.equal(back, hf_logits(src))
    else:  # the source's values in --dtype, read back as float32
        source = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
        for p in source.parameters():  # not .to(dtype): the rotary frequencies, a buffer, are float32 in both
            p.data = p.data.to(getattr(torch, dtype)).to(torch.float32)
        with torch.no_grad():
            assert torch.equal(back, source(torch.as_tensor(IDS)).logits)
