"""The generation engine: a fixed number of slots over one static KV cache.

Two jitted steps, shaped for continuous batching:
  prefill(state, slots, tokens [N, bucket]) -> N prompts of one bucket prefilled together, their
                                      keys/values placed in free slots of the running batch, their
                                      first tokens sampled (N from a few allowed row counts:
                                      a compile for each N and bucket met)
  decode(state)                    -> up to `chunk` steps for every slot, inside one jit call
                                      (lax.while_loop; stops early when every slot is done)
The decode state (cache and per-slot counters) is donated, so XLA updates it in place. The host
loop only moves small token chunks, refills freed slots from the queue, and applies stop strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import runtime, sharding
from jaxllm.errors import GenerationError, check_token_ids
from jaxllm.models.attention import LayerCache, SlotCache
from jaxllm.models.config import token_ids
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
    decode: int = 0


class Engine:
    """`batch_size` slots of `max_len` positions each; prompts are padded up to `buckets`, and
    prompts waiting at the same time are prefilled together, up to `prefill_tokens` per call."""

    def __init__(self, model, batch_size: int = 1, max_len: int = 1024, buckets=None, chunk: int = 16, loop: str = "while",
                 prefill_tokens: int = 8192, attention: str | None = None):
        if batch_size < 1 or max_len < 2 or prefill_tokens < 1:
            raise GenerationError(f"an engine needs batch_size >= 1, max_len >= 2 and prefill_tokens >= 1, got "
                                  f"{batch_size}, {max_len}, {prefill_tokens}")
        self.model = model
        self.cfg = model.config
        self.batch_size, self.max_len, self.chunk = batch_size, max_len, chunk
        self.prefill_tokens = prefill_tokens
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
        if loop not in ("while", "scan"):
            raise GenerationError(f"loop must be 'while' or 'scan', got {loop!r}")
        # The attention kernels this platform runs ("cudnn" or "xla"), chosen once by the runtime.
        self.attention = attention or runtime.attention_impl()
        decode = functools.partial(_decode, graphdef, self.counters, chunk, loop, self.attention)
        if self.mesh is None:
            self._new_state = jax.jit(self._zero_state)
            self._prefill = jax.jit(prefill, static_argnums=0, donate_argnums=2)
            self._decode = jax.jit(decode, donate_argnums=3, static_argnums=(0, 1))
            return
        # On a mesh: the cache is split like the kv projections (and over dp by batch rows); what the
        # host reads back is replicated, so every process of a multi-host run can read it.
        dp = self.mesh.shape["dp"]
        self.batch_size = -(-batch_size // dp) * dp
        rep = sharding.replicated(self.mesh)
        layer = lambda sh: LayerCache(sh, sh)  # noqa: E731
        cache = sharding.cache_sharding(self.mesh, self.cfg.num_kv_heads, self.batch_size)
        state = jax.tree.map(lambda _: rep, jax.eval_shape(self._zero_state))
        state = state._replace(cache=[layer(cache)] * self.cfg.num_layers)
        self._new_state = jax.jit(self._zero_state, out_shardings=state)
        self._prefill = jax.jit(prefill, static_argnums=0, donate_argnums=2, out_shardings=(state, rep, rep))
        self._decode = jax.jit(decode, donate_argnums=3, static_argnums=(0, 1), out_shardings=(state, rep, rep))

    def _put(self, x):
        return sharding.put_replicated(x, self.mesh)

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
        check_token_ids(req.prompt, self.cfg.vocab_size, "prompt")
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

    def prefill_rows(self, bucket: int, waiting: int) -> list[int]:
        """How `waiting` prompts of one bucket are split into prefill calls: greedily into the
        largest allowed row counts, so no call carries padding rows. Allowed: powers of 4 and the
        largest power of two within `prefill_tokens` // bucket and the batch (at most 4 compiles per
        bucket at 64 rows)."""
        top = max(1, min(self.prefill_tokens // bucket, self.batch_size))
        top = 1 << (top.bit_length() - 1)
        sizes = sorted({top} | {4**i for i in range(8) if 4**i < top}, reverse=True)
        out = []
        while waiting:
            out.append(next(n for n in sizes if n <= waiting))
            waiting -= out[-1]
        return out

    def prefill_into(self, state: DecodeState, jobs: list[tuple[int, Request, list[int] | None]]):
        """Prefill prompts and place each in its slot. `jobs`: (slot, request, tokens) with tokens
        the prompt plus the tokens generated so far to prefill a running sequence again, or None
        for the prompt alone. Prompts of one bucket are prefilled together (`prefill_rows`).
        Returns (state, [(first token, its logprob, done) per job]) after one readback."""
        put = self._put
        switch = self.rope_switch
        groups: dict[int, list] = {}
        for slot, req, tokens in jobs:
            tokens = req.prompt if tokens is None else tokens
            groups.setdefault(self.bucket(len(tokens)), []).append((slot, req, tokens))
        order, outs = [], []
        for bucket, group in groups.items():
            for rows in self.prefill_rows(bucket, len(group)):
                part, group = group[:rows], group[rows:]
                padded = np.zeros((rows, bucket), np.int32)
                for r, (_, _, tokens) in enumerate(part):
                    padded[r, : len(tokens)] = tokens
                length = np.asarray([len(tokens) for _, _, tokens in part], np.int32)
                generated = length - np.asarray([len(req.prompt) for _, req, _ in part], np.int32)
                limit = np.asarray([switch if switch is not None and n <= switch else self.max_len for n in length], np.int32)
                eos = np.asarray([np.full_like(self.eos, -1) if req.params.ignore_eos else self.eos for _, req, _ in part])
                max_new = np.asarray([req.params.max_new_tokens for _, req, _ in part], np.int32)
                rp = jax.tree.map(put, RowParams.of([req.params for _, req, _ in part]))
                sampling = any(req.params.temperature > 0 for _, req, _ in part)
                slots = np.asarray([slot for slot, _, _ in part], np.int32)
                state, token, logprob = self._prefill(sampling, self.model.params, state, put(slots), put(padded),
                                                      put(length), rp, put(generated), put(max_new), put(eos),
                                                      put(limit))
                order += part
                outs.append((token, logprob))
        done = np.asarray(state.done)
        token = np.concatenate([np.asarray(t) for t, _ in outs])
        logprob = np.concatenate([np.asarray(lp) for _, lp in outs])
        first = {slot: (int(t), float(lp), bool(done[slot])) for (slot, _, _), t, lp in zip(order, token, logprob)}
        return state, [first[slot] for slot, _, _ in jobs]

    def _refill(self, queue, slots, position, sequence) -> list[tuple[int, Request, list[int] | None]]:
        """Prefill jobs for this round: queued requests into free slots, and slots that reached the
        LongRoPE switch prefilled again with their whole sequence."""
        jobs = []
        for slot in range(self.batch_size):
            req = slots[slot]
            if req is None and queue:
                req = queue.pop(0)
                slots[slot], sequence[slot] = req, list(req.prompt)
                jobs.append((slot, req, None))
            elif req is not None and position[slot] == self.rope_switch:
                jobs.append((slot, req, list(sequence[slot])))
        return jobs

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
            jobs = self._refill(queue, slots, position, sequence)
            if jobs:
                state, first = self.prefill_into(state, jobs)
                for (slot, req, _), (tok, logprob, done_now) in zip(jobs, first):
                    position[slot] = len(sequence[slot])  # the prompt, or all of it again
                    sequence[slot].append(tok)
                    yield Event(req.index, [tok], [logprob], done_now)
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


def _prefill(graphdef, counters, sampling, params, state: DecodeState, slots, tokens, lengths, rp: RowParams,
             generated, max_new, eos, limit):
    """tokens [N, bucket] (row r's first lengths[r] are real) prefilled and placed in `slots` of
    the donated state; returns the state and each row's first token and its logprob."""
    counters.prefill += 1
    model = nnx.merge(graphdef, params)
    n, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (n, t))
    hidden, kv = model.hidden(tokens, positions, lengths=lengths)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)
    logits = model.logits(last)[:, 0]
    rows = jnp.arange(n)
    seen = jnp.zeros(logits.shape, bool).at[rows[:, None], tokens].max(positions < lengths[:, None])
    token, logprob = sample(logits, seen, rp, generated, sampling)

    def put(big, small):
        index = (slots,) + tuple(slice(0, size) for size in small.shape[1:])
        return big.at[index].set(small.astype(big.dtype))

    generated = generated + 1
    state = DecodeState(
        cache=[LayerCache(put(c.k, new.k), put(c.v, new.v)) for c, new in zip(state.cache, kv)],
        tokens=put(state.tokens, token),
        positions=put(state.positions, lengths),
        done=put(state.done, jnp.any(token[:, None] == eos, axis=-1) | (generated >= max_new)),
        generated=put(state.generated, generated),
        max_new=put(state.max_new, max_new),
        limit=put(state.limit, limit),
        seen=put(state.seen, seen.at[rows, token].set(True)),
        eos=put(state.eos, eos),
        params=jax.tree.map(put, state.params, rp),
    )
    return state, token, logprob


def _decode(graphdef, counters, chunk, loop, attention, kv_len, sampling, params, state: DecodeState, stop):
    """`chunk` decode steps over all slots. out[b, i] is the i-th new token of slot b in this chunk,
    or -1 once the slot is done. Attention reads cache positions < kv_len; `sampling` False means
    every slot is greedy (both static); `attention` the kernels' implementation (SlotCache).

    loop="scan" runs exactly `chunk` steps (a known trip count: no device-to-host sync per step);
    loop="while" stops as soon as every slot is done.
    """
    counters.decode += 1
    model = nnx.merge(graphdef, params)
    b = state.tokens.shape[0]
    state = state._replace(done=state.done | stop)

    def step(st):
        hidden, cache = model.hidden(st.tokens[:, None], st.positions[:, None], st.cache, SlotCache(kv_len, attention))
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
