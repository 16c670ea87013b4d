"""Helpers the tests share to write GGUF files with gguf.GGUFWriter."""

from __future__ import annotations


def add_fields(writer, prefix: str, fields: dict) -> None:
    """Metadata `prefix.key = value` by the value's type: a string, an array (a list), else a uint32."""
    for key, value in fields.items():
        if isinstance(value, str):
            writer.add_string(f"{prefix}.{key}", value)
        elif isinstance(value, list):
            writer.add_array(f"{prefix}.{key}", value)
        else:
            writer.add_uint32(f"{prefix}.{key}", value)
