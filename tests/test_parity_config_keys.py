"""Reference parity of config.json keys left out or set to null: each is read as the family's transformers
config class reads it (its default, or its refusal, in one line), compared by the scalars and tensor shapes
each side builds."""

import copy
import functools
import json

import pytest
import reference  # noqa: F401 - its registrations: the causal-LM classes of Emu3's and Mllama's text configs

from jaxllm.errors import ConfigError
from jaxllm.models import registry
from jaxllm.models.mamba import MAMBA_POSITIONS


def test_gemma3_text_config_of_model_type_alone_reads_as_gemma3_text_config_does():
    """Every key left to Gemma3TextConfig's defaults, the shapes and token ids among them: a
    multimodal checkpoint's text_config (google/gemma-3-4b-it's) holds only the keys whose values
    differ from them, as transformers saves a nested config."""
    import transformers

    cfg, hf = registry.get("Gemma3ForCausalLM").config({"model_type": "gemma3_text"}), transformers.Gemma3TextConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.sliding_window, list(cfg.layer_types), cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (
        hf.vocab_size, hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads,
        hf.head_dim, hf.sliding_window, hf.layer_types, hf.bos_token_id, (hf.eos_token_id,), hf.pad_token_id)


@functools.lru_cache(maxsize=4)
def _hf_config_of(model_type: str, text: str):
    """The family's transformers config of config.json text `text`, built once for the tests that each read it.
    config_class(**d) is what from_dict(d) does without keyword arguments, less its log line's repr of the whole
    config (a third of the null-key test's time)."""
    import transformers

    return transformers.CONFIG_MAPPING[model_type](**json.loads(text))


def _hf_config(arch, raw: dict):
    return _hf_config_of(arch.hf_model_type, json.dumps(raw, sort_keys=True))


def _as_transformers_reads(arch, raw: dict) -> dict:
    """What the family's transformers config class makes of config.json `raw`, in ModelConfig's terms."""
    hf = _hf_config(arch, raw)
    kind = arch.hf_model_type
    act = {"openai-gpt": "afn", "gpt_neo": "activation_function", "falcon": "activation", "gpt2": "activation_function", "gpt_bigcode": "activation_function", "gptj": "activation_function", "codegen": "activation_function",
           "opt": "activation_function", "xglm": "activation_function", "jetmoe": "activation_function", "gemma2": "hidden_activation", "vaultgemma": "hidden_activation", "gemma3_text": "hidden_activation",
           "gemma4_text": "hidden_activation", "gemma4_unified_text": "hidden_activation", "gemma3n_text": "hidden_activation",
           "nemotron_h": "mlp_hidden_act", "recurrent_gemma": "hidden_activation", "modernbert-decoder": "hidden_activation"}.get(kind, "hidden_act")
    eps = {"gpt_neo": "layer_norm_epsilon", "nemotron": "norm_eps", "falcon": "layer_norm_epsilon", "gpt2": "layer_norm_epsilon", "openai-gpt": "layer_norm_epsilon", "ctrl": "layer_norm_epsilon", "gpt_bigcode": "layer_norm_epsilon", "gptj": "layer_norm_epsilon", "codegen": "layer_norm_epsilon", "gpt_neox": "layer_norm_eps", "gpt_neox_japanese": "layer_norm_eps", "phi": "layer_norm_eps", "stablelm": "layer_norm_eps", "persimmon": "layer_norm_eps",
           "starcoder2": "norm_epsilon", "bloom": "layer_norm_epsilon", "mpt": "layer_norm_epsilon",
           "cohere": "layer_norm_eps", "cohere2": "layer_norm_eps", "cohere_compass_text": "layer_norm_eps", "jais2": "layer_norm_eps", "lfm2": "norm_eps", "lfm2_moe": "norm_eps", "lfm3": "norm_eps",
           "mamba": "layer_norm_epsilon", "falcon_mamba": "layer_norm_epsilon", "nemotron_h": "layer_norm_epsilon",
           "mamba2": "layer_norm_epsilon", "rwkv": "layer_norm_epsilon", "xlstm": "norm_eps",
           "modernbert-decoder": "norm_eps"}.get(kind, "rms_norm_eps")
    # nn.LayerNorm's 1e-5, whatever the config says; Dory's unit norms' 1e-6 (DoryConfig has no epsilon)
    fixed_eps = {"olmo": 1e-5, "opt": 1e-5, "biogpt": 1e-5, "xglm": 1e-5, "dbrx": 1e-5, "dory": 1e-6}.get(kind)
    # ALiBi families: BLOOM's has no length (jaxllm's 2,048 positions are its context alone), MPT's bias table max_seq_len;
    # their MLPs hard-wire the activation (BloomGelu's tanh form, MptMLP's exact GELU; LFM2's silu)
    # Mamba's, Mamba2's, RecurrentGemma's and xLSTM's: none (its positions bound nothing; jaxllm's MAMBA_POSITIONS bound its requests)
    positions = ({"bloom": 2048, "mpt": getattr(hf, "max_seq_len", None), "mamba": MAMBA_POSITIONS, "falcon_mamba": MAMBA_POSITIONS,
                  "mamba2": MAMBA_POSITIONS, "recurrent_gemma": MAMBA_POSITIONS, "xlstm": MAMBA_POSITIONS}.get(kind)
                 or getattr(hf, "max_position_embeddings", None))
    hard_act = {"ctrl": "relu", "bloom": "gelu_pytorch_tanh", "mpt": "gelu", "lfm2": "silu", "lfm2_moe": "silu", "lfm3": "silu", "rwkv": "relu2",
                "xlstm": "silu", "ergo": "relu2"}
    act_of = hard_act.get(kind) or (hf.ffn_config.ffn_act_fn["name"] if kind == "dbrx" else getattr(hf, act))
    if kind == "openai-gpt":  # its afn names modeling_openai.ACT_FNS' functions
        act_of = {"gelu": "gelu_new", "swish": "silu"}.get(hf.afn, hf.afn)
    if kind == "cohere2_moe":  # RMSNorms of rms_norm_eps where it is set, else LayerNorms of layer_norm_eps
        eps = "rms_norm_eps" if hf.rms_norm_eps is not None else "layer_norm_eps"
    # ErgoForCausalLM ties no weights (no _tied_weights_keys), and ErgoConfig has no tie_word_embeddings field
    tied = False if kind == "ergo" else hf.tie_word_embeddings
    out = dict(max_position_embeddings=positions, norm_eps=fixed_eps or getattr(hf, eps), tie_word_embeddings=tied, hidden_act=act_of)
    if kind == "gemma" and out["hidden_act"] == "gelu":  # GemmaMLP's legacy mapping
        out["hidden_act"] = "gelu_pytorch_tanh"
    if kind in ("gptj", "codegen"):
        out["rope_theta"] = 10000.0  # GPT-J's and CodeGen's fixed base
    elif kind not in ("gpt2", "openai-gpt", "ctrl", "gpt_bigcode", "gpt_neo", "opt", "biogpt", "xglm", "bloom", "mpt", "mamba", "falcon_mamba",
                      "jamba", "nemotron_h", "mamba2", "kimi_linear", "rwkv", "xlstm", "zamba"):
        rope = hf.rope_parameters
        # per layer type (Zaya's full layers: "hybrid"; a null entry: no rotary positions on those layers, Cohere Compass'
        # full ones, then the sliding's)
        out["rope_theta"] = (rope.get("full_attention", rope.get("hybrid", rope)) or rope["sliding_attention"])["rope_theta"]
    return out


