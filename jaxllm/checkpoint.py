"""Finding a Hugging Face checkpoint and reading its files: config.json, generation_config.json,
tensors (HFCheckpoint: safetensors here, GGUF through jaxllm.gguf) and the tokenizer. A folder
written by `python -m jaxllm.convert` is read by jaxllm.converted behind the same interface.

Which safetensors files of a folder are the model is decided here (SafetensorsCheckpoint); the
file format itself (headers checked, tensors read lazily, sharded files written) is
jaxllm.safetensors_io.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from functools import cached_property
from pathlib import Path

from jaxllm import gguf_tokenizer
from jaxllm.errors import CheckpointError, ConfigError, DuplicateKey, lone_surrogate, printable, shown, unique_keys
from jaxllm.models import config_fields, mxfp4, registry, weights
from jaxllm.safetensors_io import LazyTensor, SafetensorsFile

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# transformers' one-file checkpoint: where a folder (or hub repo) has it, it is the model, whatever
# else is there (an index and its shards, an adapter, an EMA or consolidated copy)
SAFE_WEIGHTS = "model.safetensors"
_HUB_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "tokenizer*", SAFE_WEIGHTS]  # config, index, tokenizer, templates

MARKER = "jaxllm.json"  # a converted folder's marker (jaxllm.converted): its parameters' tree, shapes and dtypes


def is_converted(path: Path) -> bool:
    """Whether `path` is a folder `python -m jaxllm.convert` wrote (it holds the marker)."""
    return path.is_dir() and os.path.lexists(path / MARKER)  # a broken link too: read_marker names it


def is_gguf(path: Path) -> bool:
    """Whether `path` names a GGUF file by its suffix, in any case (llama.cpp's files are '.gguf'; a
    copy renamed 'MODEL.GGUF' is the same file)."""
    return path.suffix.lower() == ".gguf"


def gguf_files(folder: Path) -> list[str]:
    """The names of the GGUF files in `folder`, sorted."""
    return sorted(p.name for p in folder.iterdir() if is_gguf(p) and p.is_file())


def resolve(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local file or folder as it is; otherwise a hub id, fetched into (or found in) the HF cache,
    at `revision` (a branch, tag or commit hash; default the repo's main branch)."""
    if not str(path_or_id).strip():  # Path('') is '.': the current folder would be read, unasked
        raise CheckpointError("the checkpoint's path or hub id is empty: give a checkpoint folder, a .gguf file or a hub id "
                              "like 'org/name' (for the current folder: '.')")
    path = Path(path_or_id).expanduser()
    text = str(path_or_id)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise CheckpointError(f"revision must be a branch, tag or commit hash of the hub repo (a non-empty string), got {revision!r}")
    try:
        exists = path.exists()
    except OSError as err:  # a name the file system cannot hold (ENAMETOOLONG), ...
        raise CheckpointError(f"'{text[:60]}{'...' if len(text) > 60 else ''}' cannot be a file or folder name here "
                              f"({err.strerror or type(err).__name__}); pass a checkpoint folder, a .gguf file or a hub id "
                              "like 'org/name'") from None
    if exists:
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} picks a version of a hub repo, but '{text}' is a local "
                                  f"{'folder' if path.is_dir() else 'file'}: drop revision, or check out that version there")
        if (_HUB_ID.match(text) and path.is_dir() and not (path / "config.json").exists()
                and not gguf_files(path) and not is_converted(path)):  # a checkpoint: its own errors say what is missing
            raise CheckpointError(f"'{text}' is a local folder without config.json, which shadows the hub id '{text}': "
                                  "to load the hub model run from another folder (or rename this one); to load the "
                                  "folder, add its config.json")
        return path
    if not _HUB_ID.match(text):
        raise CheckpointError(f"no such file or folder: '{text}'; pass a checkpoint folder, a .gguf file or a hub id like 'org/name'")
    # huggingface_hub (and its HTTP client) take ~0.3 s to import: only hub ids pay for it.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    unreachable = _unreachable(text, revision)  # then the cache alone is read, not waited on
    try:
        folder = Path(snapshot_download(text, revision=revision, allow_patterns=_HUB_FILES, local_files_only=bool(unreachable)))
        commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision  # the same snapshot, not asked for again
        folder = Path(snapshot_download(text, revision=commit, allow_patterns=_hub_weights(folder), local_files_only=bool(unreachable)))
    except (OSError, ValueError, EntryNotFoundError, _http_error()) as err:  # offline, unknown or gated repo, network
        if unreachable and type(err).__name__ == "LocalEntryNotFoundError":  # not cached: the hub's silence is why
            err = unreachable
        reason = " ".join(str(err).split()) or type(err).__name__  # every line: the first is often only a status
        at = f" at revision {revision!r}" if revision is not None else ""
        raise CheckpointError(f"could not get '{text}'{at} from the Hugging Face hub or its local cache ({type(err).__name__}: "
                              f"{reason[:300]}); {_hub_fix(err, text)}") from None
    _check_weights_cached(text, folder)
    return folder


