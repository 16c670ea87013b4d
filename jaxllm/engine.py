"""The generation engine: a fixed number of slots over one static KV cache.

Three jitted steps, shaped for continuous batching:
  prefill(tokens [1, bucket])      -> keys/values of one prompt, its first token (one compile per bucket)
  insert(state, slot, ...)         -> that prompt placed in a free slot of the running batch
  decode(state)                    -> up to `chunk` steps for every slot, inside one jit call
                                      (lax.while_loop; stops early when every slot is done)
The decode state (cache and per-slot counters) is donated, so XLA updates it in place. The host
loop only moves small token chunks, refills freed slots from the queue, and applies stop strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.config import token_ids
from jaxllm.errors import GenerationError
from jaxllm.models.layers import LayerCache
from jaxllm.sampling import RowParams, SamplingParams, sample


class DecodeState(NamedTuple):
    cache: list  # per layer LayerCache, k and v [B, S, K, D]
    tokens: jax.Array  # [B] the last token of each slot, fed at the next step
    positions: jax.Array  # [B] where that token will be written
    done: jax.Array  # [B] bool
    generated: jax.Array  # [B] tokens generated so far
    max_new: jax.Array  # [B]
    limit: jax.Array  # [B] a slot pauses (not done) when its next write position reaches this
    seen: jax.Array  # [B, V] bool: tokens in the sequence (repetition penalty)
    eos: jax.Array  # [B, E] token ids that end each slot's sequence (-1 pads)
    params: RowParams


def init_cache(cfg, batch: int, max_len: int, dtype) -> list[LayerCache]:
    shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return [LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]


def default_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest`, capped by (and ending at) max_len."""
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    return tuple(out) + (max_len,)


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    index: int = 0


@dataclass
class Event:
    """New tokens of one request, as the host loop sees them."""

    index: int
    tokens: list[int]
    logprobs: list[float]
    finished: bool = False


@dataclass
class Counters:
    """Traces of each jitted step (a trace is a compile); tests assert on these."""

    prefill: int = 0
    insert: int = 0
    decode: int = 0


