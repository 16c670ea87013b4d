"""Helpers the tests share to write GGUF files with gguf.GGUFWriter."""

from __future__ import annotations

import numpy as np


def add_fields(writer, prefix: str, fields: dict) -> None:
    """Metadata `prefix.key = value` by the value's type: a string, an array (a list), else a uint32."""
    for key, value in fields.items():
        if isinstance(value, str):
            writer.add_string(f"{prefix}.{key}", value)
        elif isinstance(value, list):
            writer.add_array(f"{prefix}.{key}", value)
        else:
            writer.add_uint32(f"{prefix}.{key}", value)


def write_random(writer, shapes: dict, seed: int = 0) -> None:
    """Add a float32 tensor of N(0, 1) values per {name: shape}, write the file and close it."""
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def split_copy(whole, path, max_tensors: int) -> list:
    """The GGUF file `whole` written again as llama.cpp's gguf-split writes it: parts of at most
    `max_tensors` tensors named like `path`'s stem-00001-of-0000N.gguf beside it, the metadata in
    the first, split.no / split.count / split.tensors.count in each. Returns the parts' paths."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(whole)
    writer = GGUFWriter(str(path), str(reader.fields["general.architecture"].contents()), split_max_tensors=max_tensors)
    for key, f in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            writer.add_key_value(key, f.contents(), f.types[0], f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    parts = writer.format_shard_names(path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return parts