def _hub_fix(err: Exception, repo_id: str) -> str:
    """What to do about snapshot_download's error `err` (or the hub's silence, _unreachable's)."""
    kind = type(err).__name__
    status = getattr(getattr(err, "response", None), "status_code", None)
    if kind == "GatedRepoError":
        return "accept the model's licence on its hub page, then log in (hf auth login, or set HF_TOKEN)"
    if kind == "IncompleteSnapshotError":  # 2.x: its cached listing of the repo names files the snapshot lacks
        return (f"its cached copy is incomplete (an interrupted download): download it again with HF_HUB_OFFLINE unset "
                f"and the network up (hf download {repo_id}), or pass a local folder")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "it is not in the local cache and HF_HUB_OFFLINE is set: unset it, or download the model first"
    if isinstance(err, OSError) and getattr(err, "errno", None) == 28:
        return "the disk is full: free space or set HF_HOME to a larger disk"
    if kind == "LocalEntryNotFoundError" or isinstance(err, _transport_error()):  # not cached, the hub unreachable
        return (f"it is not in the local cache and the hub cannot be reached: connect to the network, or download it "
                f"where there is one (hf download {repo_id}) and copy the HF cache here, or pass a local folder")
    if kind == "RevisionNotFoundError":
        return "the repo has no such branch, tag or commit: check the revision (the repo's hub page lists them)"
    if kind == "RepositoryNotFoundError":
        return "no such repo, or a private one: check the id, or log in (hf auth login, or set HF_TOKEN)"
    if status in (401, 403):
        return "the hub refused the credentials: log in again (hf auth login), or check HF_TOKEN"
    return "check the id and your network, or pass a local folder"


