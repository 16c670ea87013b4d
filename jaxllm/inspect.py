"""`python -m jaxllm.inspect PATH`: what a checkpoint is and whether jaxllm can load it, without
reading a single weight: architecture, config summary, parameter count, memory for a batch and
context, and every missing, unexpected or mis-shaped tensor against the registered weight map.

`--scan` also reads every tensor's data (one tensor at a time, in blocks) and reports those holding
NaN or Inf. `python -m jaxllm.inspect --list` prints the supported architectures. Exit code 0 when
the checkpoint matches (and, with --scan, every value is finite), 1 when tensors do not match or
hold NaN/Inf, 2 on an error (unreadable or unsupported checkpoint).
"""

from __future__ import annotations

import math
import re
import sys

import jax
import numpy as np

from jaxllm import converted, progress, runtime
from jaxllm.converted import ConvertedCheckpoint
from jaxllm.errors import ArgumentParser, JaxllmError, run_cli
from jaxllm.loader import DTYPES, open_checkpoint, plan
from jaxllm.models import quant, registry
from jaxllm.progress import Bar

# What every registered architecture serves, whatever its family.
SERVES = "completion, chat (where the tokenizer has a template), scoring"


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m jaxllm.inspect", description=__doc__.split("\n\n")[0], parents=[progress.weight_flags()])
    p.add_argument("path", nargs="?", help="checkpoint folder, hub id or .gguf file")
    progress.add_revision(p, "PATH")
    p.add_argument("--batch", type=int, default=1, help="sequences held at once, for the KV-cache estimate")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: the model's maximum)")
    p.add_argument("--scan", action="store_true", help="also read every tensor and report those holding NaN or Inf "
                                                       "(reads the whole checkpoint; the default reads headers only)")
    p.add_argument("--list", action="store_true", help="print the supported architectures and exit")
    return p.parse_args(argv)


def list_architectures() -> str:
    """One line per architecture; a family whose text model multimodal checkpoints hold names their classes."""
    names = registry.names()
    width = max(len(name) for name in names)

    def wrapped(arch) -> str:
        return "".join(f"; also the language model of {w.name} ({w.model_type}) checkpoints, its "
                       f"{', '.join(w.other_modules)} not loaded" for w in arch.wrappers)

    return "\n".join(f"{name:<{width}}  {registry.get(name).hf_model_type}: {SERVES}; dtypes {', '.join(DTYPES)}"
                     f"{wrapped(registry.get(name))}" for name in names)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def summary(cfg) -> str:
    layers = f"{cfg.num_layers} layers" + (f" (checkpoint layers {', '.join(map(str, cfg.checkpoint_layers))}; the others skipped "
                                          "for text)" if cfg.checkpoint_layers and not cfg.loop else "")
    if cfg.loop:  # Dory: each run of a looped layer one of ours
        first, count, loops = cfg.loop
        layers += f" (checkpoint layers {first}..{first + count - 1} run {loops} times)"
    parts = [layers, f"hidden {cfg.hidden_size}",
             f"heads {cfg.num_heads} (kv {cfg.num_kv_heads}, head_dim {cfg.head_dim})",
             f"mlp {cfg.intermediate_size} {cfg.hidden_act}", f"vocab {cfg.vocab_size}",
             f"max positions {cfg.max_position_embeddings}"]
    if cfg.num_experts:
        parts.append(f"{cfg.num_experts} experts, top {cfg.experts_per_token}")
    if cfg.position_embedding == "rope":
        rope = cfg.rope
        parts.append(f"rope {rope.type} theta {rope.theta:g}" + (f" factor {rope.factor:g}" if rope.factor != 1 else ""))
    else:
        kind = cfg.position_embedding  # learned (GPT-2, OPT) or sinusoidal (XGLM) positions, or none (Mamba)
        parts.append({"alibi": "ALiBi position biases", "none": "no positions"}.get(kind, f"{kind} positions"))
    windows = {cfg.layer_window(i) for i in range(cfg.num_layers)} - {None}
    sliding = sorted(w for w in windows if isinstance(w, int))
    if sliding:
        parts.append(f"sliding window {', '.join(map(str, sliding))}")
    if cfg.attention_chunk and "chunked_attention" in cfg.layer_types:
        parts.append(f"attention chunks of {cfg.attention_chunk}")
    if cfg.indexer is not None:  # DeepSeek Sparse Attention
        ix = cfg.indexer
        parts.append(f"sparse attention: top {ix.topk} keys by an indexer of {ix.heads} heads x {ix.head_dim}"
                     + (f" ({len(ix.shared)} layers sharing another's selection)" if ix.shared else ""))
    if cfg.tie_word_embeddings:
        parts.append("tied embeddings")
    return ", ".join(parts)