class Engine:
    """`batch_size` slots of `max_len` positions each; prompts are padded up to `buckets`."""

    def __init__(self, model, batch_size: int = 1, max_len: int = 1024, buckets=None, chunk: int = 16, loop: str = "while"):
        if batch_size < 1 or max_len < 2:
            raise GenerationError(f"an engine needs batch_size >= 1 and max_len >= 2, got {batch_size}, {max_len}")
        self.model = model
        self.cfg = model.config
        self.batch_size, self.max_len, self.chunk = batch_size, max_len, chunk
        self.buckets = tuple(sorted(b for b in (buckets or default_buckets(max_len)) if b <= max_len))
        if not self.buckets:
            raise GenerationError(f"no prompt bucket fits max_len={max_len}")
        self.counters = Counters()
        self.dtype = jax.tree.leaves(model.params)[0].dtype
        eos = sorted(set(self.cfg.eos_token_ids) | set(token_ids(model.generation_config.get("eos_token_id"))))
        self.eos = np.asarray(eos or [-1], np.int32)
        self.mesh = getattr(model, "mesh", None)
        graphdef = model.graphdef
        prefill = functools.partial(_prefill, graphdef, self.counters)
        insert = functools.partial(_insert, self.counters)
        if loop not in ("while", "scan"):
            raise GenerationError(f"loop must be 'while' or 'scan', got {loop!r}")
        decode = functools.partial(_decode, graphdef, self.counters, chunk, loop)
        if self.mesh is None:
            self._new_state = jax.jit(self._zero_state)
            self._prefill = jax.jit(prefill, static_argnums=0)
            self._insert = jax.jit(insert, donate_argnums=0)
            self._decode = jax.jit(decode, donate_argnums=3, static_argnums=(0, 1))
            return
        # On a mesh: the cache is split like the kv projections (and over dp by batch rows); what the
        # host reads back is replicated, so every process of a multi-host run can read it.
        from jaxllm import sharding

        dp = self.mesh.shape["dp"]
        self.batch_size = -(-batch_size // dp) * dp
        rep = sharding.replicated(self.mesh)
        layer = lambda sh: LayerCache(sh, sh)  # noqa: E731
        cache = sharding.cache_sharding(self.mesh, self.cfg.num_kv_heads, self.batch_size)
        one = sharding.cache_sharding(self.mesh, self.cfg.num_kv_heads, None)
        state = jax.tree.map(lambda _: rep, jax.eval_shape(self._zero_state))
        state = state._replace(cache=[layer(cache)] * self.cfg.num_layers)
        self._new_state = jax.jit(self._zero_state, out_shardings=state)
        self._prefill = jax.jit(prefill, static_argnums=0, out_shardings=([layer(one)] * self.cfg.num_layers, rep, rep, rep))
        self._insert = jax.jit(insert, donate_argnums=0, out_shardings=state)
        self._decode = jax.jit(decode, donate_argnums=3, static_argnums=(0, 1), out_shardings=(state, rep, rep))

    def _put(self, x):
        from jaxllm.sharding import put_replicated

        return put_replicated(x, self.mesh)

    def _zero_state(self) -> DecodeState:
        b = self.batch_size
        rp = RowParams.of([SamplingParams().resolved()] * b)
        return DecodeState(
            cache=init_cache(self.cfg, b, self.max_len, self.dtype),
            tokens=jnp.zeros(b, jnp.int32), positions=jnp.zeros(b, jnp.int32), done=jnp.ones(b, bool),
            generated=jnp.zeros(b, jnp.int32), max_new=jnp.ones(b, jnp.int32), limit=jnp.zeros(b, jnp.int32),
            seen=jnp.zeros((b, self.cfg.vocab_size), bool), eos=jnp.full((b, len(self.eos)), -1, jnp.int32),
            params=jax.tree.map(jnp.asarray, rp),
        )

    def new_state(self) -> DecodeState:
        return self._new_state()

    def kv_bucket(self, reach: int) -> int:
        """How much of the cache a decode chunk reads: a power of two >= 256 covering `reach`
        positions, capped at max_len (one decode compile per bucket used)."""
        size = 256
        while size < reach:
            size *= 2
        return min(size, self.max_len)

    def bucket(self, length: int) -> int:
        for b in self.buckets:
            if b >= length:
                return b
        raise GenerationError(
            f"prompt of {length} tokens is longer than the largest bucket ({self.buckets[-1]}): "
            "raise max_len or shorten the prompt"
        )

    def check(self, req: Request) -> None:
        n = len(req.prompt)
        if n == 0:
            raise GenerationError("empty prompt: give at least one token")
        if n + req.params.max_new_tokens > self.max_len:
            raise GenerationError(
                f"prompt of {n} tokens + max_new_tokens={req.params.max_new_tokens} exceeds the cache length "
                f"{self.max_len}: lower max_new_tokens, shorten the prompt, or raise max_len"
            )
        if self.cfg.position_embedding == "learned" and n + req.params.max_new_tokens > self.cfg.max_position_embeddings:
            raise GenerationError(
                f"prompt of {n} tokens + max_new_tokens={req.params.max_new_tokens} exceeds the "
                f"{self.cfg.max_position_embeddings} positions this model has learned: shorten one of them"
            )
        if max(req.prompt) >= self.cfg.vocab_size or min(req.prompt) < 0:
            raise GenerationError(f"prompt has token ids outside [0, {self.cfg.vocab_size}): check the tokenizer")
        self.bucket(n)

    @property
    def rope_switch(self) -> int | None:
        """LongRoPE (Phi-3) switches from its short to its long factors once a sequence outgrows
        original_max_position_embeddings, and transformers then recomputes the whole cache with the
        long ones. A slot pauses when its next write position reaches this (None: never) and is
        prefilled again with its prompt and generated tokens."""
        rope = self.cfg.rope
        if rope.type == "longrope" and rope.original_max_position_embeddings < self.max_len:
            return rope.original_max_position_embeddings
        return None

    def prefill_into(self, state: DecodeState, slot: int, req: Request, tokens: list[int] | None = None):
        """Prefill one prompt and place it in `slot`. Returns (state, first token, its logprob).
        `tokens`: the prompt plus the tokens generated so far, to prefill a running sequence again."""
        tokens = req.prompt if tokens is None else tokens
        n, generated = len(tokens), len(tokens) - len(req.prompt)
        switch = self.rope_switch
        limit = switch if switch is not None and n <= switch else self.max_len
        padded = np.zeros((1, self.bucket(n)), np.int32)
        padded[0, :n] = tokens
        put = self._put
        rp = jax.tree.map(put, RowParams.of([req.params]))
        sampling = req.params.temperature > 0
        kv, token, logprob, seen = self._prefill(sampling, self.model.params, put(padded), put(np.int32(n)), rp,
                                                 put(np.int32(generated)))
        max_new = req.params.max_new_tokens
        eos = np.full_like(self.eos, -1) if req.params.ignore_eos else self.eos
        state = self._insert(state, put(np.int32(slot)), kv, token, put(np.int32(n)), seen, rp,
                             put(np.int32(max_new)), put(eos), put(np.int32(generated + 1)), put(np.int32(limit)))
        return state, token, logprob

    def run(self, requests: list[Request], stop_check=None) -> Iterator[Event]:
        """Serve every request, `batch_size` at a time, refilling slots as they free up.

        Yields Events as tokens arrive. `stop_check(index, tokens) -> bool` lets the caller end a
        request early (stop strings); the device learns of it at the next chunk.
        """
        for req in requests:
            self.check(req)
        queue = list(requests)
        state = self.new_state()
        slots: list[Request | None] = [None] * self.batch_size
        position = [0] * self.batch_size  # host copy of each slot's next write position
        sequence: list[list[int]] = [[] for _ in range(self.batch_size)]  # kept only for re-prefills
        while queue or any(s is not None for s in slots):
            for slot in range(self.batch_size):
                req = slots[slot]
                if req is None and queue:
                    req = queue.pop(0)
                    state, token, logprob = self.prefill_into(state, slot, req)
                    slots[slot], position[slot], sequence[slot] = req, len(req.prompt), list(req.prompt)
                elif req is not None and position[slot] == self.rope_switch:
                    state, token, logprob = self.prefill_into(state, slot, req, sequence[slot])
                    position[slot] = len(sequence[slot])
                else:
                    continue
                tok = int(token[0])
                sequence[slot].append(tok)
                done_now = bool(state.done[slot])
                yield Event(req.index, [tok], [float(logprob[0])], done_now)
                if done_now:
                    slots[slot] = None
            if all(s is None for s in slots):
                continue
            stop = np.zeros(self.batch_size, bool)
            if stop_check is not None:
                for slot, req in enumerate(slots):
                    stop[slot] = req is not None and stop_check(req.index)
            reach = max(position[i] for i, r in enumerate(slots) if r is not None) + self.chunk
            kv_len = self.kv_bucket(reach)
            sampling = any(r is not None and r.params.temperature > 0 for r in slots)
            state, out, out_lp = self._decode(kv_len, sampling, self.model.params, state, self._put(stop))
            out, out_lp, done = np.asarray(out), np.asarray(out_lp), np.asarray(state.done)
            for slot, req in enumerate(slots):
                if req is None:
                    continue
                got = out[slot] >= 0
                position[slot] += int(got.sum())
                sequence[slot] += out[slot][got].tolist()
                if got.any() or done[slot]:
                    yield Event(req.index, out[slot][got].tolist(), out_lp[slot][got].tolist(), bool(done[slot]))
                if done[slot]:
                    slots[slot] = None


# ----------------------------------------------------------------------------------------------
# The jitted steps. `graphdef` and the counters are bound with functools.partial before jit.


def _prefill(graphdef, counters, sampling, params, tokens, length, rp: RowParams, generated):
    counters.prefill += 1
    model = nnx.merge(graphdef, params)
    positions = jnp.arange(tokens.shape[1])[None, :]
    hidden, kv = model.hidden(tokens, positions, lengths=jnp.reshape(length, (1,)))
    last = jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1, axis=1)
    logits = model.logits(last)[:, 0]
    valid = positions < length
    seen = jnp.zeros(logits.shape, bool).at[0, tokens[0]].max(valid[0])
    token, logprob = sample(logits, seen, rp, jnp.reshape(generated, (1,)), sampling)
    return kv, token, logprob, seen.at[0, token[0]].set(True)