def _as_jaxllm_reads(arch, raw: dict) -> dict:
    cfg = arch.config(dict(raw))
    eps = cfg.norm_eps if cfg.final_norm_eps is None else cfg.final_norm_eps  # the config's epsilon (CTRL's: the final norm's)
    out = dict(max_position_embeddings=cfg.max_position_embeddings, norm_eps=eps,
               tie_word_embeddings=cfg.tie_word_embeddings, hidden_act=cfg.hidden_act)
    if cfg.position_embedding == "rope":
        out["rope_theta"] = cfg.rope.theta
    return out


LEFT_OUT = ("max_position_embeddings", "n_positions", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon",
            "tie_word_embeddings", "rope_theta", "rope_parameters", "hidden_act", "hidden_activation", "activation_function")


@pytest.mark.parametrize("arch", registry.names())
def test_keys_left_out_read_as_the_transformers_config_class_does(arch):
    """Each optional key a family's config.json may leave out takes the family's transformers default
    (Mistral's 131,072 positions, Gemma's tied embeddings, Phi-3's 1e-5 epsilon, ...)."""
    spec = registry.get(arch)
    full = dict(spec.tiny_config, model_type=spec.hf_model_type)
    for key in [k for k in LEFT_OUT if k in full]:
        raw = {k: v for k, v in full.items() if k != key}
        try:
            ours = _as_jaxllm_reads(spec, raw)
        except ConfigError as err:  # only where transformers cannot build the model either (Cohere Compass without its ropes)
            assert isinstance(_transformers_layout(spec, raw), Exception), f"{arch} without {key}: jaxllm refuses ({err})"
            assert "\n" not in str(err)
            continue
        assert ours == pytest.approx(_as_transformers_reads(spec, raw)), f"{arch} without {key}"


