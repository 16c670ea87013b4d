"""The pipelined load (models/weights.load_params): reading threads stay within their host buffer,
give the same parameters as one thread, stop cleanly on a failed read, never leave a parameter
over a file's memory map; the converted folder restored in groups."""

import json
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import jaxllm
from jaxllm import bench_load, checkpoint, converted, loader, safetensors_io
from jaxllm.convert import convert
from jaxllm.errors import CheckpointError
from jaxllm.models import weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    bench_load.write_checkpoint(folder, "tiny", "float32")
    return folder


class Counting:
    """A checkpoint's tensors, counting the bytes read ahead of the placement (progress)."""

    def __init__(self, tensors, fail: str | None = None):
        self.tensors, self.fail, self.lock = tensors, fail, threading.Lock()
        self.read = self.placed = self.most_ahead = self.total = 0

    def names(self):
        return self.tensors.names()

    def shape(self, name):
        return self.tensors.shape(name)

    def get(self, name):
        if name == self.fail:
            raise CheckpointError(f"cannot read {name}")
        x = self.tensors.get(name)
        with self.lock:
            self.read += x.nbytes
            self.most_ahead = max(self.most_ahead, self.read - self.placed)
        return x

    def expect_bytes(self, total):
        self.total = total

    def __call__(self, name, nbytes):
        with self.lock:
            self.placed += nbytes


def _read(folder, source=None, **kw):
    p = loader.prepare(folder, "float32")
    source = source or p.source.tensors
    return weights.load_params(source, p.arch.weight_map(p.config), p.abstract, p.dtype, **kw), p


def test_reading_threads_stay_within_their_buffer_and_match_one_thread(tiny):
    one, p = _read(tiny, threads=1)
    largest = max(x.nbytes for x in jax.tree.leaves(one))
    counting = Counting(p.source.tensors)
    many, _ = _read(tiny, counting, threads=4, buffer_bytes=largest, progress=counting)
    assert counting.most_ahead <= largest  # one tensor at most read and not yet placed
    assert counting.total == counting.placed == sum(x.nbytes for x in jax.tree.leaves(one))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    unbounded = Counting(p.source.tensors)
    _read(tiny, unbounded, threads=4, buffer_bytes=1 << 40, progress=unbounded)
    assert unbounded.most_ahead >= counting.most_ahead


