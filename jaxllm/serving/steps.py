"""The jitted steps of the serving core (what runs on the device), made once per model structure
in a process (`steps`) and shared by every Runner of it: prefill (rows of chunks written into the
page pool, the last position sampled; with each position's log-probability of the next prompt token
when a row scores its prompt, which Engine.score uses too) and decode (up to `chunk` steps for every
slot in a lax.while_loop), and decode with speculative decoding (the same loop, each step drafting on the device and
verifying each slot's drafted tokens in one forward pass), over the SlotState they donate.
jaxllm/serving/runner.py builds their inputs and says what each computes."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm import sharding
from jaxllm.models.attention import LayerCache, PagedCache
from jaxllm.models.mixers import layer_parts
from jaxllm.models.recurrent import RecurrentState, zero_state
from jaxllm.sampling import PENALIZED, RowParams, SamplingParams, sample, top_logprobs, top_of
from jaxllm.serving import ngram

ERROR = -2  # the token of a row whose logits were not finite: it ends there, with an error


class SlotState(NamedTuple):
    cache: list  # per layer LayerCache: k, v [pool, page_size, K, D] (int8: and scales [pool, page_size, K]);
    # pages >= num_pages are never handed out. A recurrent layer's: its RecurrentState, a row per
    # decode slot and a scratch row per dp shard (runner.recurrent_rows; models/recurrent.py); a layer
    # with both (Falcon-H1's attention beside a Mamba2 mixer): the pair (layer_parts); a sparse attention layer's: its
    # LayerCache and its indexer key pages [pool, page_size, 1, Di] (the pair, layer_parts; models/sparse_attention.py)
    tokens: jax.Array  # [B] the last token of each slot, fed at the next step
    positions: jax.Array  # [B] where that token will be written
    done: jax.Array  # [B] bool
    generated: jax.Array  # [B] tokens generated so far
    max_new: jax.Array  # [B]
    limit: jax.Array  # [B] a slot pauses (not done) when its next write position reaches this
    seen: jax.Array  # [B, V] bool: tokens in the sequence (repetition penalty)
    counts: jax.Array  # [B, V] int16: times each token was generated (presence / frequency penalties; kept by
    # the steps of kind PENALIZED, which every row with a penalty takes: sampling.step_kind)
    eos: jax.Array  # [B, E] token ids that end each slot's sequence (-1 pads): its EOS ids (none under ignore_eos),
    # then its stop_token_ids (E: the engine's EOS ids + sampling.STOP_TOKEN_IDS_MAX); min_tokens holds them back
    params: RowParams


@dataclass
class Counters:
    """Traces of each jitted step (a trace is a compile); tests assert on these. `calls`: the
    (rows, length, keys, kind) of every prefill program traced (the steps' own counters
    only; Runner.compiled_calls): kind the sampling kind, or (sampling kind, top width, prompt)
    for a call that returns log-probabilities besides (`_prefill`)."""

    prefill: int = 0
    decode: int = 0
    verify: int = 0  # decode calls with speculative decoding (Engine speculative_tokens)
    calls: set = dataclasses.field(default_factory=set, repr=False, compare=False)


class Steps(NamedTuple):
    """The jitted steps of one model structure (`steps`), shared by its runners."""

    counters: Counters
    prefill: Callable  # prefill calls of more than SMALL_CALL positions
    prefill_small: Callable  # the others (runtime.small_call_options)
    decode: Callable
    zeros: Callable  # a zero SlotState
    speculate: Callable  # decode with speculative decoding: drafts looked up and verified on the device
    scrub: Callable  # pages of the pool zeroed (those of a request whose logits were not finite: Engine._error)


# ----------------------------------------------------------------------------------------------
# The jitted steps, made once per (model structure, chunk, kernels, mesh) in a process: every
# engine of that model shares them, so a second engine, or a new jaxllm.generate call, compiles
# nothing its shapes have already met. `graphdef`, the counters and the attention kernels are
# bound with functools.partial before jit.


@functools.cache
def steps(graphdef, chunk: int, attention: str, mesh, kv_shapes: tuple, scales: bool = False,
           decode_options: tuple = (), small_options: tuple = (), recurrent: tuple = (), indexed: tuple = ()):
    """The Steps jitted for this model structure; `kv_shapes`: each layer's (kv heads, head_dim), None
    for a layer that caches nothing (ModelConfig.kv_shape); `scales`: the pool holds int8 scales (the state's structure on a mesh);
    `decode_options`, `small_options`: XLA options of the decode step and of small prefill calls,
    (name, value) pairs (jaxllm.runtime.decode_options, small_call_options); `recurrent`: each layer's
    recurrent StateShape (models/mixers.state_shapes; None: it keeps no recurrent state), or () for a model without any;
    `indexed`: each layer's indexer key shape (models/mixers.index_shapes; None: none), or () for a model without any."""
    options, small = dict(decode_options) or None, dict(small_options) or None
    counters = Counters()
    dp = "dp" if mesh is not None and mesh.shape["dp"] > 1 else None
    # Sampling reads whole rows of logits (max, sum, argmax, top-k over the vocabulary): on a mesh
    # that splits the vocabulary over tp, gathering the logits once costs one collective, where
    # sampling on the split rows costs six small ones a step, each a point where the devices wait
    # for each other (issue 15). Under dp's shard_map the steps see per-shard arrays: left as is.
    gather = sharding.replicated(mesh) if mesh is not None and dp is None else None
    prefill = functools.partial(_prefill, graphdef, counters, attention, gather)
    decode = functools.partial(_decode, graphdef, counters, chunk, attention, gather)
    speculate = functools.partial(_speculate, graphdef, counters, chunk, attention, gather)
    sizes = tuple(range(11))  # _zero_state's arguments are all static
    if mesh is None:
        return Steps(counters, *(jax.jit(prefill, static_argnums=(0, 1, 2, 3), donate_argnums=5, compiler_options=o) for o in (None, small)),
                     jax.jit(decode, static_argnums=(0, 1, 2, 3), donate_argnums=5, compiler_options=options),
                     jax.jit(_zero_state, static_argnums=sizes),
                     jax.jit(speculate, static_argnums=(0, 1, 2, 3, 4), donate_argnums=6, compiler_options=options),
                     jax.jit(_scrub, donate_argnums=0))
    # On a mesh: the pool is split like the kv projections (an int8 pool's scales [pool, page, K]
    # like its first three dims) and over dp by pages; the slots over dp; what the host reads back
    # is replicated, so every process of a multi-host run can read it.
    rep = sharding.replicated(mesh)

    def layer_cache(shape, state, index):
        rec = None
        if state is not None:  # recurrent state rows: over dp like the slots, their heads over tp as the layer's
            zeros = jax.eval_shape(lambda: zero_state(state, mesh.shape["dp"], jnp.float32))
            rec = RecurrentState(*(jax.sharding.NamedSharding(mesh, sharding.spec_for(axes, z.shape, mesh, "a recurrent state"))
                                   for axes, z in zip(state.logical_axes(), zeros)))
        if shape is None:
            return layer_parts(None, rec)
        pool = sharding.pool_sharding(mesh, shape[0])
        spec = tuple(pool.spec) + (None,) * (4 - len(pool.spec))
        scale = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec[:3])) if scales else None
        # indexer key pages: a pool of one key head (whole on each tp device, over dp by pages)
        return layer_parts(LayerCache(pool, pool, scale, scale), rec, None if index is None else sharding.pool_sharding(mesh, 1))

    rows = sharding.dp_rows(mesh)  # replicated when dp = 1
    none = (None,) * len(kv_shapes)
    cache = [layer_cache(*parts) for parts in zip(kv_shapes, recurrent or none, indexed or none)]
    state = jax.tree.map(lambda _: rows, jax.eval_shape(lambda: _zero_state(1, 1, 1, (), 1, 1, ("float32", None))))
    state = state._replace(cache=cache)
    if mesh.shape["dp"] > 1:  # each dp shard computes its own rows on its own pages and slots
        prefill, decode, speculate = (_per_shard(mesh, f, statics, replicated) for f, statics, replicated in
                                      ((prefill, 4, ()), (decode, 4, (4,)), (speculate, 5, (4,))))
    return Steps(counters, *(jax.jit(prefill, static_argnums=(0, 1, 2, 3), donate_argnums=5, out_shardings=(state, rep, rep, rep, rep),
                                     compiler_options=o) for o in (None, small)),
                 jax.jit(decode, static_argnums=(0, 1, 2, 3), donate_argnums=5, out_shardings=(state, rep, rep, rep, rep),
                         compiler_options=options),
                 jax.jit(_zero_state, static_argnums=sizes, out_shardings=state),
                 jax.jit(speculate, static_argnums=(0, 1, 2, 3, 4), donate_argnums=6,
                         out_shardings=(state, rep, rep, rep, rep, rep), compiler_options=options),
                 jax.jit(_scrub, donate_argnums=0, out_shardings=state))


