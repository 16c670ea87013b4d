"""Orbax writes run to the end, and the system's refusals of them said in one line. Orbax writes
from threads of its own that outlive an exception in the caller (Ctrl-C, SIGTERM, a failed write
of theirs): `write_to_the_end` waits for every one of them before anything propagates, so nothing
writes into a folder after the caller has removed it. A write the disk refuses (full, read-only,
no permission) is a CheckpointError naming the folder and the fix (`write_error`), and the
tracebacks orbax, tensorstore and asyncio add for a failed read or write are dropped
(`ignore_closed_loops`, installed before orbax's first read or write).
"""

from __future__ import annotations

import concurrent.futures.thread
import errno
import logging
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from jaxllm.errors import CheckpointError


def write_to_the_end(write: Callable[[], None], shown: Path, timeout: float = 600.0) -> None:
    """Run `write` (an orbax save) in a thread and wait for it. Orbax writes from threads of its
    own that an exception in the waiting thread (Ctrl-C, SIGTERM) does not stop, and that go on
    after a failed write of theirs: whatever ends the wait, every thread the save started is
    waited for (up to `timeout` seconds; further Ctrl-C are ignored meanwhile) before anything
    propagates, so nothing writes afterwards. A refused write is a CheckpointError naming `shown`."""
    before = set(threading.enumerate())
    failure: list[BaseException] = []

    def run():
        try:
            write()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            failure.append(err)

    worker = threading.Thread(target=run, name="jaxllm-save", daemon=True)
    quiet = _QuietOrbax()  # its threads log a failed write with a traceback each: the error says it once
    logging.getLogger("absl").addFilter(quiet)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.05)  # wakes for signals: Ctrl-C raises here
    finally:
        _wait_for_writers(worker, before, time.monotonic() + timeout)
        logging.getLogger("absl").removeFilter(quiet)
    if failure:
        err = write_error(shown, failure[0])
        if err is None:
            raise failure[0]
        raise err from None


def _wait_for_writers(worker: threading.Thread, before: set, deadline: float) -> None:
    """Wait until `worker` and every other non-daemon thread started since `before` has ended
    (idle thread-pool workers aside: they wait for work, not write)."""
    while time.monotonic() < deadline:
        writers = [t for t in threading.enumerate() if t not in before and t is not threading.current_thread()
                   and (t is worker or (not t.daemon and getattr(t, "_target", None) is not _pool_worker))]
        if not writers:
            return
        try:
            writers[0].join(min(0.1, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: the writes still have to end first
            continue


class _QuietOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname


def ignore_closed_loops() -> None:
    """When a save or a restore fails or is interrupted, tensorstore still completes the reads and
    writes it had under way and reports each to an event loop orbax has closed ("RuntimeError: Event
    loop is closed"), orbax's coroutines are left unawaited ("Exception ignored in: <coroutine ...>"),
    and asyncio logs its tasks' errors ("Task exception was never retrieved"): a traceback apiece,
    after the one-line error has said it all. Those alone are dropped (installed once, for the
    process, before orbax's first read or write: they can come as soon as one fails, or later,
    when the tasks are freed)."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxllm_closed_loops", False):
        return

    def hook(unraisable):
        closed = isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)
        if not (closed or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
            previous(unraisable)

    hook.jaxllm_closed_loops = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_OrbaxTasks())
    # and Python's warning for each orbax coroutine the failure left unawaited, when it is freed
    warnings.filterwarnings("ignore", r"coroutine '[\w.<>]*(Store\._get_array_metadatas|write_fragment)' was never awaited",
                            RuntimeWarning)


class _OrbaxTasks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("never retrieved" in message and any(word in message for word in ("orbax", "OCDBT", "tensorstore")))


_pool_worker = getattr(concurrent.futures.thread, "_worker", None)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_WRITE_FAILURES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "the operation is not permitted", errno.EFBIG: "a file would exceed the size limit",
                   errno.EIO: "an input/output error", errno.ENAMETOOLONG: "a name in the path is longer than the file system takes",
                   errno.ENOENT: "a folder on the path cannot be made there"}


def write_error(folder: Path, err: BaseException) -> CheckpointError | None:
    """The CheckpointError of a write into `folder` that the system refused (an OSError, or orbax's
    and tensorstore's ValueError carrying an os_error_code), or None for anything else (a bug)."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        match = _OS_ERROR_CODE.search(str(err))
        code = int(match.group(1)) if match else None
    if code is None:
        return None
    reason = _WRITE_FAILURES.get(code) or os.strerror(code)
    fix = ("free some space there or choose another output folder" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "choose an output folder you can write to" if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT)
           else "choose a shorter output name" if code == errno.ENAMETOOLONG
           else "check the disk or choose another output folder")
    return CheckpointError(f"cannot write {folder}: {reason} ({os.strerror(code)}, errno {code}); {fix}")