BLOCK_BYTES = 64 << 20  # a scan reads tensors in blocks of rows of about this size


def tensors(source):
    """(name, block iterator) of every tensor of a checkpoint, each block a numpy array read when
    asked: safetensors by row blocks, GGUF tensors whole (dequantized), converted folders one
    parameter at a time."""
    if isinstance(source, ConvertedCheckpoint):
        for name, array in converted.arrays(source.path):
            yield name, iter([array])
        return
    store = source.tensors
    for name in sorted(store.names()):
        yield name, _blocks(store.get(name))


def _blocks(tensor):
    if not hasattr(tensor, "read") or not tensor.shape:  # a GGUF array, or a scalar
        yield np.asarray(tensor)
        return
    row_bytes = tensor.dtype.itemsize * math.prod(tensor.shape[1:])
    rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, tensor.shape[0], rows):
        yield tensor.read(start, start + rows)


def scan(source, progress=None) -> tuple[int, list[str]]:
    """(tensors read, a line for each float tensor holding NaN or Inf: its name and the counts)."""
    found, count = [], 0
    for name, blocks in tensors(source):
        count += 1
        nan = inf = size = 0
        for block in blocks:
            size += block.size
            if block.dtype.kind == "f" or block.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
                nan += int(np.count_nonzero(np.isnan(block)))
                inf += int(np.count_nonzero(np.isinf(block)))
        if nan or inf:
            found.append(f"{name}: {nan:,} NaN, {inf:,} Inf of {size:,} values")
        if progress is not None:
            progress(name)
    return count, found


def report(path, batch: int = 1, context: int | None = None, scan_data: bool = False,
           show=None, revision: str | None = None, **load) -> tuple[str, list[str]]:
    """(the report text, the problems: tensors that do not match, and with `scan_data` tensors
    holding NaN or Inf). `show(text)`, when given, gets the report of the headers before the scan
    reads any data (so a scan that fails leaves it shown), and the text returned is the rest.
    `load`: jaxllm.load's quantize, group_size, quantize_embeddings and kv_dtype, which the memory
    estimate follows (the weights as that load would hold them, the KV cache in kv_dtype). `revision`: a hub id's
    branch, tag or commit hash."""
    source = open_checkpoint(path, revision)
    text, problems = _headers(source, batch, context, **load)
    if show is not None:
        show(text)
        text = ""
    if scan_data:
        with Bar(None, "scanning", delay=1.0) as bar:
            count, bad = scan(source, bar)
        lines = [f"values        {'all finite in ' + str(count) + ' tensors' if not bad else str(len(bad)) + ' tensors hold NaN or Inf:'}"]
        lines += [f"  {line}" for line in bad]
        text = "\n".join(([text] if text else []) + lines)
        problems = problems + bad
    return text, problems


