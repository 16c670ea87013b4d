"""How many KV pages an engine's pool holds: the number asked for, checked against what the
device (a CPU: the host) can hold, or by default a share of the device memory left after the
weights. Decided once, when an Engine is made, before anything is allocated."""

from __future__ import annotations

import jax

from jaxllm.errors import GenerationError, available_memory, size_text
from jaxllm.models.attention import index_cache_bytes, kv_cache_bytes
from jaxllm.models.mixers import state_bytes
from jaxllm.serving.runner import pool_pages, recurrent_rows

SAMPLING_ROW_BYTES = 3  # per vocabulary entry of each decode row: its seen tokens (bool) and output counts (int16), SlotState


def tp_split(model) -> int:
    """Devices each page of the pool splits over: the mesh's tp when it divides every layer's kv
    heads (the pool splits like the kv projections), else 1 (the pool is whole on each device)."""
    mesh, cfg = getattr(model, "mesh", None), model.config
    tp = mesh.shape["tp"] if mesh is not None else 1
    heads = {shape[0] for shape in map(cfg.kv_shape, range(cfg.num_layers)) if shape is not None}
    return tp if all(k % tp == 0 for k in heads) else 1


def pool_size(model, kv_dtype, page_size: int, fraction: float, num_pages: int | None, *, batch_size: int,
              max_len: int, budget: int, dp: int) -> int:
    """The pool's pages: `num_pages` when given, else `fraction` of the device memory left after
    the weights (a CPU: a full batch of full-length sequences within 2 GiB), beside room for a
    prefill step of `budget` tokens, the rows' token sets and counts over the vocabulary, and the
    recurrent states of models with recurrent layers (runner.recurrent_rows over dp, counted whole
    on each device). Refused in one line, before anything is allocated, when the
    device cannot hold them (or one sequence of `max_len`)."""
    cfg = model.config
    width = -(-max_len // page_size)  # pages of one max_len sequence
    stats = jax.local_devices()[0].memory_stats() or {}
    tp = tp_split(model)
    devices = tp * dp  # over tp like the kv heads, and over dp by pages
    # sparse attention's indexer keys are whole on each tp device: counted tp times before the split
    page_bytes = kv_cache_bytes(cfg, page_size, model.dtype, kv_dtype) + (tp - 1) * index_cache_bytes(cfg, page_size, model.dtype)
    # each device's rows of recurrent state (0 without recurrent layers), counted whole though tp splits their heads
    states = recurrent_rows(batch_size, dp) * state_bytes(cfg, model.dtype) // dp
    states += batch_size // dp * cfg.output_vocab * SAMPLING_ROW_BYTES
    if not page_bytes:  # no attention layer (Mamba): the pages hold no keys, only the engine's count of positions
        return _states_alone(states, num_pages if num_pages is not None else batch_size * width)
    if num_pages is not None or "bytes_limit" not in stats:
        available, where = available_memory()
        if num_pages is None:  # a CPU: a full batch of full-length sequences, within 2 GiB (and half the free memory)
            room = min(2 << 30, available // 2) if available is not None else 2 << 30
            num_pages = max(width, min(batch_size * width, room // page_bytes))
        pool = pool_pages(int(num_pages), batch_size)
        if available is not None and pool * page_bytes / devices + states > available:
            fit = int((available - states) * devices // page_bytes) - batch_size
            raise GenerationError(
                f"an engine of {num_pages:,} KV pages of {page_size} tokens ({batch_size:,} x {max_len:,}-token "
                f"sequences at most; the pool rounds up to a multiple of batch_size) needs "
                f"{size_text(pool * page_bytes / devices + states)} but {where} has {size_text(available)} available: "
                + (f"pass num_pages <= {fit:,}, or a smaller max_len" if fit >= width else
                   f"lower batch_size, page_size or max_len (one {max_len:,}-token sequence needs {width:,} pages)"))
        return int(num_pages)
    # Room for a prefill step's activations and logits, beside the pool.
    spare = 8 * budget * max(cfg.hidden_size * 4, cfg.intermediate_size) * 2 + (1 << 30)
    free = fraction * stats["bytes_limit"] - stats.get("bytes_in_use", 0) - spare - states
    pages = int(free * devices // page_bytes) - batch_size if free > 0 else 0  # the runner rounds up
    if pages < width:
        raise GenerationError(f"the device has room for {max(pages, 0)} KV pages of {page_size} tokens but one "
                              f"{max_len}-token sequence needs {width}: lower max_len, raise memory_fraction "
                              f"(now {fraction:g}) if below 1, or free device memory")
    return pages


def _states_alone(states: int, num_pages: int) -> int:
    """`num_pages` of a model whose pages hold nothing, or a one-line refusal where the device cannot hold the
    recurrent states (`states` bytes on each device)."""
    available, where = available_memory()
    if available is not None and states > available:
        raise GenerationError(f"an engine's recurrent states need {size_text(states)} but {where} has {size_text(available)} "
                              "available: lower batch_size")
    return int(num_pages)