def _per_shard(mesh, step, statics: int, replicated: tuple[int, ...]):
    """`step` (its first `statics` arguments static, then the weights, then arrays whose leading
    dimension is dp blocks, but those whose place after the weights, from 0, is in `replicated`) run
    under shard_map over 'dp': weights replicated over dp, tp and fsdp left to the compiler."""
    rows, whole = jax.sharding.PartitionSpec("dp"), jax.sharding.PartitionSpec()
    # Only 'dp' manual when other axes split the step; all of them when dp is the only split: a
    # custom-partitioned op (cuDNN attention) fails to partition under partly automatic axes (jax
    # 0.11.2 on GPUs), and with every axis manual nothing is left to partition.
    manual = {"dp"} if any(size > 1 for axis, size in mesh.shape.items() if axis != "dp") else set(mesh.axis_names)

    def run(*args):
        fixed, params, rest = args[:statics], args[statics], args[statics + 1 :]
        specs = (whole,) + tuple(whole if i in replicated else rows for i in range(len(rest)))
        body = jax.shard_map(functools.partial(step, *fixed), mesh=mesh, in_specs=specs, out_specs=rows,
                             axis_names=manual, check_vma=False)
        return body(params, *rest)

    return run


def _zero_state(rows, pool, page_size, kv_shapes, vocab, eos_width, dtypes, recurrent=(), state_rows=0,
                model_dtype="float32", indexed=()) -> SlotState:
    """An empty state: `pool` pages per layer (the managed ones, a trash page that unused table
    entries point at, then rounded up to a multiple of the rows: cuDNN's paged kernel wants the
    pool to split evenly over them) of each layer's (kv heads, head_dim) in `kv_shapes` (None: the
    layer caches nothing) in dtypes (values, scales or None), and `rows` decode slots; a layer with a
    `recurrent` shape keeps a zero RecurrentState of `state_rows` rows (its conv inputs in `model_dtype`); one with an
    `indexed` shape its indexer key pages beside its keys and values (in `model_dtype`)."""
    values, scales = dtypes

    def layer(kv_shape, state, index):
        rec = None if state is None else zero_state(state, state_rows, model_dtype)
        if kv_shape is None:
            return layer_parts(None, rec)
        shape = (pool, page_size) + tuple(kv_shape)
        kv = [jnp.zeros(shape, values) for _ in range(2)]
        keys = None if index is None else jnp.zeros((pool, page_size) + tuple(index), model_dtype)
        return layer_parts(LayerCache(*kv) if scales is None else LayerCache(*kv, *(jnp.zeros(shape[:3], scales) for _ in range(2))),
                           rec, keys)

    none = (None,) * len(kv_shapes)
    return SlotState(
        cache=[layer(*parts) for parts in zip(kv_shapes, recurrent or none, indexed or none)],
        tokens=jnp.zeros(rows, jnp.int32), positions=jnp.zeros(rows, jnp.int32), done=jnp.ones(rows, bool),
        generated=jnp.zeros(rows, jnp.int32), max_new=jnp.ones(rows, jnp.int32), limit=jnp.zeros(rows, jnp.int32),
        seen=jnp.zeros((rows, vocab), bool), counts=jnp.zeros((rows, vocab), jnp.int16), eos=jnp.full((rows, eos_width), -1, jnp.int32),
        params=jax.tree.map(jnp.asarray, RowParams.of([SamplingParams().resolved()] * rows)),
    )


