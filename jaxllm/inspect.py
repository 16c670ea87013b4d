"""`python -m jaxllm.inspect PATH`: what a checkpoint is and whether jaxllm can load it, without
reading a single weight: architecture, config summary, parameter count, memory for a batch and
context, and every missing, unexpected or mis-shaped tensor against the registered weight map.

`python -m jaxllm.inspect --list` prints the supported architectures. Exit code 0 when the
checkpoint matches, 1 when tensors do not, 2 on an error (unreadable or unsupported checkpoint).
"""

from __future__ import annotations

import argparse
import math
import sys

from jaxllm.errors import JaxllmError, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jaxllm.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", help="checkpoint folder, hub id or .gguf file")
    p.add_argument("--batch", type=int, default=1, help="sequences held at once, for the KV-cache estimate")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: the model's maximum)")
    p.add_argument("--list", action="store_true", help="print the supported architectures and exit")
    return p.parse_args(argv)


def list_architectures() -> str:
    from jaxllm import registry

    rows = [(name, registry.get(name)) for name in registry.names()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {', '.join(a.capabilities)}; dtypes {', '.join(a.dtypes)}" for name, a in rows)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def summary(cfg) -> str:
    parts = [f"{cfg.num_layers} layers", f"hidden {cfg.hidden_size}",
             f"heads {cfg.num_heads} (kv {cfg.num_kv_heads}, head_dim {cfg.head_dim})",
             f"mlp {cfg.intermediate_size} {cfg.hidden_act}", f"vocab {cfg.vocab_size}",
             f"max positions {cfg.max_position_embeddings}"]
    if cfg.num_experts:
        parts.append(f"{cfg.num_experts} experts, top {cfg.experts_per_token}")
    if cfg.position_embedding == "rope":
        rope = cfg.rope
        parts.append(f"rope {rope.type} theta {rope.theta:g}" + (f" factor {rope.factor:g}" if rope.factor != 1 else ""))
    else:
        parts.append("learned positions")
    windows = {cfg.layer_window(i) for i in range(cfg.num_layers)} - {None}
    if windows:
        parts.append(f"sliding window {', '.join(map(str, sorted(windows)))}")
    if cfg.tie_word_embeddings:
        parts.append("tied embeddings")
    return ", ".join(parts)


def report(path, batch: int = 1, context: int | None = None) -> tuple[str, list[str]]:
    """(the report text, the tensor problems)."""
    import jax
    import jax.numpy as jnp

    from jaxllm.loader import abstract_model, open_checkpoint

    ckpt = open_checkpoint(path)
    cfg, arch = ckpt.config, ckpt.arch
    context = context or cfg.max_position_embeddings
    _, abstract = abstract_model(cfg, arch, jnp.bfloat16)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    kv_values = 2 * cfg.num_layers * batch * context * cfg.num_kv_heads * cfg.head_dim
    problems = ckpt.problems(abstract)
    lines = [
        f"checkpoint    {ckpt.path}" + (f" (converted by jaxllm, {ckpt.saved_dtype})" if ckpt.converted else ""),
        f"architecture  {arch.name} ({', '.join(arch.capabilities)})",
        f"config        {summary(cfg)}",
        f"parameters    {count:,} ({count / 1e9:.2f} B)" if count >= 1e9 else f"parameters    {count:,} ({count / 1e6:.1f} M)",
    ]
    for name, nbytes in (("bfloat16", 2), ("int8", 1)):
        weights_b, cache_b = count * nbytes, kv_values * nbytes
        lines.append(f"memory {name:<8} weights {_size(weights_b)} + KV cache {_size(cache_b)} "
                     f"(batch {batch} x {context} tokens) = {_size(weights_b + cache_b)}")
    n_tensors = len(jax.tree.leaves(abstract)) if ckpt.converted else len({n for s in arch.weight_map(cfg) for n in s.hf_names})
    lines.append(f"tensors       {'all ' + str(n_tensors) + ' match the weight map' if not problems else str(len(problems)) + ' problems:'}")
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines), problems


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        if args.list:
            print(list_architectures())
            return 0
        if not args.path:
            raise JaxllmError("give a checkpoint folder, hub id or .gguf file to inspect, or --list")
        if args.batch < 1 or (args.context is not None and args.context < 1):
            raise JaxllmError("--batch and --context must be positive integers")
        text, problems = report(args.path, args.batch, args.context)
        print(text)
        return 1 if problems else 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
