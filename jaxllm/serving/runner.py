"""The device side of the serving core: the KV page pool, per-slot decode state, and two jitted
steps (nano-vllm's model runner). The host (engine, scheduler) decides; this only computes.

  prefill(rows of chunks [R, C])  each row computes a chunk of one sequence at positions
                                  start..start+len-1: keys and values written into its pages
                                  (PagedCache), attention over every earlier position; a row whose
                                  chunk ends its prefill samples the next token and is placed in
                                  its decode slot (sampling values, EOS ids, repetition state)
                                  (rows of SamplingParams.prompt_logprobs: also each position's
                                  log-probability of the prompt token after it, a static variant;
                                  rows with structured outputs: a mask of the tokens allowed, another)
  decode(kv_len, steps)           up to `steps` (<= chunk) steps for every slot in a
                                  lax.while_loop, each writing one token's keys and values into
                                  its page; a row whose logits are not finite ends with ERROR
                                  (both: the most likely tokens' log-probabilities too when a row
                                  asks for top_logprobs, a static width: sampling.logprob_width)
  speculate(tokens, steps)        decode with speculative decoding: the same loop, where before each step
                                  every slot drafts the tokens that followed its last n-gram earlier in its
                                  sequence (prompt lookup, jaxllm/serving/ngram.py), and a step where some
                                  slot drafted computes each slot's last token and its drafts in one
                                  forward pass, as many kept as its decode steps would have chosen, then
                                  the one after them
  score(tokens, pages, chunk)     teacher-forced log-probabilities of a token sequence: prefill
                                  calls of one row that scores its prompt, chunk by chunk through
                                  the pool (later chunks read the keys the earlier ones cached, in
                                  the cache's dtype), placed in no slot; each position's likeliest
                                  token through a top of width 1 (an argmax), not the prompt path's 20

The pool holds the model's dtype, or 8-bit keys and values (`kv_dtype` "int8": int8 with a scale
per token and kv head; "fp8": float8 e4m3), quantized as they are written (models/attention.py
`kv_format`, `PagedCache`).

Data parallelism (a mesh with dp > 1): the state splits over 'dp' on its leading dimension, so
each dp group of devices holds a contiguous range of the pool's pages (its managed pages, its
trash page, rounding) and of the decode slots, and every call's rows come in dp equal blocks (block
i: shard i's rows). The steps run under `jax.shard_map` over 'dp' alone (weights replicated over
it; tp and fsdp stay automatic, split as the rules say), with page ids and slot numbers local to
the shard: no device reads another's pages or slots, so a step moves nothing across dp (the host
reads back its few small outputs replicated), and a shard's decode loop runs while its own rows
are busy, never waiting on another shard's step.

The state (pool and slots) is donated, so XLA updates it in place. Shapes are bucketed (rows,
chunk length, keys read) so a workload meets few compiles; the jitted steps belong to the model's
structure (jaxllm/serving/steps.py), so every engine of a model shares what was compiled; `counters` counts the
traces.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np

from jaxllm import sharding, structured
from jaxllm.models.attention import cudnn_decodes_whole, cudnn_serves, kv_format
from jaxllm.models.mixers import index_shapes, state_shapes
from jaxllm.models.paged_decode import cudnn_paged_rows
from jaxllm.sampling import RowParams, SamplingParams, logprob_width, step_kind
from jaxllm.serving.steps import Counters, SlotState, call_kind
from jaxllm.serving.steps import steps as make_steps

if TYPE_CHECKING:
    from jaxllm.serving.cascade import Cascade
    from jaxllm.structured import Grammar

SMALL_CALL = 256  # prefill calls of at most this many positions (rows x length) are small: see Runner._prefill


@dataclass
class Row:
    """One prefill row: `tokens` (the chunk) of a sequence whose full token list is `history`, at
    positions start.. ; `slot` receives the sequence when the chunk ends its prefill (`last`)."""

    slot: int
    history: list[int]
    start: int
    length: int
    pages: list[int]
    last: bool
    params: SamplingParams
    eos: np.ndarray
    generated: int
    shard: int = 0  # the data-parallel shard of its pages and slot
    scores_prompt: bool = False  # return each position's log-probability of the next prompt token (Sequence.scores_prompt)
    grammar: Grammar | None = None  # a last chunk's structured-output matcher (synced to its output): what it may sample


class PrefillResult(NamedTuple):
    """One row's answer from Runner.prefill; token, logprob and done meaningful for `last` rows only. `top`: the
    row's top_logprobs most likely (id, logprob) pairs at its last position, best first ([] when it asks for
    none). `prompt` (rows that score their prompt, else None): (logprobs float32 [length] of the token after
    each position of the chunk (NaN where no prompt token follows), each position's top pairs, its rank)."""

    token: int
    logprob: float
    done: bool
    top: list
    prompt: tuple | None


def pool_pages(num_pages: int, rows: int) -> int:
    """Pages the runner allocates per layer for `num_pages` managed ones: a trash page that unused
    table entries point at, then rounded up to a multiple of the rows (cuDNN's paged kernel wants
    the pool to split evenly over them)."""
    return -(-(num_pages + 1) // rows) * rows


def recurrent_rows(slots: int, shards: int) -> int:
    """Rows of each linear-attention layer's recurrent state for `slots` decode slots over `shards` dp
    shards: per shard a row per slot of it, then its scratch row (padding rows and scoring write there)."""
    return shards * (slots // shards + 1)


def bucket(n: int, smallest: int) -> int:
    """The power of two >= n, at least `smallest`."""
    size = smallest
    while size < n:
        size *= 2
    return size


class Runner:
    def __init__(self, model, *, num_pages: int, page_size: int, max_seqs: int, max_len: int, chunk: int,
                 attention: str, eos_width: int, kv_dtype: str | None = None, decode_options: tuple = (),
                 small_options: tuple = ()):
        self._model, self.cfg = weakref.ref(model), model.config  # its engine keeps it (or not: Engine.hold_weakly)
        self.num_pages, self.page_size, self.max_seqs, self.max_len = num_pages, page_size, max_seqs, max_len
        self.width = -(-max_len // page_size)  # page-table columns: pages of the longest sequence
        self.eos_width, self.attention = eos_width, attention
        self.dtype = model.dtype
        self.mesh = getattr(model, "mesh", None)
        self.shards = self.mesh.shape["dp"] if self.mesh is not None else 1
        if self.shards > 1 and attention == "cudnn" and any(n > 1 for a, n in self.mesh.shape.items() if a != "dp"):
            self.attention = attention = "xla"  # cuDNN's custom partitioning fails under shard_map's partly automatic axes (jax 0.11.2)
        if not cudnn_serves(self.cfg):  # sinks or ALiBi, which no cuDNN decode call takes: every layer runs the XLA /
            self.attention = attention = "xla"  # blocked forms, whose reads are bucketed to the keys in use (decode_keys)
        if num_pages % self.shards or max_seqs % self.shards:
            raise ValueError(f"{num_pages} pages and {max_seqs} slots do not split over dp={self.shards}")
        self.shard_pages, self.shard_seqs = num_pages // self.shards, max_seqs // self.shards  # per dp shard
        values, scales = kv_format(kv_dtype, self.dtype)
        # the rows per cuDNN paged decode call over a shard's pool (paged_decode.cudnn_paged_rows; 0: none fits)
        self.cudnn_rows = cudnn_paged_rows(pool_pages(self.shard_pages, self.shard_seqs), self.shard_seqs, self.width)
        # decode_keys: cuDNN's paged call takes the whole table only from a pool of at least its width in pages (per shard);
        # from a smaller one it gathered every row's whole table each step (paged_decode's "cudnn" fallback)
        self.whole_table = attention == "cudnn" and cudnn_decodes_whole(self.cfg, self.dtype, kv_dtype) and self.cudnn_rows > 0
        self.kv_dtype = (values.name, None if scales is None else scales.name)  # the pool's (values, scales) dtypes
        kv_shapes = tuple(map(self.cfg.kv_shape, range(self.cfg.num_layers)))
        # Recurrent layers' states (recurrent_rows): slot s of shard i is its row s (local)
        recurrent = state_shapes(self.cfg)
        self.scratch_row = self.shard_seqs  # each shard's scratch row, local
        indexed = index_shapes(self.cfg)  # sparse attention's indexer key pages beside the keys and values
        steps = make_steps(model.graphdef, chunk, attention, self.mesh, kv_shapes, scales is not None, decode_options,
                           small_options, recurrent, indexed)
        (self._traces, self._prefill_large, self._prefill_small, self._decode, self._zeros, self._speculate,
         self._scrub) = steps
        self._before = dataclasses.replace(self._traces)  # what engines before this one compiled
        pool = self.shards * pool_pages(self.shard_pages, self.shard_seqs)
        self._sizes = (max_seqs, pool, page_size, kv_shapes, self.cfg.output_vocab, eos_width, self.kv_dtype, recurrent,
                       recurrent_rows(max_seqs, self.shards) if recurrent else 0, np.dtype(self.dtype).name, indexed)

    @property
    def model(self):
        return self._model()

    def _put(self, x):
        """A host array as a call's input: on a mesh, placed replicated; on one device, the host array itself,
        which the jitted call moves with its other inputs in one go (each placed on its own first, a decode
        call's six inputs took 1.4 ms on an H200: a third of a batch-64 step)."""
        return np.asarray(x) if self.mesh is None else sharding.put_replicated(x, self.mesh)

    def _put_rows(self, x):
        """A host array whose leading dimension is dp blocks of rows: each dp group gets its block."""
        if self.shards == 1:
            return self._put(x)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding.dp_rows(self.mesh), lambda index: x[index])

    @property
    def counters(self) -> Counters:
        """The traces (compiles) of the steps since this runner was made: a new engine whose
        shapes earlier engines of the model met counts none."""
        t, b = self._traces, self._before
        return Counters(t.prefill - b.prefill, t.decode - b.decode, t.verify - b.verify)

    def compiled_calls(self) -> set[tuple]:
        """(rows per dp shard, length, keys, kind) of the prefill calls compiled for this model so
        far (by any engine of it; traced under dp's shard_map, the rows are a shard's); kind: the
        sampling kind, or (sampling kind, top width, prompt) for calls returning log-probabilities besides."""
        return set(self._traces.calls)

    def _compiled_length(self, rows: int, length: int, keys: int, sampling: bool) -> int:
        """`length`, or for a small call (<= 256 positions) whose shape has not been compiled, the
        shortest compiled length of the same rows, keys and sampling up to 4x longer: the rest of
        a prompt behind a cached prefix (a prompt sent again, a chat's next turn) would otherwise
        compile a shape of its own (3.8 s on a 2-core CPU for SmolLM2) for a call that pads
        cheaply."""
        compiled = self.compiled_calls()
        if rows * length > SMALL_CALL or (rows, length, keys, sampling) in compiled:
            return length
        return min((c for n, c, s, smp in compiled if (n, s, smp) == (rows, keys, sampling) and length < c <= 4 * length),
                   default=length)

    def new_state(self) -> SlotState:
        return self._zeros(*self._sizes)

    def kv_bucket(self, reach: int, smallest: int = 256) -> int:
        """Keys an attention call reads: a power of two >= `smallest` covering `reach` positions,
        capped at the page table's span (one compile per bucket used)."""
        return min(bucket(reach, smallest), self.width * self.page_size)

    def decode_keys(self, reach: int) -> int:
        """Keys a decode call may read. cuDNN's paged kernel reads only each row's own length, so
        where it decodes every layer without a window it gets the whole table (one compile); the XLA
        form gathers what it is handed, so a model with a layer it decodes buckets (cudnn_decodes_whole), and
        so does a pool of fewer pages than the table is wide, which that kernel does not take (cudnn_rows 0)."""
        return self.width * self.page_size if self.whole_table else self.kv_bucket(reach)

    def table(self, pages_of_rows: list[list[int]], shards: list[int] | None = None) -> np.ndarray:
        """[len, width] page table of page ids local to each row's shard (default: the decode
        slots' shards, row i of shard i // slots per shard); unused entries point at the shard's
        trash page."""
        n = self.shard_pages
        out = np.full((len(pages_of_rows), self.width), n, np.int32)
        for i, pages in enumerate(pages_of_rows):
            shard = i // self.shard_seqs if shards is None else shards[i]
            local = np.asarray(pages, np.int64) - shard * n
            if len(local) and not (0 <= local.min() and local.max() < n):
                raise RuntimeError(f"row {i} has pages outside its shard {shard}: {pages}")
            out[i, : len(pages)] = local
        return out

    def prefill_keys(self, reach: int) -> int:
        """Keys a prefill call gathers for rows reaching `reach` positions: buckets from 2,048
        keep the shapes few."""
        return self.kv_bucket(reach, 2048)

    def prefill(self, state: SlotState, rows: list[Row], rows_bucket: int, length_bucket: int, top: int | None = None):
        """One prefill call over `rows` (padded to rows_bucket x length_bucket). `top`: the static width of the most
        likely tokens returned (default: the rows' sampling.logprob_width, the serving path's; `score` asks for 1).
        Returns (state, a PrefillResult per row)."""
        s = self.prefill_keys(max(r.start + r.length for r in rows))
        sampling, prompt = step_kind(r.params for r in rows), any(r.scores_prompt for r in rows)
        top = logprob_width(r.params for r in rows) if top is None else top
        where = self._places(rows, rows_bucket)
        grammars = {i: r.grammar for i, r in zip(where, rows) if r.grammar is not None}  # structured outputs' rows
        length_bucket = self._compiled_length(rows_bucket, length_bucket, s, call_kind(sampling, top, prompt, bool(grammars)))
        state, token, logprob, done, extra = self._prefill(rows_bucket, length_bucket)(
            s, sampling, top, prompt, self.model.params, state, *self._prefill_inputs(rows, rows_bucket, length_bucket, s, where, prompt),
            *((self._masks(grammars, rows_bucket * self.shards),) if grammars else ()))
        token, logprob, done, extra = jax.device_get((token, logprob, done, extra))  # the copies overlap
        best, chunk = extra if extra is not None else (None, None)
        out = []
        for i, r in zip(where, rows):
            k, scored = r.params.top_logprobs, None
            if r.scores_prompt:
                follows = np.arange(r.start + 1, r.start + r.length + 1) < len(r.history)
                scored = (np.where(follows, chunk[0][i, : r.length], np.nan).astype(np.float32),
                          [top_pairs(chunk[1], (i, j), k) for j in range(r.length)], chunk[2][i, : r.length].tolist())
            out.append(PrefillResult(int(token[i]), float(logprob[i]), bool(r.last and done[i]), top_pairs(best, (i,), k), scored))
        return state, out

    def _prefill(self, rows: int, length: int):
        """The jitted prefill for calls of `rows` x `length` positions: the small calls' (<= 256
        positions) compiled with runtime.small_call_options, the others as they are."""
        return self._prefill_small if rows * length <= SMALL_CALL else self._prefill_large

    def _places(self, rows: list[Row], n: int) -> list[int]:
        """The row of a call of dp blocks of n rows that each of `rows` takes: its shard's block."""
        taken, where = [0] * self.shards, []
        for r in rows:
            if taken[r.shard] == n:
                raise RuntimeError(f"more than {n} rows of shard {r.shard} in one prefill call")
            where.append(r.shard * n + taken[r.shard])
            taken[r.shard] += 1
        return where

    def _prefill_inputs(self, rows: list[Row], n: int, c: int, s: int, where: list[int] | None = None,
                        prompt: bool = False) -> tuple:
        """The device inputs of a prefill call after the state: rows padded to dp blocks of n x c
        (`where`: each row's place), s keys; with `prompt`, the token after each position of the
        rows that score their prompt (else None)."""
        where = self._places(rows, n) if where is None else where
        m = n * self.shards
        tokens = np.zeros((m, c), np.int32)
        history = np.full((m, s), -1, np.int32)
        starts, lengths = np.zeros(m, np.int32), np.zeros(m, np.int32)
        slots = np.full(m, self.shard_seqs, np.int32)  # padding and unfinished rows place nothing
        state_rows = np.full(m, self.scratch_row, np.int32)  # a row's recurrent state: its slot's (padding: scratch)
        max_new, limit, generated = np.ones(m, np.int32), np.zeros(m, np.int32), np.zeros(m, np.int32)
        eos = np.full((m, self.eos_width), -1, np.int32)
        params = [SamplingParams().resolved()] * m
        pages, shards = [[] for _ in range(m)], [i // n for i in range(m)]
        for i, r in zip(where, rows):
            pages[i] = r.pages
        table = self.table(pages, shards)
        for i, r in zip(where, rows):
            tokens[i, : r.length] = r.history[r.start : r.start + r.length]
            end = r.start + r.length
            history[i, :end] = r.history[:end]
            starts[i], lengths[i] = r.start, r.length
            if r.slot >= 0:  # the last chunk's slot; every chunk's, for a model with recurrent state
                local = r.slot - r.shard * self.shard_seqs  # local to the shard
                if not 0 <= local < self.shard_seqs:
                    raise RuntimeError(f"slot {r.slot} is not of shard {r.shard}")
                state_rows[i] = local
                if r.last:
                    slots[i] = local
            max_new[i], limit[i], generated[i] = r.params.max_new_tokens, len(r.pages) * self.page_size, r.generated
            eos[i, : len(r.eos)] = r.eos
            params[i] = r.params
        targets = None
        if prompt:
            targets = np.full((m, c), -1, np.int32)
            for i, r in zip(where, rows):
                follow = r.history[r.start + 1 : r.start + r.length + 1] if r.scores_prompt else []
                targets[i, : len(follow)] = follow
        put = self._put_rows
        return (put(slots), put(tokens), put(starts), put(lengths), put(table), put(history),
                jax.tree.map(put, RowParams.of(params)), put(generated), put(max_new), put(eos), put(limit), put(state_rows),
                None if targets is None else put(targets))

    def _masks(self, grammars: dict[int, Grammar], rows: int):
        """The device's [rows, ceil(V / 32)] int32 masks of a call (structured.masks: each row of `grammars` the tokens
        its matcher allows next, the others every token), prefill's and decode's alike."""
        return self._put_rows(structured.masks(grammars, rows, self.cfg.output_vocab))

    def _decode_inputs(self, table: np.ndarray, limit: np.ndarray, stop: np.ndarray, steps: int) -> tuple:
        """The device inputs of a decode or speculative decode call after the state."""
        put = self._put_rows
        return put(table), put(limit), put(stop), self._put(np.int32(steps))

    def _cascade_inputs(self, shared: np.ndarray | None = None, offsets: np.ndarray | None = None) -> tuple:
        """A decode call's cascade inputs after _decode_inputs' (zeros: no cascade)."""
        shared = np.zeros((self.shards, 1), np.int32) if shared is None else shared
        offsets = np.zeros(self.max_seqs, np.int32) if offsets is None else offsets
        return self._put_rows(shared), self._put_rows(offsets)

    def compile(self, state: SlotState, prefill_shapes, decode_keys, sampling: bool = False,
                speculative: tuple[int, list[int]] = (0, []), top: int = 0, prompt: bool = False) -> None:
        """Compile the steps of these shapes ((rows, length, keys) prefill calls; decode calls
        reading `decode_keys` keys; `speculative`: (drafted tokens k, the history widths of speculative decode
        calls: Runner.speculate's buckets)) ahead of their first use, returning `top` most likely tokens
        (sampling.logprob_width) and, the prefill calls, with `prompt` the prompt's log-probabilities; a later call of
        the same shape finds its program in jit's cache."""
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        b = self.max_seqs
        jobs = [functools.partial(self._prefill(n, c).lower, s, sampling, top, prompt, self.model.params, spec,
                                  *self._prefill_inputs([], n, c, s, prompt=prompt)) for n, c, s in prefill_shapes]
        idle = self._decode_inputs(self.table([[]] * b), np.zeros(b, np.int32), np.ones(b, bool), 1)
        jobs += [functools.partial(self._decode.lower, k, sampling, None, top, self.model.params, spec, *idle,
                                   *self._cascade_inputs()) for k in decode_keys]
        drafts, widths = speculative
        jobs += [functools.partial(self._speculate.lower, self.decode_keys(h), h, sampling, top, drafts, self.model.params, spec,
                                   *idle, *self._speculate_inputs([[]] * b, np.zeros(b, np.int32), h)) for h in widths]
        for job in jobs:
            job().compile()

    def score(self, state: SlotState, tokens: list[int], pages: list[int], chunk: int, shard: int = 0):
        """Teacher-forced scores of `tokens` prefilled `chunk` at a time into `pages` (of `shard`),
        each chunk's queries reading what the chunks before it cached: prefill calls of one row that
        scores its prompt (the path of SamplingParams.prompt_logprobs) and places nothing in a slot; the
        most likely token at each position is a top of width 1 (an argmax: sampling.top_of), a program of
        its own beside the serving path's widths 0 and TOP_LOGPROBS_MAX (a top-20 at every position took
        an H200 5.1 ms a 512-position block of a 152k vocabulary, the argmax 0.31 ms). Returns (state,
        log p(tokens[t] | tokens[:t]) for t >= 1 float32 [len - 1], the most likely token after each
        prefix tokens[:t] for t >= 1, int32 [len - 1])."""
        params = SamplingParams(max_new_tokens=0, prompt_logprobs=True, top_logprobs=1).resolved()
        logps, best = [], []
        for start in range(0, len(tokens) - 1, chunk):  # the last token is only a target
            row = Row(-1, tokens, start, min(chunk, len(tokens) - start), pages, False, params, np.zeros(0, np.int32), 0,
                      shard, scores_prompt=True)
            state, (result,) = self.prefill(state, [row], 1, chunk, top=1)
            logprobs, tops, _ = result.prompt  # (logprobs, top pairs, ranks)
            follows = ~np.isnan(logprobs)
            logps.append(logprobs[follows])
            best += [pairs[0][0] for pairs, f in zip(tops, follows) if f]
        return state, (np.concatenate([np.zeros(0, np.float32), *logps]), np.asarray(best, np.int32))

    def decode(self, state: SlotState, table: np.ndarray, limit: np.ndarray, stop: np.ndarray, kv_len: int,
               sampling: bool, steps: int, cascade: Cascade | None = None, top: int = 0, grammars: dict[int, Grammar] | None = None):
        """Up to `steps` (<= chunk) decode steps for every slot, attention as `cascade` says when
        given. Returns (state, tokens [B, chunk] (-1: none; ERROR: the logits were not finite,
        the slot is done), logprobs [B, chunk], done [B], top: None, or with `top` > 0
        (sampling.logprob_width) the most likely tokens at each step, (ids, logprobs) [B, chunk, top] (top_pairs reads them)).
        `grammars` (structured outputs: slot -> its matcher, whose state says the tokens the slot may sample; the engine
        asks for one step), or None or {}: the programs without masks."""
        keys, shared, offsets = (None, None, None) if cascade is None else (cascade.keys, cascade.table, cascade.offsets)
        masks = (self._masks(grammars, self.max_seqs),) if grammars else ()
        state, out, out_lp, done, best = self._decode(kv_len, sampling, keys, top, self.model.params, state,
                                                      *self._decode_inputs(table, limit, stop, steps),
                                                      *self._cascade_inputs(shared, offsets), *masks)
        return (state, *jax.device_get((out, out_lp, done, best)))  # one wait for the four copies

    def speculate(self, state: SlotState, table: np.ndarray, limit: np.ndarray, stop: np.ndarray, tokens: list[list[int]],
                  wait: np.ndarray, k: int, reach: int, sampling: int, steps: int, top: int = 0):
        """`decode` with speculative decoding by prompt lookup, drafting up to `k` tokens on the device before each
        step (steps._speculate): `tokens` each slot's sequence (prompt and output; [] for a slot not decoded), looked
        up for drafts; a slot drafts once its sequence holds `wait` [B] tokens. Its verify steps' keys are bucketed as
        a prefill call's that reaches `reach` positions (the whole table would be read from every page for cuDNN's
        decode kernel). Returns what `decode` does, then (verify steps, drafted tokens [B], kept [B], wait [B]): each
        slot's count of drafted and kept tokens, and the size its sequence must reach before it drafts again."""
        width = self.kv_bucket(reach)
        state, out, out_lp, done, best, stats = self._speculate(
            self.decode_keys(width), width, sampling, top, k, self.model.params, state,
            *self._decode_inputs(table, limit, stop, steps), *self._speculate_inputs(tokens, wait, width))
        out, out_lp, done, best, (verified, drafted, kept, wait) = jax.device_get((out, out_lp, done, best, stats))
        return state, out, out_lp, done, best, (int(verified.sum()), drafted, kept, wait)

    def scrub(self, state: SlotState, pages: list[int]) -> SlotState:
        """`state` with `pages` (the block manager's ids) zeroed in every layer's pool (steps._scrub), their count
        padded to a power of two (a compile per bucket, on the error path only)."""
        per_shard = pool_pages(self.shard_pages, self.shard_seqs)
        rows = np.full(bucket(len(pages), 8), self.shards * per_shard, np.int32)  # past the pool: dropped
        for i, page in enumerate(pages):
            shard = page // self.shard_pages
            rows[i] = shard * per_shard + page - shard * self.shard_pages
        return self._scrub(state, self._put(rows))

    def _speculate_inputs(self, tokens: list[list[int]], wait: np.ndarray, width: int) -> tuple:
        """A speculative decode call's inputs after decode's: each slot's tokens at their positions [B, width] (-1
        past them), and the sequence size at which each slot drafts again."""
        history = np.full((self.max_seqs, width), -1, np.int32)
        for slot, seq in enumerate(tokens):
            history[slot, : len(seq)] = seq
        return self._put_rows(history), self._put_rows(np.asarray(wait, np.int32))


def top_pairs(top, at: tuple, k: int) -> list[tuple[int, float]]:
    """The first `k` (id, logprob) pairs of host top arrays (ids, logprobs) at index `at`, best first
    ([] for k 0 or no arrays)."""
    if top is None or not k:
        return []
    ids, lps = top[0][at][:k], top[1][at][:k]
    return list(zip(ids.tolist(), lps.tolist()))
