"""Architectures by name (config.json's `architectures` spelling) and by transformers' model_type:
the table every model file's `ARCHITECTURES` fills (jaxllm.models collects them). Loading, parity
tests and `--list-models` read this table.
"""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models import ARCHITECTURES
from jaxllm.models.architecture import Architecture
from jaxllm.models.config import check_config

_REGISTRY: dict[str, Architecture] = {}
for _arch in ARCHITECTURES:
    if _arch.name in _REGISTRY:
        raise ValueError(f"architecture {_arch.name} declared twice")
    _REGISTRY[_arch.name] = _arch
_BY_MODEL_TYPE = {kind: arch for arch in _REGISTRY.values() for kind in (arch.hf_model_type, *arch.hf_aliases)}


def get(name: str) -> Architecture:
    if name not in _REGISTRY:
        raise ConfigError(
            f"architecture '{name}' is not supported; supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def architecture_of(raw: dict) -> Architecture:
    """The family transformers' AutoModelForCausalLM builds for a config.json: its model_type's, whatever
    `architectures` says (fine-tuned checkpoints leave it out, or name another head or a class of
    their own); a config without model_type (one written for jaxllm) by its architectures[0]."""
    model_type = check_config(raw).get("model_type")  # a string or None, as every field the models read
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
