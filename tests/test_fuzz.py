"""Fuzzing what jaxllm reads from disk: mutated config.json and generation_config.json dicts, and
mutated safetensors files. Every input either loads or raises a one-line JaxllmError: never
another exception, never a hang (each example has a deadline)."""

import dataclasses
import json
import os
from datetime import timedelta
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from test_bad_files import DROP, ST, TINY, join_safetensors, split_safetensors, write_tiny

import jaxllm
from jaxllm import checkpoint, loader, safetensors_io
from jaxllm.errors import CheckpointError, JaxllmError
from jaxllm.models import registry
from jaxllm.models.config_fields import CONFIG_FIELDS, GENERATION_FIELDS, ROPE_FIELDS
from jaxllm.sampling import SamplingParams

FUZZ = settings(max_examples=200, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Hostile JSON values: wrong types, signs, zeros, huge and non-finite numbers, nesting. Integers
# stay small (or absurd) so that a mutated layer count builds in milliseconds, not seconds.
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63), 10**30]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=6))
NESTED_KEYS = st.sampled_from(sorted(ROPE_FIELDS) + ["full_attention", "sliding_attention"])
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NESTED_KEYS, inner, max_size=4)),
                      max_leaves=8)
ROPES = st.fixed_dictionaries({"rope_type": st.sampled_from(["default", "linear", "dynamic", "llama3", "yarn", "longrope", "su", "x"])},
                              optional={k: VALUES for k in ROPE_FIELDS if k != "rope_type"})


def mutations(keys):
    """Dicts of a few fields each set to a hostile value, or DROP (removed)."""
    return st.dictionaries(st.sampled_from(sorted(keys)), st.one_of(st.just(DROP), INTS, VALUES, ROPES), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("fuzz") / "model")


def loads_or_refuses(action) -> None:
    """`action()` succeeds or raises a one-line JaxllmError; anything else fails the test. The
    outcomes are counted: pytest --hypothesis-show-statistics."""
    try:
        action()
    except JaxllmError as err:
        assert "\n" not in str(err), str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("loaded")


@FUZZ
@given(changes=mutations(set(TINY) | set(CONFIG_FIELDS) | {"unknown_field"}))
def test_config_json(folder, changes):
    raw = {k: v for k, v in dict(TINY, **changes).items() if v is not DROP}
    (folder / "config.json").write_text(json.dumps(raw))
    loads_or_refuses(lambda: jaxllm.load(folder, tokenizer=False))


@FUZZ
@given(changes=mutations(set(GENERATION_FIELDS) | {"unknown_field"}))
def test_generation_config_json(folder, changes):
    (folder / "generation_config.json").write_text(json.dumps({k: v for k, v in changes.items() if v is not DROP}))
    try:
        loads_or_refuses(lambda: SamplingParams().resolved(checkpoint.read_generation_config(folder)))
    finally:
        (folder / "generation_config.json").unlink()


# ----------------------------------------------------------------------------------------------
# safetensors: the pristine file's header and data, mutated

SAFETENSORS_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64",
                      "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "C64", "f32", ""]
OFFSETS = st.integers(-2, 6000)
ENTRY_VALUES = {
    "dtype": st.one_of(st.sampled_from(SAFETENSORS_DTYPES), VALUES),
    "shape": st.one_of(st.lists(st.integers(-1, 64), max_size=3), VALUES),
    "data_offsets": st.one_of(st.lists(OFFSETS, min_size=2, max_size=2), st.lists(OFFSETS, max_size=3), VALUES),
}


class Pristine(NamedTuple):
    """The tiny checkpoint's safetensors header and data (short repr: hypothesis prints it)."""

    header: dict
    data: bytes

    def __repr__(self):
        return "Pristine(tiny model.safetensors)"


@st.composite
def safetensors_files(draw, pristine: Pristine) -> bytes:
    header, data = json.loads(json.dumps(pristine.header)), pristine.data  # a fresh header to mutate
    kind = draw(st.sampled_from(["entries", "consistent", "bytes", "length", "data"]))
    if kind == "consistent":  # a well-formed file whose tensors no longer fit the model: other 4-byte dtypes, other shapes
        for name in draw(st.lists(st.sampled_from(sorted(set(header) - {"__metadata__"})), min_size=1, max_size=3)):
            header[name]["dtype"] = draw(st.sampled_from(["F32", "I32", "U32"]))
            header[name]["shape"] = draw(st.permutations(header[name]["shape"]))
        return join_safetensors(header, data)
    if kind == "bytes":  # random header bytes, often starting like JSON
        blob = draw(st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(lambda b: b"{" + b)))
        return join_safetensors(blob, data)
    if kind == "length":
        return join_safetensors(header, data, length=draw(st.integers(0, 2**64 - 1)))
    if kind == "data":  # bytes cut or added at the end
        cut = draw(st.integers(-64, 64))
        return join_safetensors(header, data[:cut] if cut < 0 else data + bytes(cut))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(header) + ["__metadata__", "extra.weight"]))
        key = draw(st.sampled_from(sorted(ENTRY_VALUES)))
        value = draw(st.one_of(st.just(DROP), ENTRY_VALUES[key]))
        entry = header.get(name) if isinstance(header.get(name), dict) else {}
        header[name] = draw(VALUES) if name == "__metadata__" else {k: v for k, v in dict(entry, **{key: value}).items() if v is not DROP}
    return join_safetensors(header, data)


@pytest.fixture(scope="module")
def pristine_safetensors(folder):
    return Pristine(*split_safetensors((folder / ST).read_bytes()))


@pytest.fixture(scope="module")
def plan():
    return loader.plan(TINY)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tmp_path_factory.mktemp("spoiled")


@FUZZ
@given(data=st.data())
def test_safetensors_file(model, pristine_safetensors, plan, data):
    (model / ST).write_bytes(data.draw(safetensors_files(pristine_safetensors)))
    source = checkpoint.HFCheckpoint(model, TINY, {})
    p = dataclasses.replace(plan, source=source)
    loads_or_refuses(lambda: (p.check(), p.read()))
    try:  # never laxer than the safetensors library: what our reader takes, it opens too
        safetensors_io.SafetensorsFile(model / ST)
    except CheckpointError:
        return
    with safe_open(model / ST, "numpy"):
        pass


# ----------------------------------------------------------------------------------------------
# config.json of every architecture family: each reads its own fields (soft-caps, sliding-window
# patterns, expert counts, partial rotary, ...), so each is fuzzed from its own full config as
# transformers writes it. Planning (parse, validate, build the abstract model) is the part that
# reads the config; test_config_json above covers the rest of a load for one family.

FAMILY_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("JAXLLM_FUZZ_EXAMPLES", 30)))


def full_config(arch_name: str) -> dict:
    import transformers

    arch = registry.get(arch_name)
    values = dict(arch.tiny_config, architectures=[arch_name])
    return transformers.AutoConfig.for_model(arch.hf_model_type, **values).to_dict()


@pytest.mark.parametrize("arch_name", registry.names())
def test_config_json_of_every_family(arch_name):
    base = full_config(arch_name)
    loader.plan(base)  # the pristine config plans

    @FAMILY_FUZZ
    @given(changes=mutations(set(base) | set(CONFIG_FIELDS) | {"unknown_field"}))
    def fuzz(changes):
        raw = {k: v for k, v in dict(base, **changes).items() if v is not DROP}
        loads_or_refuses(lambda: loader.plan(raw))

    fuzz()
