"""Architectures by name (config.json's `architectures` spelling) and by transformers' model_type:
the table every model file's `ARCHITECTURES` fills (jaxllm.models collects them). Loading, parity
tests and `--list-models` read this table.
"""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models import ARCHITECTURES
from jaxllm.models.architecture import Architecture, Wrapper
from jaxllm.models.config_fields import check_config

_REGISTRY: dict[str, Architecture] = {}
for _arch in ARCHITECTURES:
    if _arch.name in _REGISTRY:
        raise ValueError(f"architecture {_arch.name} declared twice")
    _REGISTRY[_arch.name] = _arch
_BY_MODEL_TYPE = {kind: arch for arch in _REGISTRY.values() for kind in (arch.hf_model_type, *arch.hf_aliases)}
_WRAPPERS: dict[str, Wrapper] = {}
for _arch in _REGISTRY.values():
    for _wrapper in _arch.wrappers:
        if _wrapper.model_type in _WRAPPERS or _wrapper.model_type in _BY_MODEL_TYPE:
            raise ValueError(f"model_type {_wrapper.model_type} declared twice")
        _WRAPPERS[_wrapper.model_type] = _wrapper


# Multimodal model_types whose language model is not a causal one for text: refused with the reason, not read as one
NOT_CAUSAL = {
    "paligemma": "PaliGemma's language model attends bidirectionally over the whole prompt (a prefix LM: its processor "
                 "requires images and marks the prompt token_type_ids 0), which a causal text model does not compute",
}


def get(name: str) -> Architecture:
    if name not in _REGISTRY:
        raise ConfigError(
            f"architecture '{name}' is not supported; supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def unwrap(raw: dict) -> tuple[dict, Wrapper | None]:
    """(the config.json of the model jaxllm runs, the Wrapper it came out of): a multimodal
    wrapper's config.json (a registered Wrapper's model_type) gives its text model's config
    (Wrapper.text_config), naming the text family's architecture; any other config.json is
    returned as it is, with None."""
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not isinstance(model_type, str) or model_type not in _WRAPPERS:  # checked where it is read (check_config)
        return raw, None
    wrapper = _WRAPPERS[model_type]
    text = wrapper.text_config(raw)
    arch = _BY_MODEL_TYPE.get(text["model_type"])
    if arch is None:
        raise ConfigError(f"config.json {wrapper.text_key}.model_type '{text['model_type']}' (the language model of "
                          f"{wrapper.name}) is not supported; supported: {', '.join(sorted(_BY_MODEL_TYPE))}")
    return dict(text, architectures=[arch.name]), wrapper


def architecture_of(raw: dict) -> Architecture:
    """The family transformers' AutoModelForCausalLM builds for a config.json: its model_type's, whatever
    `architectures` says (fine-tuned checkpoints leave it out, or name another head or a class of
    their own); a config without model_type (one written for jaxllm) by its architectures[0]."""
    model_type = check_config(raw).get("model_type")  # a string or None, as every field the models read
    if model_type in _WRAPPERS:  # a caller's slip: every checkpoint unwraps its config.json as it reads it
        raise ConfigError(f"config.json model_type '{model_type}' is {_WRAPPERS[model_type].name}'s, whose language model's "
                          "config lies in its text_config: read it through registry.unwrap (jaxllm.load does)")
    if model_type in NOT_CAUSAL:
        raise ConfigError(f"config.json model_type '{model_type}' is not supported: {NOT_CAUSAL[model_type]}")
    if model_type is not None:
        if model_type not in _BY_MODEL_TYPE:
            raise ConfigError(f"config.json model_type '{model_type}' is not supported; supported: "
                              f"{', '.join(sorted(_BY_MODEL_TYPE))}: use a checkpoint of one of these families")
        return _BY_MODEL_TYPE[model_type]
    archs = raw.get("architectures")
    if not archs:
        raise ConfigError("config.json has neither 'model_type' nor 'architectures': add the model's model_type, "
                          "e.g. \"model_type\": \"llama\"")
    return get(archs[0])