def _scrub(state: SlotState, pages) -> SlotState:
    """`state` with pages [P] of every layer's pool zeroed (keys, values, their scales, indexer keys; an index past
    the pool: none). A page that held NaN or Inf would poison the sequence it is handed to next: attention weighs the
    positions past that sequence's length by 0, and 0 x NaN is NaN."""

    def part(x):
        if x is None or isinstance(x, RecurrentState):  # a recurrent state row starts from zeros (models/recurrent.py)
            return x
        if isinstance(x, LayerCache):
            return LayerCache(*map(part, x))
        if isinstance(x, tuple):  # (pages, state), (pages, indexer key pages): mixers.layer_parts
            return tuple(map(part, x))
        return x.at[pages].set(0, mode="drop")

    return state._replace(cache=[part(layer) for layer in state.cache])


def call_kind(sampling: int, top: int, prompt: bool, masked: bool = False):
    """A prefill call's kind as Counters.calls names it: the sampling kind; (sampling kind, top width, prompt) for a
    call returning log-probabilities besides; either as (kind, "masked") for a call with structured-output masks."""
    kind = (sampling, top, prompt) if top or prompt else sampling
    return (kind, "masked") if masked else kind


COUNT_MAX = 2**15 - 1  # a token's count saturates here (int16): its penalty is already beyond any logit