def _unreachable(repo_id: str, revision: str | None) -> Exception | None:
    """The error of a hub that does not answer within HF_HUB_ETAG_TIMEOUT (10 s), or None (it answered, or
    HF_HUB_OFFLINE is set). snapshot_download asks the hub with no time limit (its HTTP client sets none):
    a network that swallows requests (a proxy or firewall that never answers) held it, and a load of a
    model in the cache, forever."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except _transport_error() as err:  # no connection, or no answer in time
        return err
    except (OSError, ValueError, _http_error()):  # an answer (401, 404, ...) or a bad id: snapshot_download says which
        return None
    return None


def _check_weights_cached(repo_id: str, folder: Path) -> None:
    """Refuse a cached snapshot without its weights: offline (or with the hub unreachable)
    huggingface_hub returns the snapshot folder as it is, even when a download was interrupted
    (the weights' links missing, or dangling over a removed or `.incomplete` blob)."""
    names = _hub_weights(folder)
    if names == ["*.safetensors"]:
        names = sorted(p.name for p in folder.glob("*.safetensors")) or names
    missing = [n for n in names if not (folder / n).exists()]  # exists() follows the links: False when dangling
    if not missing:
        return
    if missing == ["*.safetensors"]:
        files = _repo_files(repo_id, folder)
        pickles, ggufs = [f for f in files if f.endswith(".bin")], [f for f in files if is_gguf(Path(f))]
        if ggufs:
            raise CheckpointError(f"the hub repo '{repo_id}' has no .safetensors weights but GGUF files ({', '.join(ggufs[:3])}"
                                  f"{', ...' if len(ggufs) > 3 else ''}): download one (hf download {repo_id} {ggufs[0]}) "
                                  "and pass the file's path")
        if pickles:
            raise CheckpointError(f"the hub repo '{repo_id}' has no .safetensors weights, only PyTorch ones ({', '.join(pickles[:3])}), "
                                  "which jaxllm does not read (unpickling them can run code): use a safetensors release of the "
                                  "model, or save it with safetensors (transformers' save_pretrained) and pass the folder")
    partial = list(folder.parent.parent.glob("blobs/*.incomplete"))
    why = (f"{len(partial)} .incomplete download(s) in its blobs/" if partial
           else "an interrupted download, or a repo without safetensors weights")
    raise CheckpointError(f"the Hugging Face cache's snapshot of '{repo_id}' ({folder}) lacks its weights "
                          f"({'no .safetensors file' if missing == ['*.safetensors'] else ', '.join(missing[:3])}; {why}): download it again with HF_HUB_OFFLINE unset and the "
                          f"network up (hf download {repo_id}), or pass a local folder")


def _repo_files(repo_id: str, folder: Path) -> list[str]:
    """The files of the hub repo as far as the cache knows them: its snapshot's, and the listing of the
    whole repo huggingface_hub 2.x keeps beside it (the weights jaxllm did not fetch: .bin, .gguf)."""
    names = {p.name for p in folder.iterdir()}
    try:
        from huggingface_hub import get_cached_repo_tree

        names |= {f.path for f in get_cached_repo_tree(repo_id, revision=folder.name)}
    except Exception:  # noqa: BLE001 - no listing kept (an older huggingface_hub, a cache filled by hand)
        pass
    return sorted(names)


def _hub_weights(folder: Path) -> list[str]:
    """The weight files to fetch (as transformers picks them): model.safetensors where the repo has
    it (fetched with the config; a link, even a dangling one, says so), else the shards the index
    names when there is one (a repo may hold other copies beside them, e.g. Mistral's
    consolidated.safetensors, twice the bytes), else every .safetensors file."""
    if os.path.lexists(folder / SAFE_WEIGHTS):
        return [SAFE_WEIGHTS]
    try:
        weight_map = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(f) for f in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no index, or one the loader will refuse
        return ["*.safetensors"]


def _http_error(kind: str = "HTTPError") -> type:
    """The HTTP client's error class `kind` of the installed huggingface_hub (httpx2 in 2.x, httpx in 1.x;
    older ones raise OSErrors)."""
    for name in ("httpx2", "httpx"):
        try:
            return getattr(importlib.import_module(name), kind)
        except ImportError:
            continue
    return OSError


def _transport_error() -> type:
    """The HTTP client's error of a request that got no answer (no connection, a timeout)."""
    return _http_error("TransportError")


def read_json(path: Path, what: str) -> dict:
    """The JSON object in `path`, or a ConfigError naming the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark ("UTF-8 with BOM": Notepad) is no text
            data = json.load(f, object_pairs_hook=unique_keys)
    except DuplicateKey as err:
        raise ConfigError(f"{what} at {path} gives {err}: keep the one meant") from None
    except FileNotFoundError:  # the absolute path: '.' would name 'config.json' alone
        if path.is_symlink():  # a link whose target is gone (or a download interrupted): not a missing file
            raise ConfigError(f"{what} at {path} is a link to {printable(os.readlink(path))}, which does not exist: "
                              "replace the link with the file") from None
        raise ConfigError(f"{what} not found at {path.absolute()}: a Hugging Face checkpoint folder needs one") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} at {path} is a folder, not a file: replace it with the JSON file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} at {path} is not valid JSON (line {err.lineno}: {err.msg}): fix or replace the file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} at {path} is not UTF-8 text (byte {err.start}): save it as UTF-8 JSON") from None
    except RecursionError:
        raise ConfigError(f"{what} at {path} nests too deeply to be a config: fix or replace the file") from None
    except OSError as err:
        fix = "replace the link with the file" if path.is_symlink() else "check the file"  # a link loop: ELOOP
        raise ConfigError(f"cannot read {what} at {path} ({err.strerror or type(err).__name__}): {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} at {path} must hold a JSON object, not {type(data).__name__}: fix or replace the file")
    return data


def read_config(folder: Path) -> dict:
    """config.json of `folder`, every field the models read checked (jaxllm.models.config_fields.check_config)."""
    return config_fields.check_config(read_json(folder / "config.json", "config.json"), str(folder / "config.json"))


def read_generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    if not os.path.lexists(path):  # a broken link or a link loop is read, and refused by name, not ignored
        return {}
    return config_fields.check_generation_config(read_json(path, "generation_config.json"), str(path))


def _no_weights(folder: Path, index: Path | None) -> str:
    """Why a folder has no safetensors weights to read, and what to do: an empty index, PyTorch's
    pickles, another framework's files, a GGUF file, an unfinished conversion, or nothing at all."""
    if index is not None:
        return f"{index} lists no tensors (its weight_map is empty): re-download the checkpoint's index"
    if (folder / "params").is_dir():  # converted's PARAMS, without the marker written last
        return (f"no .safetensors files in {folder} (its params/ folder without jaxllm.json is an unfinished "
                "`python -m jaxllm.convert`: convert again)")

    def found(*suffixes):  # the names of the folder's files of these kinds, the first few
        names = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(suffixes))
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    if found(".bin"):
        return (f"no .safetensors files in {folder}: it holds PyTorch weights ({found('.bin')}), which jaxllm does not "
                "read (unpickling them can run code): save the model with safetensors (transformers' "
                "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)), or download the repo's .safetensors files")
    if found(".pth", ".pt", ".ckpt"):
        return (f"no .safetensors files in {folder}: it holds {found('.pth', '.pt', '.ckpt')}, a training framework's own "
                "format, not a Hugging Face checkpoint: use the model's Hugging Face release (config.json and .safetensors files)")
    if gguf_files(folder):
        return f"no .safetensors files in {folder}, but a GGUF file: pass the file itself, e.g. {folder / gguf_files(folder)[0]}"
    return (f"no .safetensors files in {folder}: download the model's weights into it (model.safetensors, or "
            "model.safetensors.index.json and the shards it names)")


