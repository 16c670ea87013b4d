"""Architectures by the `architectures` string of config.json: the table every model file's
`ARCHITECTURES` fills (jaxllm.models collects them). Loading, parity tests and `--list-models`
read this table.
"""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models import ARCHITECTURES
from jaxllm.models.architecture import Architecture

_REGISTRY: dict[str, Architecture] = {}
for _arch in ARCHITECTURES:
    if _arch.name in _REGISTRY:
        raise ValueError(f"architecture {_arch.name} declared twice")
    _REGISTRY[_arch.name] = _arch


def get(name: str) -> Architecture:
    if name not in _REGISTRY:
        raise ConfigError(
            f"architecture '{name}' is not supported; supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def architecture_of(raw: dict) -> Architecture:
    archs = raw.get("architectures") if isinstance(raw, dict) else None
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise ConfigError(
            "config.json has no 'architectures' list: add e.g. \"architectures\": [\"LlamaForCausalLM\"]"
        )
    return get(archs[0])