def _counted(counts, token, mask):
    """`counts` [B, V] with each row's `token` [B] counted once more where `mask` [B] (saturating at COUNT_MAX)."""
    rows, token = jnp.arange(counts.shape[0]), jnp.maximum(token, 0)
    now = jnp.minimum(counts[rows, token].astype(jnp.int32) + mask, COUNT_MAX)
    return counts.at[rows, token].set(now.astype(counts.dtype))


def _whole(logits, gather):
    """`logits` replicated over the mesh (`gather` a replicated sharding), or as they are (None)."""
    return logits if gather is None else jax.lax.with_sharding_constraint(logits, gather)


def _forward(model, cache, tokens, starts, lengths, table, kv_len, attention, state_rows=None):
    """The hidden states [R, C, E] of rows of tokens [R, C] at positions starts.. (the first `lengths` [R] of each
    real), their keys and values written into the rows' pages (`table`), and the new cache: a prefill chunk, or a
    decode slot's last token and its drafts (`_verify`)."""
    c = tokens.shape[1]
    positions = starts[:, None] + jnp.arange(c)[None, :]
    valid = jnp.arange(c)[None, :] < lengths[:, None]
    kv = PagedCache(table, valid, kv_len, attention, state_rows=state_rows)  # state_rows: each row's recurrent state
    return model.hidden(tokens, positions, cache, kv, lengths=starts + lengths)


def _prefill(graphdef, counters, attention, gather, kv_len, sampling, top, prompt, params, state: SlotState, slots, tokens, starts,
             lengths, table, history, rp: RowParams, generated, max_new, eos, limit, state_rows, targets, allowed=None):
    """Returns (state, token [R], logprob [R], done [R], extra). `top` (static, sampling.logprob_width): 0, or
    the width of the most likely tokens returned at each row's last position; `prompt` (static): the rows
    score their chunk, `targets` [R, C] the token after each position (-1: none). extra: None for a call of
    neither, else (top (ids, logprobs) [R, top] or None, prompt (logprobs [R, C] of the targets (0 where
    -1), top (ids, logprobs) [R, C, top] or None, ranks [R, C] of the targets) or None). `allowed` [R, ceil(V / 32)]
    int32: the tokens each row may sample (structured outputs: sampling.sample), or None (a program of its own: call_kind)."""
    counters.prefill += 1
    counters.calls.add((*tokens.shape, kv_len, call_kind(sampling, top, prompt, allowed is not None)))
    model = nnx.merge(graphdef, params)
    n = tokens.shape[0]
    hidden, cache = _forward(model, state.cache, tokens, starts, lengths, table, kv_len, attention, state_rows)
    last = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
    logits = _whole(model.logits(last)[:, 0], gather)
    extra = None if not (top or prompt) else (top_logprobs(logits, top) if top else None,
                                              _prompt_logprobs(model, hidden, targets, top, gather) if prompt else None)
    rows = jnp.arange(n)
    seen = jnp.zeros(logits.shape, bool).at[rows[:, None], jnp.maximum(history, 0)].max(history >= 0)
    counts = None
    if sampling == PENALIZED:  # the output's token counts: the history's last `generated` tokens (a recomputed sequence's output)
        at, end = jnp.arange(history.shape[1])[None, :], (starts + lengths)[:, None]
        output = (history >= 0) & (at >= end - generated[:, None]) & (at < end)
        counts = jnp.zeros(logits.shape, jnp.int32).at[rows[:, None], jnp.maximum(history, 0)].add(output)
        counts = jnp.minimum(counts, COUNT_MAX).astype(jnp.int16)
    token, logprob = sample(logits, seen, rp, generated, sampling, counts, eos, allowed)
    bad = ~jnp.all(jnp.isfinite(logits), axis=-1)
    token = jnp.where(bad, ERROR, token)
    generated = generated + 1
    done = jnp.any(token[:, None] == eos, axis=-1) | (generated >= max_new) | bad

    def put(big, small):
        return big.at[slots].set(small.astype(big.dtype), mode="drop")

    state = SlotState(
        cache=cache,
        tokens=put(state.tokens, token),
        positions=put(state.positions, starts + lengths),
        done=put(state.done, done),
        generated=put(state.generated, generated),
        max_new=put(state.max_new, max_new),
        limit=put(state.limit, limit),
        seen=put(state.seen, seen.at[rows, jnp.maximum(token, 0)].set(True)),
        counts=state.counts if counts is None else put(state.counts, _counted(counts, token, token >= 0)),
        eos=put(state.eos, eos),
        params=jax.tree.map(put, state.params, rp),
    )
    return state, token, logprob, done, extra


