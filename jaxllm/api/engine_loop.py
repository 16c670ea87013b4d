"""The one thread that drives the server's engine.

The engine is not thread-safe, so one thread owns it: it takes submissions and cancellations
from a thread-safe inbox between steps, runs the engine's prefill and decode steps while there
is work (every client's sequences batched together), and hands each step's events to the event
loop in one `call_soon_threadsafe`, where they are routed to the asyncio queue of the HTTP
request they belong to (by `Event.index`). Routing, admission (`submit`) and cancellation
(`Submission.cancel`) run on the event loop only, so they need no locks; the engine thread never
touches a route. While idle it sleeps on the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import traceback
from typing import AsyncIterator

from jaxllm.engine import Engine, Event, Request
from jaxllm.errors import JaxllmError

log = logging.getLogger("jaxllm")


class QueueFull(Exception):
    """More sequences than the engine's batch plus `max_queue` would be waiting."""


class EngineFailed(RuntimeError):
    """The engine thread raised: requests in flight end with this (`status` 500), and the engine
    starts again empty (Engine.reset); if that fails too, every request held and every later one
    ends with this, `status` 503, as does every one open when the server stops (EngineLoop.end)."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


class EngineLoop:
    """Owns `engine` on a thread of its own; `max_queue` sequences may wait beyond a full batch."""

    def __init__(self, engine: Engine, max_queue: int = 256):
        self.engine, self.max_queue = engine, max_queue
        self.error: BaseException | None = None  # why the engine cannot serve (Engine.reset raised), or None
        self.ended: str | None = None  # why the server takes no more requests (it is stopping: end), or None
        self.draining: str | None = None  # why the server is stopping, while the requests open finish (drain), or None
        self.stats: dict = {}  # the engine thread's latest snapshot (running, waiting, pages)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add", Request) | ("abort", index) | None: stop
        self._routes: dict[int, asyncio.Queue] = {}  # unfinished sequence index -> its request's queue (event loop)
        self._next_index = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._publish()

    @property
    def capacity(self) -> int:
        return self.engine.batch_size + self.max_queue

    @property
    def active(self) -> int:
        """Sequences submitted and not finished or cancelled."""
        return len(self._routes)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="jaxllm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- the event loop's side -----------------------------------------------------------------

    def submit(self, requests: list[Request]) -> Submission:
        """Queue the sequences of one HTTP request (their `index` is set here). Raises QueueFull
        or EngineFailed instead of queueing."""
        if self.error is not None or self.ended is not None:
            raise self._refusal()
        if self.active + len(requests) > self.capacity:
            raise QueueFull(f"{self.active} sequences are running or waiting; the server holds {self.capacity}")
        sub = Submission(self, self._next_index, len(requests))
        for req in requests:
            req.index = self._next_index
            self._next_index += 1
            self._routes[req.index] = sub.queue
            self._inbox.put(("add", req))
        return sub

    @property
    def unavailable(self) -> str | None:
        """Why the server takes no new work, in one line (None: it does): the engine failed for good, or the server
        is stopping (its open requests may still be finishing). What /health answers a 503 with."""
        if self.error is not None or self.ended is not None:
            return str(self._refusal())
        return self.draining

    def drain(self, why: str) -> None:
        """The server is stopping (`why`): requests open, and any whose body is still arriving, go on to their
        answers; /health says it takes no new work (unavailable)."""
        self.draining = why

    def _refusal(self) -> EngineFailed:
        if self.error is not None:
            return EngineFailed(f"the engine failed and could not start again ({self.error!r}): restart the server", 503)
        return EngineFailed(f"{self.ended}: retry later", 503)

    def end(self, why: str) -> None:
        """End every request still open with a 503 (`why`, e.g. 'the server is stopping') and refuse
        later ones: a server that stops answers its clients rather than cutting them off."""
        self.ended = why
        for index in list(self._routes):
            self._inbox.put(("abort", index))
        self._fail_all()

    def _fail_all(self) -> None:
        """End every sequence routed (the engine cannot serve them) with the refusal later requests get."""
        err = self._refusal()
        for q in set(self._routes.values()):
            q.put_nowait(err)
        self._routes.clear()

    def _cancel(self, index: int) -> None:
        if self._routes.pop(index, None) is not None:
            self._inbox.put(("abort", index))

    def _deliver(self, events: list[Event]) -> None:
        for ev in events:
            q = self._routes.get(ev.index)
            if q is None:  # cancelled while the step ran
                continue
            q.put_nowait(ev)
            if ev.finished:
                del self._routes[ev.index]

    def _refuse(self, index: int, err: Exception) -> None:
        q = self._routes.pop(index, None)
        if q is not None:
            q.put_nowait(err)

    def _fail(self, err: Exception, indices: set[int]) -> None:
        """End the sequences `indices` (those the engine held when it raised) with `err`; what was
        submitted since runs in the engine as it starts again."""
        for q in {self._routes.pop(i) for i in indices if i in self._routes}:
            q.put_nowait(err)

    # -- the engine thread ---------------------------------------------------------------------

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop has closed: the server is going down
            pass

    def _run(self) -> None:
        seqs = {}  # index -> Sequence, for abort (None while Engine.add runs)
        while True:
            try:
                while self._take(seqs):
                    for step in (self.engine.prefill_step, self.engine.decode_step):  # first tokens out before the decode chunk
                        events = step()
                        for ev in events:
                            if ev.finished:
                                seqs.pop(ev.index, None)
                        if events:
                            self._post(self._deliver, events)
                return
            except Exception as err:  # a bug: say so, fail what is in flight, start again from an empty engine
                traceback.print_exc()
                self._post(self._fail, EngineFailed(f"the engine failed: {err!r}"), set(seqs))
                seqs.clear()
                try:
                    self.engine.reset()
                except Exception as again:  # it cannot start again: fail what came meanwhile, and refuse the rest
                    self.error = again  # set before _fail_all runs: a submit after it is refused, one before it failed
                    log.error("the engine failed and could not start again (%r): every request is refused with 503 until "
                              "the server is restarted", again)
                    self._post(self._fail_all)
                    return

    def _take(self, seqs: dict) -> bool:
        """Apply what the inbox holds (sleeping on it while the engine has no work); False: stop."""
        while True:
            idle = not self.engine.has_work()
            if idle:
                self._publish()
            try:
                msg = self._inbox.get(block=idle)
            except queue.Empty:
                self._publish()
                return True
            if msg is None:
                return False
            kind, arg = msg
            if kind == "add":
                seqs[arg.index] = None  # an add that raises a bug fails this request with those held (_run)
                try:
                    seqs[arg.index] = self.engine.add(arg)
                except JaxllmError as err:
                    del seqs[arg.index]
                    self._post(self._refuse, arg.index, err)
            elif (seq := seqs.pop(arg, None)) is not None:
                self.engine.abort(seq)

    def _publish(self) -> None:
        sched, blocks, traces = self.engine.scheduler, self.engine.blocks, self.engine.counters
        self.stats = {"running": len(sched.running), "waiting": len(sched.waiting), "free_pages": blocks.num_free,
                      "total_pages": blocks.num_pages, "compiles": traces.prefill + traces.decode}


class Submission:
    """The sequences of one HTTP request (choices 0..n-1): their events, and their cancellation."""

    def __init__(self, owner: EngineLoop, base: int, n: int):
        self.owner, self.base = owner, base
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open = set(range(n))

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(choice, event) as they come, until every choice has finished or been cancelled."""
        while self.open:
            item = await self.queue.get()
            if isinstance(item, Exception):
                self.close()
                raise item
            choice = item.index - self.base
            if choice in self.open:
                if item.finished:
                    self.open.discard(choice)
                yield choice, item

    def cancel(self, choice: int) -> None:
        """Stop one choice: the engine aborts it (its pages go back) and its later events are dropped."""
        self.open.discard(choice)
        self.owner._cancel(self.base + choice)

    def close(self) -> None:
        """Cancel every choice still running (a client gone, an error)."""
        for choice in list(self.open):
            self.cancel(choice)
