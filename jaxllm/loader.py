"""`jaxllm.load`, what it returns (LoadedModel), and the one path every entry point takes before it
reads a weight:

    prepare(path or hub id)  resolve the files and read config.json (jaxllm.checkpoint)
      -> plan(raw config)    architecture (jaxllm.models.registry) -> ModelConfig -> abstract module
                             (shapes only, no memory) -> shardings on the mesh (jaxllm.sharding)
    Plan.check()             every missing, unexpected or mis-shaped tensor, in one error
    Plan.read()              the parameters, streamed one tensor at a time onto their shards

`load`, `python -m jaxllm.convert` and `python -m jaxllm.inspect` start from a checkpoint
(`prepare`); random-weight models (jaxllm.random_model) from a config dict (`plan`).

Quantized weights (`quantize="int8" | "int4" | "gguf"`, models/quant.py): `plan` builds the module
with integer kernels and scales (`quant.apply`), each kernel's scheme decided by
jaxllm.load_quantized, and the read quantizes each kernel on the host as it streams in. A GGUF
file's Q8_0 / Q4_0 / Q4_1 blocks are taken as they are (int8 / int4 groups of 32 with the file's
float16 scales, bit-exact: load_quantized.read_gguf_blocks) when the mode asks for their width; a
converted folder restores the integers it saved, or (converted from float weights) quantizes each
kernel on the host as it restores it, as from the original checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import checkpoint, converted, generation, gguf, research, sharding
from jaxllm.errors import CheckpointError, ConfigError, InputError, check_prompt_ids
from jaxllm.load_quantized import quantization, read_gguf_blocks, table_schemes, uniform
from jaxllm.models import experts, quant, registry, weights
from jaxllm.models.architecture import Architecture
from jaxllm.models.attention import check_kv_dtype, kv_cache_bytes
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import check_eos, token_ids
from jaxllm.sampling import SamplingParams

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
QUANTIZE = ("int8", "int4", "gguf")  # gguf: a GGUF file's own Q8_0 / Q4_0 / Q4_1 blocks, other tensors float


def resolve_dtype(dtype) -> Any:
    try:
        name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    except TypeError:  # not a dtype at all (5, a list, ...)
        raise ConfigError(f"dtype {dtype!r} is not a dtype; use one of {', '.join(DTYPES)}"[:300]) from None
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}' is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_kv_dtype(kv_dtype) -> str | None:
    """The KV cache dtype's canonical name (None: the model's dtype), checked as the engine checks
    it (models/attention.py), so a bad value fails before anything is loaded."""
    return check_kv_dtype(kv_dtype)


@dataclass
class LoadedModel:
    """A loaded checkpoint. `params` is an nnx.State pytree; `nnx.merge(graphdef, params)` gives
    the module back, and `module` does it for you."""

    config: ModelConfig
    graphdef: Any
    params: Any
    tokenizer: Any = None
    generation_config: dict = field(default_factory=dict)
    path: Path | None = None
    mesh: Any = None
    engines: dict = field(default_factory=dict, repr=False)  # generation's engines, reused by shape
    quantize: str | None = None  # "int8", "int4" or "gguf" when the weights are quantized (models/quant.py)
    kv_dtype: str | None = None  # the engine's KV cache dtype; None: the model's dtype
    speculative_tokens: int = 0  # the engine's drafted tokens (Engine speculative_tokens; the command lines' flag sets it)

    @property
    def module(self):
        return nnx.merge(self.graphdef, self.params)

    @property
    def dtype(self):
        """The dtype the model computes in: its float parameters' (quantized kernels and their scales
        and offsets aside: a GGUF block's are float16 in a float32 or bfloat16 model)."""
        flat = weights.flat_params(self.params)
        scales = quant.scale_paths(path for path, x in flat.items() if quant.is_quantized(x.dtype))
        return next(x.dtype for path, x in flat.items() if path not in scales and jnp.issubdtype(x.dtype, jnp.floating))

    def generate(self, prompts: str | Sequence, params: SamplingParams | None = None, *, chat: bool | None = None,
                 system: str | None = None, chat_template_kwargs: dict | None = None, engine=None, on_text: Callable[[int, str], None] | None = None,
                 on_token: Callable[[int, list[int]], None] | None = None,
                 on_finish: Callable[[int, generation.Completion], None] | None = None, **settings):
        """Generate for one prompt (returns a Completion) or a list of prompts (a list of them).
        `params`: jaxllm.SamplingParams (or a dict of its fields); its fields may also be given as keyword
        arguments (`model.generate(prompt, max_new_tokens=64, temperature=0.7)`), which set them over `params`.

        A prompt is a string (the chat template applied when the tokenizer has one, unless
        chat=False; `system` a system turn before it, `chat_template_kwargs` variables the template
        reads, e.g. {"enable_thinking": False}) or a list of token ids. Unset SamplingParams fields come from the checkpoint's
        generation_config.json. Pass an `engine` (jaxllm.Engine) to choose its size; without one
        an engine fitted to the request is made. `on_text(index, text)` receives text as it
        becomes final, `on_token(index, ids)` token ids as they arrive (those the answer keeps: none past a stop string),
        `on_finish(index, completion)` each prompt's Completion as soon as that prompt is done."""
        if settings:
            params = SamplingParams.of(params, **settings)
        return generation.generate(self, prompts, params, chat=chat, system=system, chat_template_kwargs=chat_template_kwargs, engine=engine,
                                   on_text=on_text, on_token=on_token, on_finish=on_finish)

    def logits(self, token_ids, *, attention_mask=None) -> jax.Array:
        """Full-sequence scoring without a cache: int [batch, seq] -> float32 [batch, seq, vocab]. Each of
        these methods also takes one sequence [seq] and then returns its results without the batch axis,
        and a padded batch with `attention_mask` (the ids' shape, 1 at tokens, 0 at padding, as
        transformers takes it): a row's results at its tokens are then those of the row alone
        (jaxllm.research says how)."""
        return self._run("logits", token_ids, attention_mask=attention_mask)

    def token_logprobs(self, token_ids, *, attention_mask=None) -> jax.Array:
        """log p(token t | tokens before t) for t >= 1: float32 [batch, seq - 1] (0 where token t or
        t - 1 is padding)."""
        return self._run("token_logprobs", token_ids, attention_mask=attention_mask)

    def hidden_states(self, token_ids, *, attention_mask=None) -> tuple[jax.Array, ...]:
        """num_layers + 1 arrays [batch, seq, hidden]: each layer's input, then the final normed
        output (transformers' `output_hidden_states`; Gemma 3n's [streams, batch, seq, hidden], AltUp's copies,
        the last the last layer's output, as transformers records them)."""
        return self._run("hidden_states", token_ids, attention_mask=attention_mask)

    def attention_weights(self, token_ids, layer: int, *, attention_mask=None) -> jax.Array:
        """Attention weights of one layer, float32 [batch, heads, seq, seq] (query rows, key columns)."""
        return self._run("attention_weights", token_ids, research.check_layer(self.config.num_layers, layer),
                         attention_mask=attention_mask)

    def _run(self, name: str, token_ids, *static, attention_mask=None):
        if isinstance(token_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
            raise InputError(f"model.{name} checks its token ids on the host, so it cannot be traced (jax.jit, vmap, grad): "
                             f"trace jaxllm.research.{name}(model.graphdef, model.params, tokens{', layer' if static else ''}) instead")
        tokens = check_prompt_ids(token_ids, self.config)
        if tokens.ndim not in (1, 2) or tokens.shape[-1] == 0:  # one sequence [seq]: results without the batch axis
            raise InputError(f"token_ids must be [batch, seq] or [seq] with seq >= 1, got shape {tuple(tokens.shape)}")
        mask = {}  # none passed without one: the same compiled call as research.jitted(name)(graphdef, params, ids)
        if attention_mask is not None:  # its shape and dtype are checked with the ids' (jaxllm.research), its values here
            array = research.as_array(attention_mask, "attention_mask")
            research.check_mask_values(array)
            mask["attention_mask"] = sharding.put_replicated(array, self.mesh)
        return research.jitted(name, self.mesh)(self.graphdef, self.params, sharding.put_replicated(tokens, self.mesh), *static, **mask)


def abstract_model(cfg: ModelConfig, arch: Architecture, dtype, scheme_for=None, mesh=None, tables=None):
    """(graphdef, abstract state): the module's structure with shapes, without allocating weights.
    `scheme_for(path)` -> quant.Scheme or None: which layers are quantized, and how (quant.apply);
    `tables` the same for the token embedding and output head (None: float).
    `mesh`: the Mesh the model is placed on (its MoE blocks run their experts split as the rules say)."""
    module = arch.module(cfg, dtype=dtype, rngs=nnx.Rngs(0))  # parameters are ShapeDtypeStructs (layers.param)
    if scheme_for is not None or tables is not None:
        quant.apply(module, scheme_for, tables)
    experts.split_experts(module, mesh, sharding.RULES["expert"])
    return nnx.split(module)


def memory(cfg: ModelConfig, abstract, batch: int, length: int, dtype, kv_dtype=None) -> dict[str, int]:
    """Bytes of the parameters (from the abstract module; int4 packed two to a byte) and of a KV
    cache holding `batch` sequences of `length` tokens (in `kv_dtype`, scales included; None: the
    model's `dtype`)."""
    params = sum(quant.bytes_of(x) for x in jax.tree.leaves(abstract))
    return {"params_bytes": int(params), "kv_cache_bytes": kv_cache_bytes(cfg, batch * length, dtype, kv_dtype)}


def estimate_memory(cfg: ModelConfig, batch: int, length: int, dtype="bfloat16", quantize=None,
                    group_size=None, kv_dtype=None, quantize_embeddings: bool = False) -> dict[str, int]:
    """`memory` of a config in `dtype` (weights quantized by `quantize`), before anything is allocated."""
    for name, value in (("batch", batch), ("length", length)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputError(f"estimate_memory {name}={value!r} is invalid: use a whole number >= 1")
    dtype = resolve_dtype(dtype)
    _, abstract = abstract_model(cfg, registry.get(cfg.architecture), dtype, uniform(quant.scheme(quantize, group_size)),
                                 tables=table_schemes(quantize, quantize_embeddings))
    return memory(cfg, abstract, batch, length, dtype, kv_dtype)


@dataclass
class Plan:
    """A model described down to its parameters' shapes and shards, no weight read yet."""

    arch: Architecture
    config: ModelConfig
    dtype: Any
    graphdef: Any
    abstract: Any
    mesh: Any = None
    shardings: dict | None = None  # {parameter path: NamedSharding} on the mesh
    source: Any = None  # checkpoint.HFCheckpoint or converted.ConvertedCheckpoint; None for a config alone
    quantize: str | None = None  # the weights' quantization ("int8", "int4", "gguf"), None: float
    native: dict = field(default_factory=dict)  # {kernel path: load_quantized.BlockSource} taken as the file's blocks

    def problems(self) -> list[str]:
        if isinstance(self.source, converted.ConvertedCheckpoint):  # it saved the scales too
            return self.source.problems(self.arch, self.config, self.abstract)
        return self.source.problems(self.arch, self.config, quant.float_state(self.abstract))

    def check(self) -> None:
        """Raise one CheckpointError listing every problem of the checkpoint against the model, and
        what to do about them."""
        found = self.problems()
        if not found:
            return
        path = Path(self.source.path)
        gguf_file = path.is_file()
        weights.raise_problems(found, self.source.size(self.arch, self.config, self.abstract), str(path),
                               "metadata" if gguf_file else "config.json", self._fix(found, gguf_file))

    def _fix(self, found: list[str], gguf_file: bool) -> str:
        """What to do about the problems `found` (each line of a tensor whose dtype is not float
        says its own fix)."""
        if all(weights.FLOAT_ONLY in line for line in found):
            return ""
        if isinstance(self.source, converted.ConvertedCheckpoint):
            return "was its config.json or jaxllm.json edited? convert the original checkpoint again"
        if gguf_file:
            return "the file is damaged or was written wrongly: download or convert it again"
        unexpected = [line.removeprefix("unexpected ") for line in found if line.startswith("unexpected ")]
        quantized = next((n for n in unexpected if n.rsplit(".", 1)[-1] in QUANTIZED_TENSORS), None)
        if quantized is not None:  # GPTQ's quantize_config.json, compressed-tensors' compression_config: no quantization_config
            return (f"{quantized} is a pre-quantized checkpoint's tensor, which jaxllm does not read: use the model's "
                    "unquantized checkpoint (quantize='int8' or 'int4' quantizes it while loading)")
        missing = [line.split(" ", 2)[1] for line in found if line.startswith("missing ")]
        renamed = _renamed(missing, unexpected)
        if renamed is not None:  # transformers leaves such a model's weights random (a warning)
            return (f"the checkpoint names its tensors otherwise ({renamed[0]} where the model reads {renamed[1]}): save them "
                    "under the names the model's transformers class reads, or use the config.json of the model they were saved from")
        fix = ("check that config.json describes these weights (its sizes, num_hidden_layers and architecture) and that "
               "every weight file downloaded whole")
        if not self.config.tie_word_embeddings and any(line.startswith(f"missing {self.arch.head_name} ") for line in found):
            # transformers fills the head with random values (a warning) where the config forgot to tie it
            fix = 'if the output head shares the token embeddings, set "tie_word_embeddings": true in config.json; else ' + fix
        return fix

    def read(self, progress: Callable[[str], None] | None = None):
        """The parameter state, each tensor placed onto its shards."""
        if self.native:
            return read_gguf_blocks(self, progress)
        return self.source.read(self.arch, self.config, self.abstract, self.dtype, self.shardings, progress)

    def memory(self, batch: int, length: int, kv_dtype=None) -> dict[str, int]:
        return memory(self.config, self.abstract, batch, length, self.dtype, kv_dtype)


# The names quantized checkpoints give their tensors' last part: GPTQ / AWQ (qweight, qzeros, scales, g_idx), FP8 and
# compressed-tensors (weight_scale, weight_scale_inv, input_scale, weight_packed, weight_shape, weight_zero_point),
# bitsandbytes (absmax, quant_map, quant_state.bitsandbytes__nf4 / __fp4, SCB, weight_format)
QUANTIZED_TENSORS = ("qweight", "qzeros", "scales", "g_idx", "weight_scale", "weight_scale_inv", "input_scale", "weight_packed",
                     "weight_shape", "weight_zero_point", "absmax", "quant_map", "bitsandbytes__nf4", "bitsandbytes__fp4", "SCB",
                     "weight_format")


def _renamed(missing: list[str], unexpected: list[str]) -> tuple[str, str] | None:
    """(a tensor the checkpoint holds, the name the model reads for it) where every missing tensor is
    held under one other prefix (language_model.model.layers.0... or transformer.layers.0... for
    model.layers.0...), else None."""
    held = set(unexpected)
    for name in unexpected:
        if missing and name != missing[0] and name.endswith(missing[0]):  # a prefix added
            rename = lambda n, extra=name[: -len(missing[0])]: extra + n  # noqa: E731
        elif missing and "." in missing[0] and name.endswith("." + missing[0].partition(".")[2]):  # the first part replaced
            rename = lambda n, head=name[: -len(missing[0].partition(".")[2])]: head + n.partition(".")[2] if "." in n else None  # noqa: E731
        else:
            continue
        if all(rename(n) in held for n in missing):
            return name, missing[0]
    return None


def plan(raw: dict, dtype=None, mesh=None, source=None, *, quantize: str | None = None,
         group_size: int | None = None, quantize_embeddings: bool = False) -> Plan:
    """The Plan of a config.json dict: architecture, ModelConfig, abstract module (quantized as
    `quantize` and `quantize_embeddings` say), shardings."""
    quant.check(quantize, group_size, QUANTIZE)
    quant.check_tables(quantize_embeddings)
    arch = registry.architecture_of(raw)
    cfg = _own_head(arch, arch.config(raw), source)
    dtype = resolve_dtype("float32" if dtype is None else dtype)  # "" refused, not read as unset
    scheme_for, tables, native, quantize = quantization(arch, cfg, source, quantize, group_size, quantize_embeddings)
    if sharding.is_auto(mesh):  # the most devices on tp this model's heads and MLP allow, the rest on dp (ep=1 either way)
        probe = abstract_model(cfg, arch, dtype, scheme_for, tables=tables)[1]
        mesh = sharding.fitting_mesh(lambda m: sharding.param_shardings(probe, m))
    mesh = sharding.make_mesh(mesh) if mesh is not None else None
    graphdef, abstract = abstract_model(cfg, arch, dtype, scheme_for, mesh, tables)
    if native:  # only kernels the module quantizes (not an untied output head, say)
        leaves = weights.flat_params(abstract)
        native = {path: name for path, name in native.items() if quant.is_quantized(leaves[path].dtype)}
    shardings = None
    if mesh is not None:
        shardings = sharding.param_shardings(abstract, mesh)
    return Plan(arch, cfg, dtype, graphdef, abstract, mesh, shardings, source, quantize, native)


def _own_head(arch: Architecture, cfg: ModelConfig, source) -> ModelConfig:
    """`cfg`, untied when its config says tie_word_embeddings but the checkpoint holds an output head
    of its own (values unlike the embeddings'): transformers then keeps the checkpoint's head (the
    config is wrong about the weights, it warns) instead of tying. A converted folder keeps what
    its conversion decided (an lm_head parameter saved)."""
    if not cfg.tie_word_embeddings or source is None:
        return cfg
    if getattr(source, "wrapper", None) is not None:
        source.wrapper.check_tie(arch, arch.weight_map(cfg))
    untied = cfg.replace(tie_word_embeddings=False)
    if isinstance(source, converted.ConvertedCheckpoint):
        saved = converted.read_marker(source.path)["params"]
        return untied if converted.key(("lm_head", "kernel")) in saved else cfg
    specs = arch.weight_map(untied)
    tensors = source.named(arch, specs)
    names = set(tensors.names())
    embed = next(s.hf_name for s in specs if s.path == weights.EMBEDDING)
    if arch.head_name not in names or embed not in names:
        return cfg
    same = weights.same_values(tensors.get(arch.head_name), tensors.get(embed))
    return cfg if same else untied


def open_checkpoint(path_or_id, revision: str | None = None):
    """Resolve a folder, hub id (at `revision`) or .gguf file and read its config; no tensor is read."""
    path = checkpoint.resolve(path_or_id, revision)
    if path.is_file() and checkpoint.is_gguf(path):
        tensors, raw = gguf.open_checkpoint(path)
        return checkpoint.HFCheckpoint(path, raw, {}, tensors)
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is neither a checkpoint folder nor a .gguf file: pass one of those or a hub id")
    if converted.is_converted(path):
        return converted.ConvertedCheckpoint(path)
    ggufs = checkpoint.gguf_files(path)
    if path.suffix.lower() == ".gguf" and not (path / "config.json").exists():  # a folder named x.gguf, not the file
        inside = f"; it holds {', '.join(ggufs[:3])}: pass one of those" if ggufs else ""
        raise CheckpointError(f"'{path}' is a folder, not a .gguf file{inside or ': pass the .gguf file itself'}")
    if ggufs and not (path / "config.json").exists():  # a folder of GGUF files: a file is the checkpoint
        raise CheckpointError(f"'{path}' has no config.json but holds {len(ggufs)} GGUF file{'s' if len(ggufs) > 1 else ''} "
                              f"({', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''}): pass the file, e.g. {path / ggufs[0]}")
    return checkpoint.HFCheckpoint(path, checkpoint.read_config(path), checkpoint.read_generation_config(path))


def prepare(path_or_id, dtype=None, mesh=None, *, quantize: str | None = None, group_size: int | None = None,
            revision: str | None = None, quantize_embeddings: bool = False) -> Plan:
    """The Plan of a checkpoint (folder, hub id, .gguf file or converted folder); `dtype` None:
    the checkpoint's own default (a converted folder's saved dtype, else float32)."""
    quant.check(quantize, group_size, QUANTIZE)  # before any file is opened or downloaded
    quant.check_tables(quantize_embeddings)
    if not isinstance(path_or_id, (str, os.PathLike)) or not str(path_or_id).strip():
        raise InputError(f"path_or_id must be a checkpoint folder, a .gguf file or a hub id (a non-empty string or "
                         f"path), got {type(path_or_id).__name__} {path_or_id!r}"[:300])
    source = open_checkpoint(path_or_id, revision)
    try:
        p = plan(source.raw, source.load_dtype if dtype is None else dtype, mesh, source, quantize=quantize, group_size=group_size,
                 quantize_embeddings=quantize_embeddings)
    except ConfigError as err:  # a GGUF file has no config.json: name the file its fields came from
        path = getattr(source, "path", None)
        if path is None or not checkpoint.is_gguf(Path(path)) or not str(err).startswith("config.json"):
            raise
        what = str(err).removeprefix("config.json ").removesuffix(": correct that field")
        raise ConfigError(f"{Path(path).name}: its metadata, read as config.json fields, is invalid: {what}: "
                          "the file is damaged or was written wrongly") from None
    check_eos(token_ids(source.generation_config.get("eos_token_id")), p.config.vocab_size, "generation_config.json")
    return p


def load(
    path_or_id: str | os.PathLike,
    dtype=None,
    *,
    mesh=None,
    progress: Callable[[str], None] | None = None,
    tokenizer: bool = True,
    quantize: str | None = None,
    group_size: int | None = None,
    kv_dtype=None,
    revision: str | None = None,
    quantize_embeddings: bool = False,
) -> LoadedModel:
    """Load a Hugging Face checkpoint (folder or hub id), a GGUF file, or a folder written by
    `python -m jaxllm.convert`.

    dtype: "float32", "bfloat16" or "float16"; parameters are cast on the host while loading.
    Default: the dtype a converted checkpoint was saved in, else float32.
    mesh: a jax Mesh or a spec string ("tp=4", "dp=2,tp=4", "auto"): parameters are placed
    straight onto their shards by the rules in jaxllm.sharding, and logits and generation run
    sharded. progress(name) is called after each tensor.
    quantize: "int8" (a scale per `group_size` input values, default 128) or "int4" (a scale and
    an offset per `group_size`, default 32): quant.scheme or, for a .gguf file, "gguf" (its own
    Q8_0 / Q4_0 / Q4_1 blocks as int8 / int4 groups of 32, other tensors float). On a GGUF file,
    "int8" takes Q8_0 blocks and "int4" Q4_0 / Q4_1 blocks as they are (groups of 32, whatever
    `group_size` says) and quantizes the other kernels. Norms, biases and MoE routers stay float.
    quantize_embeddings: the token embedding and the output head (one table when tied) in int8
    too, symmetric in groups of 128 along the hidden size, whichever width the other kernels take
    (they are the most sensitive: docs/benchmarks.md); default False keeps them float. A GGUF
    file's Q8_0 tables load as their blocks, bit-exact (under "gguf" any of its blocks). A converted
    folder loads as it was saved: quantized ones as they are (quantize None or their own mode), float
    ones quantized as they are restored (the same weights as quantizing the original checkpoint).
    kv_dtype: the KV cache dtype the engine uses ("int8", "float8_e4m3fn", or a float dtype;
    None: the model's dtype), kept on the LoadedModel.
    revision: for a hub id, the branch, tag or commit hash to load (default: the main branch).
    """
    if not isinstance(tokenizer, (bool, np.bool_)):  # vLLM's tokenizer= is a path: here it would be read as True, unsaid
        raise InputError(f"tokenizer must be True or False (whether to load the checkpoint's own tokenizer), got "
                         f"{type(tokenizer).__name__} {tokenizer!r:.60}: to use another tokenizer, put its files in the "
                         "checkpoint folder, or load with tokenizer=False and set model.tokenizer")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a function taking each tensor's name, or None, got {type(progress).__name__}")
    kv_dtype = resolve_kv_dtype(kv_dtype)
    p = prepare(path_or_id, dtype, mesh, quantize=quantize, group_size=group_size, revision=revision,
                quantize_embeddings=quantize_embeddings)
    check_kv_dtype(kv_dtype, p.config)  # a model without a KV cache: before the weights are read
    p.check()
    tok = checkpoint.load_tokenizer(p.source.path, p.config.vocab_size) if tokenizer else None  # before the weights: a bad one fails fast
    params = p.read(progress)
    return LoadedModel(p.config, p.graphdef, params, tok, p.source.generation_config, p.source.path, p.mesh,
                       quantize=p.quantize, kv_dtype=kv_dtype)


def quantize_model(model: LoadedModel, quantize: str, group_size: int | None = None,
                   quantize_embeddings: bool = False) -> LoadedModel:
    """A quantized copy of a float model already in memory (each kernel read back to the host,
    quantized and placed again, one at a time), for comparing schemes without reading the
    checkpoint again."""
    quant.check(quantize, group_size)
    if quantize is None or model.quantize is not None:
        raise ConfigError("quantize_model takes a float model and quantize='int8' or 'int4'")
    arch = registry.get(model.config.architecture)
    scheme = quant.scheme(quantize, group_size)
    graphdef, abstract = abstract_model(model.config, arch, model.dtype, uniform(scheme), model.mesh,
                                        table_schemes(quantize, quantize_embeddings))
    targets = weights.flat_params(abstract)
    shardings = sharding.param_shardings(abstract, model.mesh) if model.mesh is not None else {}
    filled = {}
    for path, value in weights.flat_params(model.params).items():
        host = np.asarray(value, np.float32) if quant.is_quantized(targets[path].dtype) else np.asarray(value)
        for key, piece in quant.pieces(path, host, targets).items():
            filled[key] = jax.block_until_ready(weights.place(piece, shardings.get(key)))
    params = weights.unflatten_into(abstract, filled)
    return LoadedModel(model.config, graphdef, params, model.tokenizer, model.generation_config, model.path, model.mesh,
                       quantize=quantize, kv_dtype=model.kv_dtype)