PROMPT_POSITIONS = 512  # positions (over the call's rows) whose logits a prompt-scoring prefill holds at once


def _prompt_logprobs(model, hidden, targets, top: int, gather):
    """_chunk_logprobs of a prefill's hidden states [R, C, E], its positions taken in blocks of at most
    PROMPT_POSITIONS // R (lax.map): a chunk's whole [R, C, V] logits (1.2 GB at 2,048 positions of a
    152k vocabulary, and as much again for their log_softmax) would not fit the room that the pool
    leaves beside it (serving/memory.py's spare), where a block's do."""
    r, c = targets.shape
    block = next(b for b in range(min(c, max(1, PROMPT_POSITIONS // r)), 0, -1) if c % b == 0)

    def split(x):  # [R, C, ...] -> [C / block, R, block, ...]
        return x.reshape(r, c // block, block, *x.shape[2:]).swapaxes(0, 1)

    out = jax.lax.map(lambda part: _chunk_logprobs(_whole(model.logits(part[0]), gather), part[1], top),
                      (split(hidden), split(targets)))
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(r, c, *x.shape[3:]), out)


def _chunk_logprobs(logits, targets, top: int):
    """Each position's log-probability of the token after it: logits [R, C, V], targets [R, C] (-1:
    none, 0 there); with its `top` most likely (ids, logprobs) [R, C, top], or None for top 0; and its
    rank [R, C] (vLLM's: the tokens at least as likely, itself included, so 1 for the likeliest)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)
    rank = jnp.sum(logp >= chosen, axis=-1, dtype=jnp.int32)
    return jnp.where(targets >= 0, chosen[..., 0], 0.0), top_of(logp, top) if top else None, rank


def _active(st: SlotState):
    """[B] the slots that compute a token this step: not done, and not paused at their page limit."""
    return ~st.done & (st.positions < st.limit)


def _advance(st: SlotState, logits, active, sampling, top: int, allowed=None):
    """One decode step's token choice from `logits` [B, V] (the model's at each slot's position), for the `active`
    [B] slots: the token sampled (ERROR where the logits are not finite), then the slot's state moved past it (its
    position, generated count, done, seen tokens, counts). Returns (state, token [B] (-1: inactive), logprob [B],
    top (ids, logprobs) [B, top] or None)."""
    b = st.tokens.shape[0]
    penalized = sampling == PENALIZED
    token, lp = sample(logits, st.seen, st.params, st.generated, sampling, *((st.counts, st.eos) if penalized else (None, None)),
                       allowed)
    bad = active & ~jnp.all(jnp.isfinite(logits), axis=-1)
    token = jnp.where(active, jnp.where(bad, ERROR, token), -1)
    generated = st.generated + active
    finished = active & ((generated >= st.max_new) | jnp.any(token[:, None] == st.eos, axis=-1) | bad)
    st = st._replace(
        tokens=jnp.where(active, token, st.tokens),
        positions=st.positions + active,
        done=st.done | finished,
        generated=generated,
        seen=st.seen.at[jnp.arange(b), jnp.maximum(token, 0)].max(active),
        counts=_counted(st.counts, token, active & (token >= 0)) if penalized else st.counts,
    )
    return st, token, jnp.where(active, lp, 0.0), top_logprobs(logits, top) if top else None


def _decode_step(model, st: SlotState, active, table, kv_len, attention, gather, sampling, top, allowed=None, shared=None,
                 offsets=None, cascade=None):
    """One decode step for the `active` [B] slots: each one's last token through the model at its position (its keys
    and values written into its page), then `_advance`; cascade attention (`_decode`) where `shared` [1, S / ps] is
    given. Returns what `_advance` does."""
    kv = PagedCache(table, active[:, None], kv_len, attention, None if shared is None else shared[0], offsets, cascade)
    hidden, cache = model.hidden(st.tokens[:, None], st.positions[:, None], st.cache, kv)
    logits = _whole(model.logits(hidden)[:, 0], gather)
    return _advance(st._replace(cache=cache), logits, active, sampling, top, allowed)


def _decode(graphdef, counters, chunk, attention, gather, kv_len, sampling, cascade, top, params, state: SlotState, table,
            limit, stop, steps, shared, offsets, allowed=None):
    """Up to `steps` (a traced scalar <= chunk) decode steps over all slots. out[b, i] is the i-th new token of slot b in this call,
    or -1 once the slot is done or paused at its page limit. `cascade` (static): None, or
    (shared_keys, suffix_keys, others) for rows that begin with the pages shared [1, S / ps]
    (`offsets` [B] keys each; 0 for the others, which read their own tables; models/attention.py
    PagedCache). Under dp's shard_map each shard loops while its own rows are busy: its devices
    (a tp group, if any) share its rows, so they meet their collectives equally often, and no
    shard waits on another's step. `top` (static, sampling.logprob_width): 0, or the width of the most likely
    tokens returned at each step (ids and logprobs [B, chunk, top], the fifth output; None for 0). `allowed`
    [B, ceil(V / 32)] int32 (structured outputs), or None: the tokens each row may sample, the same at every
    step (the engine runs such calls one step at a time, its host computing each step's masks)."""
    counters.decode += 1
    model = nnx.merge(graphdef, params)
    state = state._replace(done=state.done | stop, limit=limit)

    def body(carry):
        i, st, (out, out_lp, out_top) = carry
        st, token, lp, best = _decode_step(model, st, _active(st), table, kv_len, attention, gather, sampling, top, allowed,
                                           shared, offsets, cascade)
        if top:
            out_top = tuple(o.at[:, i].set(x) for o, x in zip(out_top, best))
        return i + 1, st, (out.at[:, i].set(token), out_lp.at[:, i].set(lp), out_top)

    def cond(c):
        busy = _busy(c[1])
        return (c[0] < jnp.minimum(steps, chunk)) & busy

    _, state, (out, out_lp, out_top) = jax.lax.while_loop(cond, body, (jnp.int32(0), state, _outputs(state, chunk, top)))
    return state, out, out_lp, state.done, out_top


def _busy(st: SlotState):
    """Some slot is neither done nor paused at its page limit."""
    return ~jnp.all(st.done | (st.positions >= st.limit))


def _outputs(st: SlotState, chunk: int, top: int):
    """A decode call's empty outputs: tokens [B, chunk] (-1: none), logprobs [B, chunk], top (ids, logprobs)
    [B, chunk, top] or None for top 0."""
    b = st.tokens.shape[0]
    return (jnp.full((b, chunk), -1, jnp.int32), jnp.zeros((b, chunk), jnp.float32),
            (jnp.zeros((b, chunk, top), jnp.int32), jnp.zeros((b, chunk, top), jnp.float32)) if top else None)


def _steps_axis(best):
    """A step's top (ids, logprobs) [B, top] as one step of a [B, steps, top] block (None stays None)."""
    return None if best is None else tuple(x[:, None] for x in best)


def _written(outputs, at, tokens, lps, best):
    """`outputs` (_outputs) with each row's `tokens` [B, n] (-1: none, written nowhere), their logprobs [B, n] and
    top (ids, logprobs) [B, n, top] (or None) written from column `at` [B] on."""
    out, out_lp, out_top = outputs
    rows, n = jnp.arange(tokens.shape[0])[:, None], tokens.shape[1]
    cols = jnp.where(tokens != -1, at[:, None] + jnp.arange(n)[None, :], out.shape[1])  # past the end: dropped

    def put(big, small):
        return big.at[rows, cols].set(small, mode="drop")

    return put(out, tokens), put(out_lp, lps), None if best is None else tuple(map(put, out_top, best))


def _verify_step(model, st: SlotState, active, drafts, lengths, table, kv_len, attention, gather, sampling, top):
    """Speculative decoding's step: every `active` [B] slot's last token and its first `lengths` [B] drafted tokens
    `drafts` [B, k] computed in one forward pass at the slot's positions (keys and values written into its pages as a
    prefill chunk's are), then k + 1 decode steps' token choices (`_advance`) from those logits, a slot going on while
    the token it chose is its next draft. The tokens are those its decode steps would have chosen one by one: the first
    that differs from the draft is the slot's last this step (the logits after it were computed on a draft the
    sequence does not have), and a sampled slot draws each token as decode does (its seed, its count), so a draft is
    kept with the probability the sampler gives it, and on a miss the token drawn is one of the others by their
    probabilities: exact rejection sampling of a deterministic draft. The keys and values of drafts not kept lie past
    the slot's position, where its next steps write over them. Returns (state, tokens [B, k + 1] (-1: none),
    logprobs [B, k + 1], top (ids, logprobs) [B, k + 1, top] or None)."""
    b, k = drafts.shape
    tokens = jnp.concatenate([st.tokens[:, None], drafts], axis=1)
    hidden, cache = _forward(model, st.cache, tokens, st.positions, jnp.where(active, lengths + 1, 0), table, kv_len,
                             attention)
    logits = _whole(model.logits(hidden), gather)  # [B, k + 1, V]
    after = jnp.where(jnp.arange(k)[None, :] < lengths[:, None], drafts, -1)
    after = jnp.concatenate([after, jnp.full((b, 1), -1, after.dtype)], axis=1)  # the draft after each position (-1: none)

    def step(carry, xs):
        st, going = carry
        at_logits, draft = xs
        st, token, lp, best = _advance(st, at_logits, going & _active(st), sampling, top)
        return (st, going & (token == draft)), (token, lp, best)

    # the cache stays out of the loop's carry: the scan only chooses tokens
    # unrolled: k + 1 is small (on an H200 the same time as the loop)
    (st, _), (out, out_lp, best) = jax.lax.scan(step, (st._replace(cache=None), active), (logits.swapaxes(0, 1), after.T),
                                                unroll=True)
    return st._replace(cache=cache), out.T, out_lp.T, None if best is None else tuple(x.swapaxes(0, 1) for x in best)


def _speculate(graphdef, counters, chunk, attention, gather, kv_len, verify_len, sampling, top, k, params,
               state: SlotState, table, limit, stop, steps, history, wait):
    """`_decode` with speculative decoding by prompt lookup (Engine speculative_tokens): up to `steps` steps, each
    a verify step (`_verify_step`) where some row drafts, else a decode step, until every row has `chunk` tokens or
    none is busy. Before each step every row looks its last tokens up in its own sequence (ngram.propose_rows on
    `history` [B, H], row b's tokens at their positions, written on as the step goes), drafting at most k tokens and
    no more than its pages (`limit`), its max_new_tokens and the call's `chunk` tokens leave room for beside the
    token after them; a row drafts only once its sequence holds `wait` [B] tokens: after a verify step that kept
    none of its drafts, it decodes `chunk` tokens plainly first (a verify step costs more than a decode step: 1.1x
    for Llama-3-8B on an H200, more where the batch is large). Decode steps read `kv_len` keys, verify steps
    `verify_len` (a prefill chunk's bucket). Returns what `_decode` does, then (verify steps [1], drafted [B],
    kept [B], wait [B]).

    The choice of step is two inner while loops, not a lax.cond: decode steps while no row drafts, then one verify
    step if one does. A cond whose branches update the page pool made XLA copy the whole pool three times a step
    (its branches' outputs and the loop's carry: 30% of Llama-3-8B's batch-64 step on an H200), where a loop's
    carry is updated in place."""
    counters.verify += 1
    model = nnx.merge(graphdef, params)
    state = state._replace(done=state.done | stop, limit=limit)
    b, h = history.shape
    rows = jnp.arange(b)

    def going(c):  # steps left, and a busy row with room for a token in the call's output
        i, st, n = c[:3]
        return (i < jnp.minimum(steps, chunk)) & jnp.any(_active(st) & (n < chunk))

    def lookup(st, n, history, wait):  # (active [B], each row's tokens [B], drafts [B, k], their lengths [B]) before a step
        active = _active(st) & (n < chunk)
        size = st.positions + 1  # each row's tokens: its last one is at its position
        room = jnp.minimum(jnp.minimum(st.limit - size, st.max_new - st.generated - 1), chunk - n - 1)
        drafts, lengths = ngram.propose_rows(history, size, k)
        return active, size, drafts, jnp.where(active & (size >= wait), jnp.clip(room, 0, lengths), 0)

    # The carry: (steps taken, state, tokens each row has in the output, histories, outputs, stats, a verify step
    # still allowed, the next step's lookup), the lookup made once after each step, read by the loops' conditions
    # and by the step that follows.
    def kept(c, st, tokens, lps, best, verified=False):  # the carry after a step's tokens [B, m]
        i, _, n, history, outputs, (steps_verified, drafted, accepted, wait), once, (_, size, drafts, lengths) = c
        made = jnp.sum(tokens != -1, axis=1)
        cols = jnp.where(tokens >= 0, size[:, None] + jnp.arange(tokens.shape[1])[None, :], h)  # each at its position
        history = history.at[rows[:, None], cols].set(tokens, mode="drop")
        stats = (steps_verified, drafted, accepted, wait)
        if verified:  # a verify step: count its drafts and those kept; a row that kept none backs off
            offered = jnp.where(jnp.arange(k)[None, :] < lengths[:, None], drafts, ERROR - 1)  # none: matches no token
            hits = jnp.sum(jnp.cumprod(tokens[:, :k] == offered, axis=1), axis=1)
            wait = jnp.where((lengths > 0) & (hits == 0), size + made + chunk, wait)
            stats, once = (steps_verified + 1, drafted + lengths, accepted + hits, wait), False
        n = n + made
        return i + 1, st, n, history, _written(outputs, c[2], tokens, lps, best), stats, once, lookup(st, n, history, wait)

    def decode(c):
        active = c[-1][0]
        st, token, lp, best = _decode_step(model, c[1], active, table, kv_len, attention, gather, sampling, top)
        return kept(c, st, token[:, None], lp[:, None], _steps_axis(best))

    def verify(c):
        active, _, drafts, lengths = c[-1]
        st, tokens, lps, best = _verify_step(model, c[1], active, drafts, lengths, table, verify_len, attention, gather,
                                             sampling, top)
        return kept(c, st, tokens, lps, best, verified=True)

    def drafting(c):
        return jnp.any(c[-1][3] > 0)

    def body(c):
        c = jax.lax.while_loop(lambda c: going(c) & ~drafting(c), decode, c)
        c = c[:6] + (True, c[7])  # at most one verify step (a loop of at most one trip: its carry is updated in place)
        return jax.lax.while_loop(lambda c: c[6] & going(c) & drafting(c), verify, c)

    zeros = jnp.zeros(b, jnp.int32)
    stats = (jnp.zeros(1, jnp.int32), zeros, zeros, wait)
    carry = (jnp.int32(0), state, zeros, history, _outputs(state, chunk, top), stats, jnp.bool_(False),
             lookup(state, zeros, history, wait))
    _, state, _, _, (out, out_lp, out_top), stats, _, _ = jax.lax.while_loop(going, body, carry)
    return state, out, out_lp, state.done, out_top, stats
