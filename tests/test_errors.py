"""Bad input gets one clear line naming the problem and the fix."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import reference

import jaxllm
from jaxllm.errors import CheckpointError, ConfigError, InputError
from jaxllm.models.config_reading import from_hf

BASE = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2)


@pytest.mark.parametrize("change, message", [
    (dict(num_key_value_heads=3), "num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    (dict(hidden_size=18), "hidden_size=18 is not divisible by num_attention_heads=4: set 'head_dim'"),
    (dict(rope_scaling={"rope_type": "ntk-by-parts", "factor": 2}), "rope type 'ntk-by-parts' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 2}), "needs 'low_freq_factor'"),
    (dict(vocab_size=None), "config.json has no 'vocab_size'"),
    (dict(num_hidden_layers=0), "'num_hidden_layers' must be a positive integer"),
    (dict(layer_types=["full_attention"] * 2), "2 layer_types for 1 layers"),
    (dict(layer_types=["sliding_attention"]), "sets no 'sliding_window'"),
])
def test_config_validation(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_hf(dict(BASE, **change), "LlamaForCausalLM")


def test_config_reads_both_eos_spellings():
    assert from_hf(dict(BASE, eos_token_id=[2, 7]), "X").eos_token_ids == (2, 7)
    assert from_hf(dict(BASE, eos_token_id=2), "X").eos_token_ids == (2,)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    reference.build("LlamaForCausalLM", folder)
    return folder


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_path():
    with pytest.raises(CheckpointError, match="no such file or folder: './nowhere'"):
        jaxllm.load("./nowhere")


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found"):
        jaxllm.load(tmp_path)


def test_malformed_config(tmp_path, good):
    folder = _copy(good, tmp_path / "m")
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(ConfigError, match=r"is not valid JSON \(line 1"):
        jaxllm.load(folder)


def test_unknown_architecture(tmp_path, good):
    folder = _copy(good, tmp_path / "u")
    raw = json.loads((folder / "config.json").read_text())
    raw["architectures"] = ["FancyNewForCausalLM"]
    del raw["model_type"]  # with it, the family is model_type's (as in transformers), whatever architectures says
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="'FancyNewForCausalLM' is not supported; supported: .*LlamaForCausalLM"):
        jaxllm.load(folder)


def test_tensor_problems_are_reported_together(tmp_path, good):
    from safetensors.numpy import load_file, save_file

    folder = _copy(good, tmp_path / "t")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
    tensors["model.extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        jaxllm.load(folder)
    text = str(info.value)
    assert "\n" not in text
    assert "3 problems" in text
    assert "missing model.layers.0.mlp.up_proj.weight (expected shape [96, 64])" in text
    assert "model.layers.1.self_attn.k_proj.weight has shape [3, 64], expected [32, 64]" in text
    assert "unexpected model.extra.weight" in text


def test_no_safetensors(tmp_path, good):
    folder = tmp_path / "n"
    folder.mkdir()
    (folder / "config.json").write_bytes((good / "config.json").read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no .safetensors files .*save the model with safetensors"):
        jaxllm.load(folder)


def test_truncated_safetensors(tmp_path, good):
    folder = _copy(good, tmp_path / "c")
    (folder / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        jaxllm.load(folder)


def test_bad_dtype_and_tokens(good):
    with pytest.raises(ConfigError, match="dtype 'int4' is not supported; use one of float32"):
        jaxllm.load(good, dtype="int4")
    model = jaxllm.load(good)
    with pytest.raises(InputError, match=r"token_ids must lie in \[0, 128\)"):
        model.logits([[1, 500]])


def _load_in_subprocess(name, env):
    code = f"import jaxllm; m = jaxllm.load({name!r}); print(m.config.architecture, m.path)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_offline_without_cache(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path), HF_HOME=str(tmp_path))
    out = _load_in_subprocess("someorg/some-model", env)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "could not get 'someorg/some-model' from the Hugging Face hub or its local cache" in last
    assert last.endswith("it is not in the local cache and HF_HUB_OFFLINE is set: unset it, or download the model first")


def test_hub_id_from_local_cache(tmp_path, good):
    """The real hub path (snapshot_download) with the HF cache laid out on disk, offline."""
    snap = tmp_path / "models--someorg--tiny-llama" / "snapshots" / "abc123"
    snap.parent.mkdir(parents=True)
    _copy(good, snap)
    refs = tmp_path / "models--someorg--tiny-llama" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path), HF_HOME=str(tmp_path))
    out = _load_in_subprocess("someorg/tiny-llama", env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LlamaForCausalLM", str(snap)]


def test_prompt_lines_end_at_newlines_only():
    from jaxllm.errors import utf8_lines

    assert utf8_lines("a\u2028b\x0cc\nd\r\n\ne\n".encode(), "x") == ["a\u2028b\x0cc", "d", "", "e"]


class _Template:
    """A tokenizer whose chat template fails while rendering, as `{{ content + 1 }}` does."""

    chat_template = "{{ messages[0]['content'] + 1 }}"

    def apply_chat_template(self, messages, **kwargs):
        raise TypeError('can only concatenate str (not "int") to str')


def test_a_template_that_fails_while_rendering_is_an_input_error():
    from jaxllm.generation import encode_messages

    with pytest.raises(InputError, match=r"the chat template failed on these messages \(TypeError: can only concatenate"):
        encode_messages(_Template(), [{"role": "user", "content": "Hi"}])


def test_text_parts_and_prompt_errors_as_the_api_names_them():
    from jaxllm.api.protocol import Message, bad_request

    assert Message(role="user", content=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]).text() == "One.\nTwo."
    assert bad_request(InputError("prompt holds no token ids: give at least one")).param == "prompt"
    with pytest.raises(jaxllm.GenerationError, match=r"stop=\[''\] is invalid"):
        jaxllm.SamplingParams(stop=[""]).resolved()


def _gated():
    class GatedRepoError(OSError):  # huggingface_hub's is an OSError too (an HTTP error)
        pass

    return GatedRepoError("401 Client Error.\n\nCannot access gated repo for url https://huggingface.co/org/x.")


def _http(kind, status):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/org/x"))
    return getattr(errors, kind)(f"{status} Client Error.", response=response)


@pytest.mark.parametrize("error, says", [
    (_gated, r"Cannot access gated repo .*\); accept the model's licence .* HF_TOKEN\)$"),
    (lambda: _http("RevisionNotFoundError", 404), r"\(RevisionNotFoundError: 404 .*\); the repo has no such branch, tag or commit"),
    (lambda: _http("HfHubHTTPError", 401), r"\(HfHubHTTPError: 401 .*\); the hub refused the credentials: .* HF_TOKEN$"),
    (lambda: __import__("huggingface_hub").errors.IncompleteSnapshotError("1 file(s) are missing", snapshot_path="/x"),
     r"its cached copy is incomplete \(an interrupted download\): .*hf download org/x"),
    (lambda: OSError(28, "No space left on device"), r"\(OSError: \[Errno 28\] No space left on device\); the disk is full"),
])
def test_hub_errors_name_their_fix(monkeypatch, error, says):
    import huggingface_hub

    from jaxllm import checkpoint

    def failing(*args, **kwargs):
        raise error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setattr(checkpoint, "_unreachable", lambda repo_id, revision: None, raising=False)  # it answered
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match=says) as err:
        checkpoint.resolve("org/x")
    assert len(str(err.value).splitlines()) == 1


def test_hub_fetches_only_the_shards_the_index_names(tmp_path):
    from jaxllm import checkpoint

    assert checkpoint._hub_weights(tmp_path) == ["*.safetensors"]  # no index: every .safetensors file
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c":
                            "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint._hub_weights(tmp_path) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_token_ids_in_an_object_array_are_ids_when_whole():
    """A numpy object array of whole numbers (what a list mixing Python and numpy ints, or a pandas
    column, gives) is ids like a list of them; one holding a float, a bool or a number beyond int64
    is refused naming what it holds."""
    from jaxllm.errors import check_token_ids

    for value in (np.array([1, 2], dtype=object), np.array([[np.int64(3), 4]], dtype=object)):
        got = check_token_ids(value, 10)
        assert got.dtype == np.int32 and got.tolist() == np.asarray(value, np.int64).tolist()
    assert check_token_ids(np.array([], dtype=object), 10).shape == (0,)
    with pytest.raises(InputError, match=r"must lie in \[0, 10\).* it holds 12 at 1"):
        check_token_ids(np.array([1, 12], dtype=object), 10)
    with pytest.raises(InputError, match=r"must lie in \[0, 10\).* it holds 1180591620717411303424"):
        check_token_ids(np.array([1, 2**70], dtype=object), 10)
    for bad in (np.array([1, 2.5], dtype=object), np.array([1, True], dtype=object), np.array([1, "a"], dtype=object)):
        with pytest.raises(InputError, match="values that are not whole numbers"):
            check_token_ids(bad, 10)