def _transformers_layout(arch, raw: dict):
    """{tensor name: shape} of the model transformers builds from config.json `raw`, or the
    exception its config class or model construction raises."""
    import warnings

    import transformers

    try:
        with warnings.catch_warnings():  # a deprecation warning (rope_scaling: null) is no refusal
            warnings.simplefilter("ignore")
            config_class = transformers.CONFIG_MAPPING[arch.hf_model_type]
            hf = _hf_config(arch, raw)
            key = _built_from(config_class, hf)
            if key not in _HF_LAYOUTS:
                _HF_LAYOUTS[key] = _built_layout(hf)
    except Exception as err:  # noqa: BLE001 - any refusal of transformers' is one we must match
        return err
    return _HF_LAYOUTS[key]


def _built_layout(hf) -> dict:
    """{tensor name: shape} of the model transformers builds from config `hf` (on the meta device: no weights)."""
    import torch
    import transformers

    with torch.device("meta"):  # (a copy: from_config sets the config's dtype, and _hf_config keeps it)
        model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(hf))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


_HF_LAYOUTS, _LAYOUTS, _ATTRIBUTES, _UNNAMED, _WORDS = {}, {}, {}, {}, {}


def _source_words(modules) -> set[str]:
    """Every word (letters, digits and underscores) of the named modules' source: each name their code can read a config key by."""
    import inspect
    import re
    import sys

    for m in modules:
        if m not in _WORDS:
            try:
                _WORDS[m] = set(re.findall(r"\w+", inspect.getsource(sys.modules[m])))
            except (OSError, TypeError):  # no source file: what its code names cannot be known, so no key is unnamed
                raise AssertionError(f"no source for {m}: the keys its code names cannot be read") from None
    return set().union(*(_WORDS[m] for m in modules))


def _shared_words() -> set[str]:
    """Every word of transformers' code outside its model families' packages (models/): every .py file, the ones
    imported lazily or not at all in this process too."""
    import pathlib
    import re

    import transformers

    if "" not in _WORDS:
        root = pathlib.Path(transformers.__file__).parent
        _WORDS[""] = set().union(*(set(re.findall(r"\w+", path.read_text())) for path in root.rglob("*.py")
                                   if path.relative_to(root).parts[0] != "models"))
    return _WORDS[""]


def _imported(roots) -> set[str]:
    """The transformers modules `roots` and, transitively, every transformers module they import a name from."""
    import sys
    import types

    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for value in vars(sys.modules[m]).values():
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.split(".")[0] == "transformers" and name in sys.modules:
                todo.append(name)
    return seen


def _unnamed(arch) -> list[str]:
    """The NULLABLE keys the family's tiny config leaves out and that no code of transformers' that builds its config
    or model names: not its config class (nor its defaults), not its modeling code, not any module either imports
    from (transitively), nor any of transformers' code outside models/. Given as null, such a key is only set as an
    attribute that nothing reads, so transformers' side of it is the tiny config's (which the null-key test shows by
    building that once with all of them null at once)."""
    import transformers

    if arch.name not in _UNNAMED:
        config_class = transformers.CONFIG_MAPPING[arch.hf_model_type]
        model_class = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[config_class]
        named = (set(config_class().to_dict()) | _shared_words()
                 | _source_words(_imported([config_class.__module__, model_class.__module__])))
        _UNNAMED[arch.name] = [k for k in NULLABLE if k not in named and k not in arch.tiny_config]
    return _UNNAMED[arch.name]


def _built_from(config_class, hf) -> str:
    """What transformers' model construction may read of config `hf`, as one key for the layouts
    already built: its attributes, less those that are None and that neither its config class
    defines nor its modeling code or transformers' shared modeling and rope code names (a key of
    another family set to null, which nothing building this family's model reads)."""
    import transformers

    if config_class not in _ATTRIBUTES:
        model_class = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[config_class]
        _ATTRIBUTES[config_class] = set(config_class().to_dict()) | _source_words((
            model_class.__module__, "transformers.modeling_utils", "transformers.modeling_rope_utils", "transformers.configuration_utils"))
    known = _ATTRIBUTES[config_class]
    return json.dumps({k: v for k, v in hf.to_dict().items() if k in known or v is not None}, sort_keys=True, default=str)


def _jaxllm_layout(raw: dict):
    """{tensor name: shape} jaxllm reads for config.json `raw`, or its ConfigError."""
    from jaxllm import loader
    from jaxllm.errors import ConfigError
    from jaxllm.models import weights

    try:
        raw = json.loads(json.dumps(raw))
        arch = registry.architecture_of(raw)
        cfg = arch.config(raw)
        if repr(cfg) not in _LAYOUTS:  # the module is a function of its ModelConfig: built once per distinct one
            _, abstract = loader.abstract_model(cfg, arch, loader.resolve_dtype("float32"))
            shapes = {path: leaf.shape for path, leaf in weights.flat_params(abstract).items()}
            _LAYOUTS[repr(cfg)] = weights.hf_layout(arch.weight_map(cfg), shapes)
    except ConfigError as err:
        return err
    return _LAYOUTS[repr(cfg)]