def _headers(source, batch: int, context: int | None, quantize=None, group_size=None, quantize_embeddings=False,
             kv_dtype=None) -> tuple[str, list[str]]:
    """(the report of what the headers say, the tensors that do not match): no data read."""
    plans = {dtype: plan(source.raw, dtype, source=source, quantize=quantize, group_size=group_size,
                         quantize_embeddings=quantize_embeddings) for dtype in ("bfloat16", "float32")}
    p = plans["bfloat16"]
    cfg = p.config
    context = context or cfg.context_length
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(quant.float_state(p.abstract)))  # not the scales
    problems = p.problems()
    converted = f" (converted by jaxllm, {source.dtype})" if isinstance(source, ConvertedCheckpoint) else ""
    lines = [
        f"checkpoint    {source.path}{converted}",
        f"architecture  {p.arch.name} ({p.arch.hf_model_type}: {SERVES})",
        *_wrapped(source, p.arch),
        f"config        {summary(cfg)}",
        f"parameters    {count:,} ({count / 1e9:.2f} B)" if count >= 1e9 else f"parameters    {count:,} ({count / 1e6:.1f} M)",
    ]
    held = _held(p, quantize_embeddings, kv_dtype)
    for name, each in plans.items():
        m = each.memory(batch, context, kv_dtype)
        lines.append(f"memory {name:<8} weights {_size(m['params_bytes'])} + KV cache {_size(m['kv_cache_bytes'])} "
                     f"(batch {batch} x {context} tokens{held}) = {_size(m['params_bytes'] + m['kv_cache_bytes'])}")
    if context > cfg.context_length:
        lines.append(f"note          --context {context:,} is beyond the {cfg.context_length:,} positions this model serves: "
                     "the KV cache above is for a length no request can reach")
    n_tensors = source.size(p.arch, cfg, p.abstract)
    lines.append(f"tensors       {'all ' + str(n_tensors) + ' match the weight map' if not problems else str(len(problems)) + ' problems:'}")
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines), problems


def _held(p, quantize_embeddings: bool, kv_dtype) -> str:
    """What the memory lines assume beyond the dtype: the weights' quantization, the KV cache's dtype."""
    said = ""
    if p.quantize is not None:
        said += f"; weights {p.quantize}" + (", embeddings int8" if quantize_embeddings else "")
    return said + (f"; KV cache {kv_dtype}" if kv_dtype is not None else "")


def _wrapped(source, arch) -> list[str]:
    """The line of a multimodal checkpoint read as its language model: the wrapper, and how many
    tensors of its other modules (vision tower, projector) are left unread."""
    wrapper = getattr(source, "wrapper", None)
    if wrapper is None:
        return []
    patterns = [re.compile(p) for p in wrapper.ignore()]
    others = sum(1 for name in source.tensors.names() if any(p.match(name) for p in patterns))
    return [f"multimodal    {wrapper.name} ({wrapper.model_type}): its language model, for text alone; the "
            f"{others} tensors of its {', '.join(wrapper.other_modules)} are not read"]


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.quiet()

    def body() -> int:
        if args.list and (args.path or args.scan):  # it prints the list and exits: the checkpoint would go uninspected, unsaid
            dropped = f"{args.path} would not be inspected" if args.path else "--scan would read nothing"
            raise JaxllmError(f"--list prints the supported architectures and exits, so {dropped}: give one or the other")
        if args.list:
            print(list_architectures())
            return 0
        if not args.path:
            raise JaxllmError("give a checkpoint folder, hub id or .gguf file to inspect, or --list")
        for flag, value, what in (("--batch", args.batch, "sequences"), ("--context", args.context, "tokens")):
            if value is not None and value < 1:
                raise JaxllmError(f"{flag} {value} is invalid: give a positive whole number of {what}")
        def show(text):  # before the scan: what the headers say stays shown if the data cannot be read
            print(text, flush=True)

        with progress.flag_terms():  # quantize='int8' said as --quantize int8
            text, problems = report(args.path, args.batch, args.context, args.scan, show, args.revision, quantize=args.quantize,
                                    group_size=args.group_size, quantize_embeddings=args.quantize_embeddings,
                                    kv_dtype=args.kv_dtype)
        if text:
            print(text)
        return 1 if problems else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