def _insert(counters, state: DecodeState, slot, kv, token, length, seen, rp: RowParams, max_new, eos, generated, limit):
    counters.insert += 1

    def put(big, small):
        start = (slot,) + (0,) * (big.ndim - 1)
        return jax.lax.dynamic_update_slice(big, small.astype(big.dtype), start)

    cache = [LayerCache(put(c.k, n.k), put(c.v, n.v)) for c, n in zip(state.cache, kv)]
    done = jnp.any(token[0] == eos) | (generated >= max_new)
    return DecodeState(
        cache=cache,
        tokens=state.tokens.at[slot].set(token[0]),
        positions=state.positions.at[slot].set(length),
        done=state.done.at[slot].set(done),
        generated=state.generated.at[slot].set(generated),
        max_new=state.max_new.at[slot].set(max_new),
        limit=state.limit.at[slot].set(limit),
        seen=put(state.seen, seen),
        eos=state.eos.at[slot].set(eos),
        params=jax.tree.map(put, state.params, rp),
    )


def _decode(graphdef, counters, chunk, loop, kv_len, sampling, params, state: DecodeState, stop):
    """`chunk` decode steps over all slots. out[b, i] is the i-th new token of slot b in this chunk,
    or -1 once the slot is done. Attention reads cache positions < kv_len; `sampling` False means
    every slot is greedy (both static).

    loop="scan" runs exactly `chunk` steps (a known trip count: no device-to-host sync per step);
    loop="while" stops as soon as every slot is done.
    """
    counters.decode += 1
    model = nnx.merge(graphdef, params)
    b = state.tokens.shape[0]
    state = state._replace(done=state.done | stop)

    def step(st):
        hidden, cache = model.hidden(st.tokens[:, None], st.positions[:, None], st.cache, kv_len)
        logits = model.logits(hidden)[:, 0]
        token, lp = sample(logits, st.seen, st.params, st.generated, sampling)
        active = ~st.done & (st.positions < st.limit)
        token = jnp.where(active, token, -1)
        generated = st.generated + active
        finished = active & ((generated >= st.max_new) | jnp.any(token[:, None] == st.eos, axis=-1))
        st = st._replace(
            cache=cache,
            tokens=jnp.where(active, token, st.tokens),
            positions=st.positions + active,
            done=st.done | finished,
            generated=generated,
            seen=st.seen.at[jnp.arange(b), jnp.maximum(token, 0)].max(active),
        )
        return st, token, jnp.where(active, lp, 0.0)

    if loop == "scan":
        state, (out, out_lp) = jax.lax.scan(lambda st, _: (lambda r: (r[0], r[1:]))(step(st)), state, None, length=chunk)
        return state, out.T, out_lp.T

    def body(carry):
        i, st, out, out_lp = carry
        st, token, lp = step(st)
        return i + 1, st, out.at[:, i].set(token), out_lp.at[:, i].set(lp)

    out = jnp.full((b, chunk), -1, jnp.int32)
    out_lp = jnp.zeros((b, chunk), jnp.float32)
    cond = lambda c: (c[0] < chunk) & ~jnp.all(c[1].done | (c[1].positions >= c[1].limit))  # noqa: E731
    _, state, out, out_lp = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out, out_lp))
    return state, out, out_lp