def test_a_failed_read_stops_the_load_and_its_threads(tiny):
    p = loader.prepare(tiny, "float32")
    with pytest.raises(CheckpointError, match="cannot read model.layers.0.mlp.up_proj.weight"):
        _read(tiny, Counting(p.source.tensors, fail="model.layers.0.mlp.up_proj.weight"), threads=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("jaxllm-load")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_parameters_do_not_keep_the_files_mapped(tiny):
    """On a CPU device, jax would alias a read-only array over the file's map: the loader copies
    it, so no parameter faults when the file is replaced, and nothing of the folder stays mapped."""
    model = jaxllm.load(tiny, tokenizer=False)
    jax.block_until_ready(model.params)
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if str(tiny) in line]
    source = checkpoint.SafetensorsCheckpoint(tiny)
    embed = model.params["model"]["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(np.asarray(embed), np.asarray(source.get("model.embed_tokens.weight")))


def test_lazy_tensor_reads_rows_and_refuses_a_truncated_file(tmp_path, tiny):
    source = checkpoint.SafetensorsCheckpoint(tiny)
    x = source.get("model.embed_tokens.weight")
    whole = x.read()
    assert not whole.flags.writeable and whole.shape == x.shape
    np.testing.assert_array_equal(x.read(3, 7), whole[3:7])
    assert x.read(5, 5).shape == (0,) + x.shape[1:]
    copy = tmp_path / "t.safetensors"
    data = (tiny / "model.safetensors").read_bytes()
    copy.write_bytes(data)
    lazy = safetensors_io.SafetensorsFile(copy).get("model.embed_tokens.weight")
    copy.write_bytes(data[: lazy.offset + 10])  # truncated after the header was read
    with pytest.raises(CheckpointError, match="ends early"):
        lazy.read()


@pytest.mark.parametrize("how", ["mapped", "orbax"])
def test_converted_folder_restores_in_groups(tmp_path, tiny, monkeypatch, how):
    """The converted folder's parameters mapped from orbax's files (every one, as `convert` writes
    them), or restored a parameter per orbax call (the fallback's groups, which bound host memory
    on large models): the same parameters as the safetensors load, with progress counting the bytes."""
    convert(tiny, tmp_path / "orbax", progress=False)
    saved = converted.read_marker(tmp_path / "orbax")["params"]
    assert sorted(converted._stored(tmp_path / "orbax", saved)) == sorted(saved)
    if how == "orbax":
        monkeypatch.setattr(converted, "_stored", lambda folder, saved: {})
        monkeypatch.setattr(converted, "RESTORE_GROUP_BYTES", 1)
    counting = Counting(None)
    restored = jaxllm.load(tmp_path / "orbax", tokenizer=False, progress=counting)
    direct = jaxllm.load(tiny, tokenizer=False)
    assert counting.total == counting.placed == sum(x.nbytes for x in jax.tree.leaves(direct.params))
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(direct.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _hub_cache(home, source, repo="org/name", commit="a" * 40, skip=(), main=True):
    """A Hugging Face cache under `home` as huggingface_hub lays it out (blobs, refs/main, a
    snapshot of links to the blobs) holding `source`'s files but `skip`; returns the snapshot."""
    import hashlib
    import os

    repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for f in sorted(source.iterdir()):
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        if f.name not in skip:
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    if main:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and an empty HF cache under tmp_path/hf (huggingface_hub reads both at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


def test_a_cached_snapshot_without_its_weights_is_refused_in_one_line(tmp_path, tiny, offline):
    full = _hub_cache(offline, tiny)
    assert checkpoint.resolve("org/name") == full  # a complete snapshot, offline
    assert jaxllm.load("org/name", tokenizer=False).params is not None
    # An interrupted download: the weights' link dangles over an .incomplete blob, or was never made.
    broken = _hub_cache(offline, tiny, repo="org/broken")
    blob = (broken / "model.safetensors").resolve()
    blob.rename(str(blob) + ".incomplete")
    _hub_cache(offline, tiny, repo="org/configonly", skip=("model.safetensors",))
    for repo, says in [("org/broken", "model.safetensors; 1 .incomplete"), ("org/configonly", "no .safetensors file")]:
        with pytest.raises(CheckpointError) as err:
            checkpoint.resolve(repo)
        message = str(err.value)
        assert f"snapshot of '{repo}'" in message and says in message and f"hf download {repo}" in message, message
        assert len(message.splitlines()) == 1


@pytest.mark.parametrize("in_snapshot, listed, says", [
    ("pytorch_model.bin", [], r"'org/w' has no \.safetensors weights, only PyTorch ones \(pytorch_model\.bin\), which jaxllm does not"),
    (None, ["config.json", "m-Q4_K_M.gguf", "m-Q8_0.gguf"],  # known from huggingface_hub's listing of the repo alone
     r"'org/w' has no \.safetensors weights but GGUF files \(m-Q4_K_M\.gguf, m-Q8_0\.gguf\): download one "
     r"\(hf download org/w m-Q4_K_M\.gguf\) and pass the file's path$"),
])
def test_a_hub_repo_without_safetensors_says_what_it_holds(tiny, offline, monkeypatch, in_snapshot, listed, says):
    """A repo of PyTorch pickles or GGUF files only: not 'download it again' (which fetches the same nothing)."""
    import huggingface_hub

    snapshot = _hub_cache(offline, tiny, repo="org/w", skip=("model.safetensors",))
    if in_snapshot:
        (snapshot / in_snapshot).write_bytes(b"x")
    monkeypatch.setattr(huggingface_hub, "get_cached_repo_tree", lambda repo_id, revision: [SimpleNamespace(path=f) for f in listed],
                        raising=False)
    with pytest.raises(CheckpointError, match=says) as err:
        checkpoint.resolve("org/w")
    assert len(str(err.value).splitlines()) == 1


def test_revision_picks_a_cached_snapshot(tmp_path, tiny, offline):
    """revision= (and --revision) loads a branch, tag or commit hash of a hub repo; a revision
    the cache lacks, or one given with a local folder, is one line."""
    main = _hub_cache(offline, tiny)
    other = _hub_cache(offline, tiny, commit="b" * 40, main=False)
    (other.parent.parent / "refs" / "v2").write_text("b" * 40)
    assert checkpoint.resolve("org/name") == main
    assert checkpoint.resolve("org/name", revision="v2") == other == checkpoint.resolve("org/name", revision="b" * 40)
    assert jaxllm.load("org/name", tokenizer=False, revision="v2").path == other
    with pytest.raises(CheckpointError, match=r"could not get 'org/name' at revision 'v3' from the Hugging Face hub"):
        checkpoint.resolve("org/name", revision="v3")
    with pytest.raises(CheckpointError, match=r"revision='v2' picks a version of a hub repo, but .* is a local folder"):
        jaxllm.load(tiny, revision="v2")
    with pytest.raises(CheckpointError, match="revision must be a branch, tag or commit hash"):
        checkpoint.resolve("org/name", revision="")


def test_hub_id_errors_say_what_to_do(tmp_path, tiny, offline, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(CheckpointError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        checkpoint.resolve("org/nmae")  # a typo, offline
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*args, **kwargs):  # what huggingface_hub raises online without a network or the repo cached
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match=r"not in the local cache and the hub cannot be reached.*hf download org/x"):
        checkpoint.resolve("org/x")
    # A folder named like the hub id, without a checkpoint in it, is not silently taken for the model.
    (tmp_path / "org" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="local folder without config.json, which shadows the hub id 'org/x'"):
        checkpoint.resolve("org/x")
    import shutil

    shutil.copytree(tiny, tmp_path / "org" / "ok")  # ...but one holding a checkpoint is the checkpoint
    assert checkpoint.resolve("org/ok") == Path("org/ok")


@pytest.mark.parametrize("repo, says", [
    ("org/name", None),  # cached: loaded once the hub is given up on
    ("org/other", r"\(ReadTimeout: .*\); it is not in the local cache and the hub cannot be reached.*hf download org/other"),
])
def test_a_hub_that_never_answers_is_given_up_on(tmp_path, tiny, offline, monkeypatch, repo, says):
    """A network that takes connections and answers nothing (a proxy, a firewall): snapshot_download
    waits without a limit (its HTTP client sets none), so jaxllm asks first, as long as HF_HUB_ETAG_TIMEOUT."""
    import socket

    from huggingface_hub import constants

    snapshot = _hub_cache(offline, tiny)
    silent = socket.create_server(("127.0.0.1", 0))  # listens; never accepts, never answers
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.3)
    got = []

    def resolve():
        try:
            got.append(checkpoint.resolve(repo))
        except CheckpointError as err:
            got.append(err)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(15)
    silent.close()
    assert got, "resolve() still waits on a hub that never answers"
    if says is None:
        assert got[0] == snapshot
    else:
        assert isinstance(got[0], CheckpointError) and len(str(got[0]).splitlines()) == 1
        assert re.search(says, str(got[0])), got[0]


def test_attention_weights_checks_its_layer_as_research_does(llama):
    """LoadedModel.attention_weights takes the layer through research.check_layer: a layer traced by a
    jit around the method is refused in one line naming the fix, not by JAX's integer conversion error."""
    from jaxllm.errors import InputError

    with pytest.raises(InputError, match="layer is traced"):
        jax.jit(lambda layer: llama.attention_weights([[1, 2, 3]], layer))(0)
    n = llama.config.num_layers
    with pytest.raises(InputError, match=rf"layer {n} does not exist: this model has layers 0\.\.{n - 1}"):
        llama.attention_weights([[1, 2, 3]], n)


def test_a_converted_folder_without_its_config_named_like_a_hub_id_says_so(tmp_path, monkeypatch):
    """A converted folder (known by its marker) that lost its config.json, given as 'cv/x': the
    missing config.json is named, not the hub id the path happens to look like."""
    import reference

    reference.build("LlamaForCausalLM", tmp_path / "hf", seed=6)
    convert(tmp_path / "hf", tmp_path / "cv" / "x", progress=False)
    (tmp_path / "cv" / "x" / "config.json").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(jaxllm.ConfigError, match=r"config\.json not found at /\S+/cv/x/config\.json") as err:  # its absolute path
        jaxllm.load("cv/x")
    assert "hub" not in str(err.value)


@pytest.mark.parametrize("stored, config, want", [
    ("bfloat16", {"torch_dtype": "auto"}, "bfloat16"),  # transformers' dtype="auto": the weights' own
    ("float16", {"dtype": "auto"}, "float16"),
    ("bfloat16", {}, "bfloat16"),  # older configs say nothing
    ("float16", {"torch_dtype": None}, "float16"),
    ("float16", {"dtype": "bfloat16"}, "bfloat16"),  # config.json's float dtype first, as transformers reads it
    ("float32", {"torch_dtype": "float32", "dtype": "float16"}, "float16"),  # dtype over the older torch_dtype
    ("float64", {}, None),  # no dtype jaxllm computes in: convert's float32
])
def test_the_checkpoint_dtype_is_the_one_transformers_auto_reads(tmp_path, stored, config, want):
    """HFCheckpoint.dtype (what `convert` writes without --dtype: "the dtype the source stores its weights in"): a
    config.json saying "auto", null or nothing read float32 (a bfloat16 model converted at twice its size)."""
    bench_load.write_checkpoint(tmp_path, "tiny", "float32")
    source = safetensors_io.SafetensorsFile(tmp_path / "model.safetensors")
    layout = {n: (source.shape(n), np.dtype(stored) if stored != "bfloat16" else jax.numpy.bfloat16) for n in source.names()}
    arrays = {n: np.asarray(source.get(n)).astype(dtype) for n, (_, dtype) in layout.items()}
    safetensors_io.write_safetensors(tmp_path, layout, arrays.items())
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("torch_dtype")
    (tmp_path / "config.json").write_text(json.dumps(dict(raw, **config)))
    assert loader.open_checkpoint(tmp_path).dtype == want
