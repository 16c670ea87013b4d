"""The serving engine: requests in, token events out, over a paged KV cache (nano-vllm's
llm_engine, in JAX). The pieces, each in its own small file:

  jaxllm/serving/requests.py       Request, Event, Score: what goes in and comes out
  jaxllm/serving/admission.py      the engine's options and each request checked against the model, refused in one line
  jaxllm/serving/block_manager.py  pages, reference counts, the prefix cache (host)
  jaxllm/serving/scheduler.py      who runs this step: prefill chunks within a token budget,
                                   the decode batch, preemption when pages run out (host)
  jaxllm/serving/cascade.py        which cached pages a decode call's rows share, read once (host)
  jaxllm/serving/ngram.py          speculative decoding's drafts: a sequence's own earlier n-grams (device)
  jaxllm/serving/shapes.py         the prefill calls' menu of shapes, and the shapes and programs a workload needs (host)
  jaxllm/serving/memory.py         how many KV pages the pool holds (host, once)
  jaxllm/serving/runner.py         the page pool and each call's inputs, shapes and buckets (host)
  jaxllm/serving/steps.py          the jitted prefill / decode / speculative decode steps (device)
  jaxllm/serving/events.py         what an Event says of a sequence: its stop ids, finish reason, prompt scores, error (host)

Each `step()` runs this step's prefill chunks (new prompts, long prompts chunk by chunk, sequences
recomputed after preemption), then up to `chunk` decode steps for every running sequence (only
`chunk // 16` while a waiting request could start, so free rows fill quickly), so a long prompt
delays running sequences by one chunk at a time. With speculative_tokens, each decode step where a sequence finds a
draft in its own earlier tokens is a verify step instead, chosen on the device (docs/architecture.md, speculative
decoding). Requests can be added and aborted
between steps (`add`, `abort`); `run` serves a list to the end; `score` gives teacher-forced
log-probabilities of a token sequence through the cache (perplexity in the cache's kv_dtype).

On a mesh with dp > 1 the one engine serves dp groups of devices at once: the decode rows and the
page pool split into dp shards, a sequence runs on one shard (its slot and pages; the scheduler
balances them), and each step computes every shard's rows in one call, each group on its own
(jaxllm/serving/runner.py).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Iterator

import jax
import numpy as np

from jaxllm import runtime, structured
from jaxllm.errors import GenerationError, check_prompt_ids
from jaxllm.models.attention import check_kv_dtype
from jaxllm.models.config_fields import token_ids
from jaxllm.sampling import STOP_TOKEN_IDS_MAX, logprob_width, step_kind
from jaxllm.serving import admission, memory
from jaxllm.serving import cascade as cascade_plan
from jaxllm.serving.block_manager import BlockManager
from jaxllm.serving.events import complete, error_message, finish_reason, keep_prompt_scores, prompt_fields, stops, synced
from jaxllm.serving.requests import Event, Request, Score, context_error, fit_advice  # noqa: F401 (jaxllm.engine's API)
from jaxllm.serving.runner import Row, Runner, top_pairs
from jaxllm.serving.scheduler import PrefillChunk, Scheduler
from jaxllm.serving.sequence import Sequence, Status
from jaxllm.serving.shapes import CallShapes, variants
from jaxllm.serving.steps import ERROR

log = logging.getLogger("jaxllm")


class Engine:
    """Serves requests over one pool of KV pages.

    batch_size: sequences decoded at once (at most). max_len: the longest sequence (prompt + new
    tokens) a request may reach; default the model's positions. Pages: `num_pages` of
    `page_size` tokens (at most max_len: a larger page's rest would never be written), or by default
    `memory_fraction` of the device memory left after the weights (on a CPU, which reports none: batch_size
    full-length sequences). prefill_tokens: the per-step token budget of prompt chunks (at most batch_size x
    max_len: what a step can hold); chunk: decode steps per call (at most max_len). prefix_caching: reuse the pages of earlier prompts'
    shared prefixes (off for models whose keys depend on the sequence length: dynamic NTK and
    LongRoPE rope, and for models with recurrent layers: Qwen3-Next, Qwen3.5, LFM2). `attention`: "cudnn" or "xla" kernels (default: jaxllm.runtime's choice).
    kv_dtype: how the cache stores keys and values: None the model's dtype, "int8" (a scale per
    token and kv head) or "fp8" (float8 e4m3); 8-bit halves the bytes of a cached token, so the
    same memory holds about twice the pages. Default: the model's `kv_dtype` attribute (what
    jaxllm.load was given), else None. cascade: how decode reads a prompt prefix that running
    sequences share (cached pages): None reads it once for all of them (cascade attention) when
    that reads fewer keys than each sequence reading its own (jaxllm/serving/cascade.py), True whenever
    they share a page, False never.

    speculative_tokens: k > 0 turns on speculative decoding by prompt lookup (vLLM's "ngram" method, no draft
    model): before each decode step, on the device, each sequence looks up the latest earlier occurrence of its last
    4 (down to 2) tokens in its own prompt and output, and drafts the k tokens that followed it
    (jaxllm/serving/ngram.py); where one does, the step is a verify step: one forward pass computes every row's last
    token and its drafts, keeping as many drafts as its decode steps would have chosen, and the token after them
    (steps._speculate): up to k + 1 tokens for one read of the weights.
    The tokens are those decoding gives without it, greedy and sampled alike (a sampled row draws each token as
    decode does; a draft is kept when that draw is the draft, with the probability the sampler gives it), and
    penalties and top_logprobs are as without it. A step whose rows have no draft decodes as without it, and so does
    a call with a structured-output request (its masks follow the grammar token by token). Default: the model's `speculative_tokens` attribute (what the command lines'
    --speculative-tokens set), else 0 (off). Refused for models whose state a rejected draft cannot roll back
    (recurrent layers) or whose keys depend on how a sequence is split into calls (dynamic NTK, LongRoPE).

    On a mesh with dp > 1: batch_size is rounded up to a multiple of dp (batch_size / dp rows per
    dp group), the pool has dp equal shards of at least one max_len sequence each (num_pages is
    rounded up to that), and prefill_tokens is the budget of each shard. The prefix cache is per
    shard: a prefix cached on another shard than the one a sequence is placed on is computed again.
    """

    def __init__(self, model, batch_size: int = 8, max_len: int | None = None, *, num_pages: int | None = None,
                 page_size: int = 16, memory_fraction: float = 0.9, prefill_tokens: int = 2048, chunk: int = 16,
                 prefix_caching: bool = True, attention: str | None = None, kv_dtype: str | None = None,
                 cascade: bool | None = None, speculative_tokens: int | None = None):
        if not all(hasattr(model, name) for name in ("config", "graphdef", "params")):
            raise GenerationError(f"Engine(model, ...) takes a model from jaxllm.load, got {type(model).__name__}: "
                                  "Engine(jaxllm.load(path), ...)")
        cfg = model.config
        self.kv_dtype = check_kv_dtype(getattr(model, "kv_dtype", None) if kv_dtype is None else kv_dtype, cfg)
        max_len = cfg.context_length if max_len is None else max_len
        sizes = dict(batch_size=(batch_size, 1), max_len=(max_len, 2), page_size=(page_size, 1),
                     prefill_tokens=(prefill_tokens, 1), chunk=(chunk, 1), num_pages=(num_pages, 1))
        for name, (value, least) in sizes.items():
            if not (value is None and name == "num_pages") and (
                    not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least):
                raise GenerationError(f"Engine {name}={value!r} is invalid: use a whole number >= {least}"
                                      + (" (or None for the model's positions)" if name == "max_len" else "")
                                      + (" (or None to size the pool from the device's memory)" if name == "num_pages" else ""))
        if attention not in (None, "cudnn", "xla"):
            raise GenerationError(f"Engine attention={attention!r} is invalid: use None (the platform's choice), 'cudnn' or 'xla'")
        if not isinstance(prefix_caching, (bool, np.bool_)):  # "no" is true, None false: neither is meant
            raise GenerationError(f"Engine prefix_caching={prefix_caching!r} is invalid: use True or False")
        if cascade not in (None, True, False):
            raise GenerationError(f"Engine cascade={cascade!r} is invalid: use None (when it reads fewer keys), True or False")
        self.cascade = cascade
        self.speculative = admission.speculative_tokens(model, cfg, speculative_tokens)
        if (not isinstance(memory_fraction, (int, float, np.integer, np.floating)) or isinstance(memory_fraction, bool)
                or not 0 < memory_fraction <= 1):
            raise GenerationError(f"Engine memory_fraction={memory_fraction!r} is invalid: use a number in (0, 1]")
        batch_size, max_len, page_size, prefill_tokens, chunk = map(int, (batch_size, max_len, page_size, prefill_tokens, chunk))
        max_len = min(max_len, cfg.context_length)  # no request may run past the model's positions (check)
        mesh = getattr(model, "mesh", None)
        self.dp = dp = mesh.shape["dp"] if mesh is not None else 1  # data-parallel shards of the rows and pages
        batch_size = -(-batch_size // dp) * dp
        # A step never prefills more than every row's whole sequence, and no sequence decodes past
        # max_len: larger values would only size the arrays of a call (a budget or chunk of 10**9
        # allocated gigabytes and failed deep inside XLA).
        prefill_tokens, chunk = min(prefill_tokens, batch_size // dp * max_len), min(chunk, max_len)
        # Nor does a page hold more than max_len positions: the rest of a larger page is never written, only allocated
        # (page_size=10**6 sized the pool of a 64-token engine at 10**6 positions a page; cuDNN's decode read them all).
        page_size = min(page_size, max_len)
        self.speculative = min(self.speculative, max_len - 1)  # no more drafts than a sequence has room for (10**20: numpy's error)
        self._model, self.cfg = model, cfg
        self.batch_size, self.max_len, self.chunk = batch_size, max_len, chunk
        # Decode steps of a call while a waiting request could start: few, so that it starts soon
        # (a free row decodes nothing until its sequence is admitted at the next prefill step).
        self.admit_steps = max(1, chunk // 16)
        # transformers' generate stops at generation_config.json's eos_token_id when the file names one (Llama 3
        # Instruct's lists more ids than config.json, some checkpoints fewer), else at config.json's: stopping at
        # the union ended answers early at an id transformers generates through.
        eos = sorted(set(token_ids(model.generation_config.get("eos_token_id")) or cfg.eos_token_ids))
        self.eos = np.asarray(eos or [-1], np.int32)
        # Keys that depend on the sequence's length (dynamic NTK, LongRoPE) or on how the prompt is split (Dory's
        # last_loop: ModelConfig.whole_prefill) are neither shared nor computed in chunks: a prompt is prefilled
        # whole, as transformers does.
        self.whole_prefill = whole = cfg.whole_prefill
        self.budget = max(prefill_tokens, max_len) if whole else prefill_tokens
        rope = cfg.rope
        # LongRoPE switches from its short to its long factors once a sequence outgrows
        # original_max_position_embeddings, and for Phi-3 transformers then recomputes the whole
        # cache with the long ones: a sequence whose next write position reaches this is recomputed.
        self.rope_switch = rope.original_max_position_embeddings if (
            rope.type == "longrope" and cfg.longrope_recompute and rope.original_max_position_embeddings < max_len) else None
        self.width = -(-max_len // page_size)
        num_pages = memory.pool_size(model, self.kv_dtype, page_size, memory_fraction, num_pages, batch_size=batch_size,
                                     max_len=max_len, budget=self.budget, dp=dp)
        if dp > 1:  # equal shards, each of room for at least one sequence of max_len
            num_pages = dp * max(-(-num_pages // dp), self.width)
        if batch_size > num_pages:  # the runner rounds the pool up to a multiple of the rows: a batch beyond it
            raise GenerationError(  # only allocated memory (batch_size=10**6 died in XLA's allocator)
                f"Engine batch_size={batch_size:,} is more than its {num_pages:,} KV pages of {page_size} tokens: every "
                f"sequence holds a page at least, so rows beyond them never run; lower batch_size to at most {num_pages:,}")
        # Prefix caching shares pages of keys and values; a model with recurrent layers (Qwen3-Next, LFM2) would
        # also need each layer's state at the page's end, which no page holds: such models cache no prefixes.
        self.recurrent = cfg.recurrent
        self.blocks = BlockManager(num_pages, page_size, prefix_caching and not whole and not self.recurrent,
                                   shards=dp)
        # Chunks of at most a quarter of the budget, so the prompts of a step share calls of several
        # rows (a 2,050-token prompt is 2,048 + 2, not one row padded to the whole budget).
        max_chunk = None if whole else max(16, prefill_tokens // 4)
        # a verify step writes a row's last token and its drafts: pages for k + 1 positions at least
        self.scheduler = Scheduler(self.blocks, batch_size, self.budget, max(chunk, min(self.speculative + 1, max_len)), max_chunk)
        self.shapes = CallShapes(self.budget, batch_size // dp)  # the prefill calls' menu of shapes
        self.runner = Runner(model, num_pages=num_pages, page_size=page_size, max_seqs=batch_size, max_len=max_len,
                             chunk=chunk, attention=attention or runtime.attention_impl(), eos_width=len(self.eos) + STOP_TOKEN_IDS_MAX,
                             kv_dtype=self.kv_dtype, decode_options=runtime.decode_options(),
                             small_options=runtime.small_call_options())
        self.state = None  # the device state, made on first use and kept (the prefix cache lives in it)
        self.slot_of: dict[Sequence, int] = {}
        self.index_of: dict[Sequence, int] = {}
        self._next_id = 0
        self._compiled: set[tuple] = set()  # shapes precompile() has compiled
        self._grammar_tokenizer = None  # llguidance's tokenizer (structured outputs), made at the first such request
        self._held: list[Event] = []  # a step's prefill events when its decode raised: the next step returns them first

    @property
    def model(self):
        model = self._model() if isinstance(self._model, weakref.ref) else self._model
        if model is None:
            raise GenerationError("this engine's model was freed (an engine cached on a model goes with it): "
                                  "keep a reference to the model, or build your own Engine(model)")
        return model

    def hold_weakly(self) -> "Engine":
        """Refer to the model weakly, for an engine kept on the model itself (generate's engines in
        model.engines): a strong reference back would keep the model, its weights and this pool
        alive after the user's last reference to it is gone, until Python's cycle collector runs."""
        self._model = weakref.ref(self._model) if not isinstance(self._model, weakref.ref) else self._model
        return self

    @property
    def counters(self):
        """Compiles of the prefill and decode steps this engine caused (see Runner.counters)."""
        return self.runner.counters

    # -- requests ----------------------------------------------------------------------------------

    def check(self, req: Request) -> list[int]:
        """Refuse a request that can never run, before anything is computed; returns its prompt's
        ids as Python ints (whatever holds them: a list, a numpy or JAX array). (admission.check_request)"""
        return admission.check_request(req, self.cfg, self.max_len, self.blocks, self.grammar_tokenizer)

    def add(self, req: Request) -> Sequence:
        """Queue a request; its events carry `req.index`, which no other request the engine holds
        (queued or running) may have. Returns its sequence (for `abort`)."""
        ids = self.check(req)
        admission.check_indices([req], self.index_of.values())
        return self._add(req, ids)

    def grammar_tokenizer(self):
        """llguidance's tokenizer over the model's, ending at this engine's EOS ids (made once, at the first
        request for structured output)."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = structured.tokenizer(self.model.tokenizer, self.eos.tolist())
        return self._grammar_tokenizer

    def _add(self, req: Request, ids: list[int]) -> Sequence:
        seq = Sequence(self._next_id, ids, req.params.with_seed())  # unseeded: its own random seed
        if req.params.structured is not None:
            seq.grammar = structured.Grammar(req.params.structured, self.grammar_tokenizer())
        self.scheduler.add(seq)
        self._next_id += 1
        self.index_of[seq] = req.index
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop a request wherever it is; its pages go back (full ones stay in the prefix cache). A
        sequence this engine does not hold (finished, aborted, another engine's) is left alone."""
        if not isinstance(seq, Sequence):
            raise GenerationError(f"Engine.abort takes the Sequence that Engine.add returned, got {type(seq).__name__}")
        if seq not in self.index_of:
            return
        self.scheduler.abort(seq)
        self._release(seq)
        self._held = [ev for ev in self._held if ev.index != self.index_of[seq]]  # its index may be given again
        self.index_of.pop(seq, None)  # a long-running server must not keep every cancelled request; its index is free again

    def reset(self) -> None:
        """Drop every request and the device state, as after construction (compiled steps are
        kept): what a server does after a step raised, whose donated state may be gone and whose
        host bookkeeping may be half-updated, so the page pool and scheduler are made anew."""
        b, s = self.blocks, self.scheduler
        self.blocks = BlockManager(b.num_pages, b.page_size, b.prefix_caching, shards=b.shards)
        self.scheduler = Scheduler(self.blocks, s.max_seqs, s.prefill_budget, s.lookahead, s.max_chunk)
        self.slot_of.clear()
        self.index_of.clear()
        self._held.clear()
        self.state = None

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._held)

    def run(self, requests: list[Request], stop_check=None) -> Iterator[Event]:
        """Serve every request to the end, yielding Events as tokens arrive; it ends when they have (requests
        added meanwhile with `add` are left to `step`). `stop_check(index)` lets the caller end a request early
        (stop strings): it is aborted at the next step."""
        if self.has_work():  # their events would mix with these requests'
            raise GenerationError("Engine.run on an engine that holds requests added with Engine.add, or by a run() not "
                                  "iterated to its end: serve those with step() (or abort them; close() that run) first, "
                                  "or use another engine")
        requests = admission.request_list(requests, "Engine.run")
        ids = admission.check_all(requests, self.check)  # all of them before any is queued
        admission.check_indices(requests, self.index_of.values())
        seqs = [self._add(req, i) for req, i in zip(requests, ids)]

        def held() -> bool:
            return any(seq in self.index_of for seq in seqs)

        try:
            # while its own requests are held, checked before each step: a reset() drops them, and a run resumed after
            # it must not serve (taking their events) the requests of a run started since
            while held():
                if stop_check is not None:
                    for seq in seqs:
                        if seq in self.index_of and stop_check(self.index_of[seq]):
                            self.abort(seq)
                for step in (self.prefill_step, self.decode_step):  # first tokens out before the decode chunk runs
                    if held():
                        yield from step()
        finally:  # a consumer that stops early leaves no request behind
            for seq in seqs:
                if seq.status is not Status.FINISHED:
                    self.abort(seq)

    def score(self, tokens, chunk: int | None = None) -> Score:
        """Teacher-forced scores of a token sequence through the KV cache: the tokens are
        prefilled `chunk` at a time (default: the largest chunk a prompt is prefilled in) into
        pages of the pool, each chunk's queries reading the keys and values the chunks before it
        cached, in the engine's kv_dtype. Models whose keys depend on the length (dynamic NTK,
        LongRoPE) take the tokens in one chunk. The pages come from the free pool (no
        prefix-cache hits) and go back at the end."""
        ids = check_prompt_ids(tokens, self.cfg, "tokens", dims=(1,), allow_empty=False).tolist()
        chunk = self.scheduler.max_chunk if chunk is None else chunk
        if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
            raise GenerationError(f"score chunk={chunk!r} is invalid: use a whole number >= 1")
        if len(ids) > self.max_len:
            raise GenerationError(f"{len(ids)} tokens exceed the engine's max_len {self.max_len}: raise max_len")
        need = self.blocks.pages_for(len(ids))
        shard = max(range(self.dp), key=self.blocks.free_in)  # the pages of one shard
        if need > self.blocks.free_in(shard):
            where = "" if self.dp == 1 else " in one data-parallel shard"
            raise GenerationError(f"{len(ids)} tokens need {need} KV pages but {self.blocks.free_in(shard)} are free{where}: "
                                  "give the engine more pages, or score when its requests are done")
        chunk = len(ids) if self.whole_prefill else min(int(chunk), len(ids))
        if self.state is None:
            self.state = self.runner.new_state()
        seq = Sequence(-1, ids)
        self.blocks.allocate(seq, share=False, shard=shard)
        try:
            with self._donating():
                self.state, (logprobs, greedy) = self.runner.score(self.state, ids, seq.pages, chunk, shard)
        finally:
            self.blocks.free(seq)
        return Score(logprobs, greedy)

    # -- one step ----------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One step: this step's prefill chunks, then a decode chunk for the running sequences. If the decode raises
        (Ctrl-C while the device computes: _donating), the prefill's events, whose tokens the sequences already hold,
        come first from the next step (they were lost: those requests went on without their first tokens)."""
        events, self._held = self._held, []
        try:
            events += self.prefill_step()
            events += self.decode_step()
        except BaseException:
            self._held = events
            raise
        return events

    def prefill_step(self) -> list[Event]:
        if self.state is None:
            self.state = self.runner.new_state()
        chunks = self.scheduler.schedule_prefill()
        for seq in self.scheduler.running:  # admitted with all but its last token cached: compute that one
            if seq not in self.slot_of and not seq.prefilling and seq.num_cached == seq.num_tokens - 1:
                chunks.append(PrefillChunk(seq, seq.num_cached, 1))
        return self._prefill(chunks) if chunks else []

    def decode_step(self) -> list[Event]:
        batch = self.scheduler.schedule_decode()
        for seq in batch:
            if seq.num_tokens - 1 == self.rope_switch:
                self.scheduler.preempt(seq)
        for seq in [s for s in self.slot_of if s.status is not Status.RUNNING]:
            self._release(seq)  # preempted: recomputed later, in whatever slot is free then
        batch = [seq for seq in batch if seq in self.slot_of and seq.status is Status.RUNNING]
        return self._decode(batch) if batch else []

    def _error(self, seq: Sequence, tokens: list[int], logprobs: list[float] | None = None, top: list | None = None,
               grammar: bool = False) -> Event:
        """End a request whose logits turned non-finite (NaN or Inf), or (`grammar`) whose structured-output matcher
        refused a token: a warning, and its last event, whose `error` says why in one line. The pages of a request
        whose logits were not finite may hold NaN or Inf keys and values, which a sequence given them next would read
        (masked positions are weighted by 0, and 0 x NaN is NaN): they are taken out of the prefix cache and zeroed."""
        index = self.index_of[seq]
        message = error_message(seq, index, grammar)
        self._finish(seq, spoiled=not grammar)
        log.warning("%s", message)
        return Event(index, tokens, logprobs or [], True, error=message, finish_reason="error", top_logprobs=top or [])

    @contextlib.contextmanager
    def _donating(self):
        """Around a call that donates the device state. If it raises once the state is given away
        (Ctrl-C while the device computes, which is where a notebook's interrupt lands), the keys
        and values are gone: the state is made anew at the next step, the prefix cache forgotten,
        and the running sequences queued to be recomputed from their tokens so far. Before, every
        later call of the engine (and of model.generate, which keeps it) failed on a deleted buffer."""
        try:
            yield
        except BaseException:
            if self.state is not None and any(x.is_deleted() for x in jax.tree.leaves(self.state)):
                self.state = None
                for seq in sorted(self.scheduler.running, key=lambda s: -s.arrival):  # the oldest ends up first
                    self.scheduler.preempt(seq)
                self.slot_of.clear()
                self.blocks.reset_prefix_cache()
            raise

    def _release(self, seq: Sequence) -> None:
        self.slot_of.pop(seq, None)

    def _finish(self, seq: Sequence, spoiled: bool = False) -> None:
        """Free a finished sequence's pages and slot; `spoiled`: its pages may hold NaN or Inf (`_error`)."""
        pages = self.scheduler.finish(seq, spoiled)
        if pages:
            with self._donating():
                self.state = self.runner.scrub(self.state, pages)
        self._release(seq)
        self.index_of.pop(seq, None)

    def _free_slot(self, shard: int) -> int:
        """A free decode slot of `shard` (slots shard * batch_size / dp ..)."""
        used, b = set(self.slot_of.values()), self.batch_size // self.dp
        return next(i for i in range(shard * b, (shard + 1) * b) if i not in used)

    def precompile(self, requests: list[Request]) -> None:
        """Compile the steps that serving `requests` can meet and that have not run yet: prefill
        calls of every (rows, length) their chunks may take, the key buckets of their prompts,
        and the decode step (with speculative_tokens, the speculative decode step), of each sampling kind
        (sampling.step_kind), top log-probability width (sampling.logprob_width) and, for prefill, prompt scoring
        (SamplingParams.prompt_logprobs) that a call over some of the requests takes. A server calls it at start-up with
        typical requests, so no client waits for a compile. Not compiled here (each compiles once, when first met):
        the steps with structured-output masks (SamplingParams.structured), cascade decode
        programs (their shared-key buckets depend on which prefixes the running requests share), and
        a preempted sequence's recompute when its prompt plus output reaches a key bucket beyond
        the requests' prompts. (Compiling them on a pool of threads did not make it faster on an
        H200: qwen3-0.6b offline first run 61 s with, 47 s without; 2026-11-28.)"""
        requests = admission.request_list(requests, "Engine.precompile")
        if not requests:
            return
        admission.check_all(requests, self.check)
        if self.state is None:
            self.state = self.runner.new_state()
        reaches = [len(r.prompt) + r.params.max_new_tokens for r in requests]
        prefill, decode = self.shapes.workload(self.runner, self.scheduler.max_chunk, self.chunk,
                                               [len(r.prompt) for r in requests], reaches, bool(self.speculative))
        kind = "speculate" if self.speculative else "decode"
        for sampling, top, prompt in variants([r.params for r in requests]):
            todo = [shape for shape in prefill if ("prefill", shape, sampling, top, prompt) not in self._compiled]
            todo_decode = [k for k in decode if (kind, k, sampling, top) not in self._compiled]
            if todo or todo_decode:
                if self.speculative:  # the speculative decode program takes the decode program's place
                    self.runner.compile(self.state, todo, [], sampling, (self.speculative, todo_decode), top, prompt)
                else:
                    self.runner.compile(self.state, todo, todo_decode, sampling, top=top, prompt=prompt)
            self._compiled |= {("prefill", shape, sampling, top, prompt) for shape in todo}
            self._compiled |= {(kind, k, sampling, top) for k in todo_decode}

    def _prefill(self, chunks: list[PrefillChunk]) -> list[Event]:
        """Run the chunks in calls of the menu's shapes (CallShapes.calls)."""
        events, b = [], self.batch_size // self.dp
        for rows, length, group in self.shapes.calls(chunks, self.dp):
            work = []
            for c in group:
                slot = None
                # a sequence takes its slot at its last chunk; with recurrent layers at its first, whose state
                # row (the slot's) carries the state across its chunks (freed with the slot: _release)
                if c.last or self.recurrent:
                    slot = self.slot_of.get(c.seq)
                    if slot is None or slot // b != c.seq.shard:
                        slot = self.slot_of[c.seq] = self._free_slot(c.seq.shard)
                work.append(Row(slot if slot is not None else -1, c.seq.tokens, c.start, c.length, c.seq.pages, c.last,
                                c.seq.params, stops(self.eos, c.seq.params), len(c.seq.output), c.seq.shard,
                                c.seq.scores_prompt, synced(c.seq) if c.last else None))
            with self._donating():
                self.state, results = self.runner.prefill(self.state, work, rows, length)
            for c, (token, logprob, done, top, scored) in zip(group, results):
                if scored is not None:
                    keep_prompt_scores(c, scored)
                if not c.last:
                    self.scheduler.computed(c)
                    continue
                if token == ERROR:
                    self.scheduler.computed(c)
                    events.append(self._error(c.seq, []))
                    continue
                prompt = prompt_fields(c.seq)
                if c.seq.params.max_new_tokens == 0:  # the prompt scored, nothing generated (SamplingParams.prompt_logprobs)
                    self.scheduler.computed(c)
                    events.append(Event(self.index_of[c.seq], [], [], True, finish_reason="length", **prompt))
                    self._finish(c.seq)
                    continue
                self.scheduler.computed(c, token)
                events.append(self._emit(c.seq, [token], [logprob], [top] if c.seq.params.top_logprobs else [], done, prompt))
        return events

    def _count_drafts(self, batch: list[Sequence], verified: int, drafted: np.ndarray, kept: np.ndarray,
                      wait: np.ndarray) -> None:
        """Count a speculative decode call's verify steps, drafted tokens and those kept (SchedulerStats.verified,
        .drafted, .accepted), and keep each sequence's back-off: a sequence whose drafts all missed drafts nothing
        until it has decoded `chunk` more tokens (Sequence.drafts_from; steps._speculate)."""
        stats = self.scheduler.stats
        stats.verified += verified
        stats.drafted += int(drafted.sum())
        stats.accepted += int(kept.sum())
        for seq in batch:
            seq.drafts_from = int(wait[self.slot_of[seq]])

    def _decode(self, batch: list[Sequence]) -> list[Event]:
        b = self.batch_size
        pages, limit, stop = [[] for _ in range(b)], np.zeros(b, np.int32), np.ones(b, bool)
        for seq in batch:
            slot = self.slot_of[seq]
            pages[slot], limit[slot], stop[slot] = seq.pages, len(seq.pages) * self.blocks.page_size, False
            if self.rope_switch is not None and seq.num_tokens - 1 < self.rope_switch:
                limit[slot] = min(limit[slot], self.rope_switch)
        reach = max(seq.num_tokens for seq in batch) + self.chunk
        sampling = step_kind(seq.params for seq in batch)
        steps = self.admit_steps if self.scheduler.can_admit() else self.chunk
        grammars = {self.slot_of[seq]: seq.grammar for seq in batch if seq.grammar is not None}
        if grammars:  # structured outputs: one step, its masks computed from each matcher's state (Runner.decode)
            steps = 1
        width = logprob_width(seq.params for seq in batch)
        if self.speculative and not grammars:  # speculative decoding: drafts looked up and verified on the device
            wait = np.zeros(b, np.int32)
            tokens = [[] for _ in range(b)]
            for seq in batch:
                tokens[self.slot_of[seq]], wait[self.slot_of[seq]] = seq.tokens, seq.drafts_from
            with self._donating():
                self.state, out, out_lp, done, best, counts = self.runner.speculate(
                    self.state, self.runner.table(pages), limit, stop, tokens, wait, self.speculative, reach, sampling, steps,
                    width)
            self._count_drafts(batch, *counts)
        else:
            cascade = None if self.cascade is False else cascade_plan.plan(
                self.runner, {self.slot_of[seq]: (seq.pages, seq.num_tokens - 1) for seq in batch}, self.chunk,
                force=bool(self.cascade))
            self.scheduler.stats.cascaded += cascade is not None
            with self._donating():
                self.state, out, out_lp, done, best = self.runner.decode(self.state, self.runner.table(pages), limit, stop,
                                                                         self.runner.decode_keys(reach), sampling, steps, cascade,
                                                                         width, grammars)
        events = []
        for seq in batch:
            slot = self.slot_of[seq]
            got = out[slot] >= 0
            tokens = out[slot][got].tolist()
            top = [top_pairs(best, (slot, i), seq.params.top_logprobs) for i in np.flatnonzero(got)] if seq.params.top_logprobs else []
            if tokens:
                self.scheduler.decoded(seq, tokens)
            if (out[slot] == ERROR).any():
                events.append(self._error(seq, tokens, out_lp[slot][got].tolist(), top))
                continue
            event = self._emit(seq, tokens, out_lp[slot][got].tolist(), top, bool(done[slot]))
            if event is not None:
                events.append(event)
        return events

    def _emit(self, seq: Sequence, tokens: list[int], logprobs: list[float], top: list, done, prompt: dict | None = None
              ) -> Event | None:
        """The event of the tokens a call gave `seq` (the scheduler holds them already), its last when the device ended it
        (`done`: an id that ends it), it reached max_new_tokens or its structured output is complete (then it is
        finished); an error event when its structured-output matcher refuses them; None for no tokens and no end.
        `prompt`: the first event's prompt scores (events.prompt_fields)."""
        if seq.grammar is not None and not seq.grammar.advance(tokens):
            return self._error(seq, tokens, logprobs, top, grammar=True)
        finished = done or len(seq.output) >= seq.params.max_new_tokens or complete(seq)
        event = Event(self.index_of[seq], tokens, logprobs, finished, finish_reason=finish_reason(seq, finished, self.eos),
                      top_logprobs=top, **(prompt or {})) if tokens or finished else None
        if finished:
            self._finish(seq)
        return event