class SafetensorsCheckpoint:
    """All tensors of a checkpoint folder, from the files transformers reads: model.safetensors alone
    where there is one (an index and shards, an adapter, an EMA or consolidated copy beside it are
    not the model), else the shards model.safetensors.index.json lists, else every .safetensors
    file (one tensor in two of them is refused: neither says which is the model's)."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        # lexists: a broken link or a link loop where a file should be is refused by name (read below), not passed over
        if os.path.lexists(folder / SAFE_WEIGHTS):
            weight_map, files = {}, [SAFE_WEIGHTS]
        elif os.path.lexists(index):
            weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise CheckpointError(f"{index} has no 'weight_map' of tensor names to file names: re-download the checkpoint's index")
            files = sorted(set(weight_map.values()))
            outside = next((f for f in files if os.path.isabs(f) or os.pardir in Path(f).parts), None)
            if outside is not None:  # by name: a hub snapshot's shards are links into its blobs/, outside by target
                raise CheckpointError(f"{index} names shard {outside!r}, outside {folder}: an index names files in its "
                                      "own folder; move the shard into the folder and name it there")
            missing = [f for f in files if not os.path.lexists(folder / f)]  # False, not OSError, for a name too long
            if missing:
                raise CheckpointError(f"{folder} lacks shard(s) {', '.join(shown(f) for f in missing[:3])} named by its "
                                      "index: download them")
        else:
            weight_map, files = {}, sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(_no_weights(folder, index if os.path.lexists(index) else None))
        self.files = [SafetensorsFile(folder / f) for f in files]
        self._where = {}
        for f in self.files:
            for name in f.names():
                first = self._where.get(name)
                if first is not None:  # the file the index names for it; without one the sort order would pick: refused
                    owner = folder / weight_map[name] if name in weight_map else None
                    if owner not in (first.path, f.path):
                        why = ("and its model.safetensors.index.json names neither for it: fix the index, or" if weight_map
                               else "which has neither a model.safetensors.index.json nor a model.safetensors to say which "
                                    "is the model's:")
                        raise CheckpointError(f"tensor {name} is in both {first.path.name} and {f.path.name} in {folder}, "
                                              f"{why} remove the file that is not (an EMA, adapter or consolidated copy)")
                    if owner == first.path:
                        continue
                self._where[name] = f

    def names(self):
        return self._where.keys()

    def shape(self, name):
        return self._where[name].shape(name)

    def dtype(self, name):
        return self._where[name].dtype(name)

    def get(self, name) -> LazyTensor:
        return self._where[name].get(name)


# ----------------------------------------------------------------------------------------------
# The two kinds of checkpoint, and the tokenizer they ship


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class HFCheckpoint:
    """Tensors under Hugging Face names: safetensors files in a folder, or a GGUF file.

    A multimodal checkpoint whose language model we serve (a registered Wrapper's config.json:
    Gemma3ForConditionalGeneration) is read as that text model: `raw` is its text config
    (registry.unwrap; what a conversion writes as config.json), `wrapper` the wrapper, and its
    tensors are read under the text model's names, the other modules' (vision tower) left unread."""

    def __init__(self, path: Path, raw: dict, generation_config: dict, tensors=None):
        raw, self.wrapper = registry.unwrap(raw)
        self.path, self.raw, self.generation_config = path, raw, generation_config
        self._tensors = tensors  # None: the folder's safetensors files, opened on first use
        self.load_dtype = "float32"

    @cached_property
    def dtype(self) -> str | None:
        """The float dtype the checkpoint stores its weights in, as transformers' dtype="auto" picks it:
        config.json's dtype (torch_dtype), else ("auto", left out) the first floating-point tensor's;
        None where that is no float dtype jaxllm computes in, or the tensors tell none (a GGUF file's)."""
        name = self.raw.get("dtype") or self.raw.get("torch_dtype")
        if name in FLOAT_DTYPES:
            return name
        dtypes = (weights.dtype_of(self.tensors, n) for n in self.tensors.names())
        first = next((d for d in dtypes if d is not None and d.name.startswith(("float", "bfloat"))), None)  # float8 too
        return first.name if first is not None and first.name in FLOAT_DTYPES else None

    @cached_property
    def tensors(self):
        """names(), shape(name), get(name) -> lazy tensor."""
        return self._tensors if self._tensors is not None else SafetensorsCheckpoint(self.path)

    def named(self, arch, specs):
        """The tensors under the names the weight map reads (weights.base_model_names; a wrapper's
        text model's, weights.wrapped_names; a tied embedding kept under the head's name,
        weights.tied_names; MXFP4 experts dequantized, mxfp4.mxfp4_names)."""
        specs = list(specs)
        tensors = arch.tensors(self.tensors)
        if config_fields.read_quantized(self.raw) == "mxfp4":
            tensors = mxfp4.mxfp4_names(tensors, specs)
        if self.wrapper is not None:
            tensors = weights.wrapped_names(self.wrapper.tensors(tensors), specs, self.wrapper.text_module, arch.base_prefix,
                                            arch.head_name)
        return weights.tied_names(weights.base_model_names(tensors, specs, arch.base_prefix), specs, arch.head_name)

    def ignored(self, arch, cfg) -> tuple[str, ...]:
        """Regexes of the tensors the model does not read: the architecture's, and a wrapper's other modules'."""
        return arch.ignored(cfg) + (self.wrapper.ignore() if self.wrapper is not None else ())

    def problems(self, arch, cfg, abstract) -> list[str]:
        specs = arch.weight_map(cfg)
        return weights.problems(self.named(arch, specs), specs, abstract, self.ignored(arch, cfg))

    def size(self, arch, cfg, abstract) -> int:
        return len({name for spec in arch.weight_map(cfg) for name in spec.hf_names})

    def read(self, arch, cfg, abstract, dtype, shardings=None, progress=None):
        specs = arch.weight_map(cfg)
        return weights.load_params(self.named(arch, specs), specs, abstract, dtype, shardings, progress)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: Path, vocab_size: int | None = None):
    """The checkpoint's tokenizer (transformers', for its tokenizer and chat template only), or None
    when it ships none. `path` is a folder or a .gguf file. With the model's `vocab_size`, a
    tokenizer of only a few special tokens beside a real vocabulary is refused: transformers builds
    one, silently, from a tokenizer_config.json whose vocabulary file (tokenizer.model) is missing,
    and it encodes text to nothing."""
    path = Path(path)
    if path.is_file():  # GGUF: built from the file's metadata
        return gguf_tokenizer.load_tokenizer(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    if lone_surrogate(str(path)) is not None:  # a name in another system's encoding: the tokenizers library cannot open it
        raise CheckpointError(f"the folder {printable(str(path))} has a name that is not UTF-8 text, which the tokenizers "
                              "library cannot open: rename the folder, or load with tokenizer=False and pass token ids")
    from transformers import AutoTokenizer  # a heavy import, paid only where a tokenizer is loaded

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # the tokenizers library reports a bad file as a bare Exception
        raise CheckpointError(f"the tokenizer in {path} could not be loaded ({type(err).__name__}: {' '.join(str(err).split())[:200]}): "
                              "fix or re-download its tokenizer files") from None
    limit = getattr(tok, "model_max_length", None)  # transformers compares every encoding's length with it
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))):
        raise CheckpointError(f"the tokenizer in {path} has a model_max_length of {shown(limit)}, not a number (transformers "
                              "fails encoding any text with it): correct model_max_length in tokenizer_config.json, or remove it")
    if vocab_size is not None and len(tok) < 32 and len(tok) * 8 < vocab_size:
        present = [f for f in TOKENIZER_FILES if (path / f).exists()]
        raise CheckpointError(f"the tokenizer in {path} holds only {len(tok)} tokens where the model has {vocab_size:,} "
                              f"(its files: {', '.join(present)}): its vocabulary file (tokenizer.json or tokenizer.model) is "
                              "missing: add it from the original checkpoint, or load with tokenizer=False and pass token ids")
    return tok