def _forward_fails(arch, raw: dict) -> bool:
    """Whether transformers' model of config.json `raw` fails in its forward pass (a null it builds
    a model of but cannot run)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(_hf_config(arch, raw)), attn_implementation="eager")
    try:
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    except Exception:  # noqa: BLE001 - any failure: transformers cannot run it
        return True
    return False


NULLABLE = [k for k in __import__("jaxllm.models.config_fields", fromlist=["CONFIG_FIELDS"]).CONFIG_FIELDS
            if k not in ("architectures", "model_type", "dtype", "torch_dtype", "eos_token_id", "bos_token_id", "pad_token_id")]


# Null keys transformers' config class takes and its model builds with, but whose forward fails (a
# TypeError multiplying by None): GraniteMoE's multipliers (a null attention_multiplier runs under
# sdpa alone, as head_dim ** -0.5, and fails under eager attention); jaxllm refuses them in one line.
# ModernBERT-decoder's null local_attention: a window of -1, whose mask fails every length but 3 (_forward_fails' prompt).
BUILT_NOT_RUN = {(arch, key) for arch in ("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM")
                 for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")} | {
    ("ModernBertDecoderForCausalLM", "local_attention")}


# A null context length DbrxConfig, KimiLinearConfig and BailingHybridConfig take (int | None) and leave unbounded (their positions need
# none), RwkvConfig through its alias of context_length; jaxllm sizes its engine by it and refuses the null in one line.
UNBOUNDED = ({("DbrxForCausalLM", key) for key in ("max_seq_len", "max_position_embeddings")}
             | {("KimiLinearForCausalLM", "model_max_length"), ("BailingHybridForCausalLM", "model_max_length"),
                ("RwkvForCausalLM", "max_position_embeddings")})


@pytest.mark.parametrize("arch", registry.names())
def test_a_null_key_reads_as_transformers_reads_it(arch):
    """Each config.json key set to null: where the family's transformers config class (or its model
    construction) refuses it, jaxllm refuses it in one line; where it takes a default, jaxllm takes
    the same (tensor shapes and the scalars of _as_transformers_reads)."""
    from jaxllm.models.config_fields import CONFIG_FIELDS

    spec = registry.get(arch)
    base = dict(spec.tiny_config, model_type=spec.hf_model_type)
    unnamed = _unnamed(spec)
    # transformers' side of a key no code of its names (_unnamed): the tiny config's, built once; shown by building
    # the config and the model with every such key null at once (not through _HF_LAYOUTS, whose key leaves them out)
    as_built = _transformers_layout(spec, base), _as_transformers_reads(spec, base)
    if unnamed:
        all_null = dict(base, **dict.fromkeys(unnamed))
        assert (_built_layout(_hf_config(spec, all_null)), _as_transformers_reads(spec, all_null)) == as_built, f"{arch}: these keys, null, change transformers' model: {unnamed}"
    for key in NULLABLE:
        raw = dict(base, **{key: None})
        theirs, ours = as_built[0] if key in unnamed else _transformers_layout(spec, raw), _jaxllm_layout(raw)
        if isinstance(theirs, Exception):
            assert isinstance(ours, Exception), f"{arch} {key}=null: transformers refuses ({theirs!r:.120}), jaxllm reads it"
            assert "\n" not in str(ours) and key in str(ours), f"{arch} {key}=null: {ours}"
            continue
        if isinstance(ours, Exception) and (not CONFIG_FIELDS[key].null or key == "sliding_window" or (arch, key) in BUILT_NOT_RUN | UNBOUNDED
                                          or _forward_fails(spec, raw)):
            continue  # null refused for every family (a key some family reads with a default for absent only); a
            # null window under Gemma 2/3's sliding layers, which transformers builds but cannot run (a TypeError in forward);
            # a null transformers builds a model of but cannot run (Cohere's layer_norm_eps)
        assert not isinstance(ours, Exception), f"{arch} {key}=null: transformers reads it, jaxllm refuses: {ours}"
        assert {n: s for n, s in ours.items() if n in theirs} == {n: theirs[n] for n in ours if n in theirs}, f"{arch} {key}=null"
        their_reads = as_built[1] if key in unnamed else _as_transformers_reads(spec, raw)
        assert _as_jaxllm_reads(spec, raw) == pytest.approx(their_reads), f"{arch} {key}=null"
