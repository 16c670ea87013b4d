"""The benchmark's code path end to end on a tiny config, so it cannot rot (timings not checked)."""

import json
import os

import pytest

from jaxllm import bench, bench_load
from jaxllm.errors import JaxllmError


def test_bench_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--shape", "tiny", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (r,) = report["results"]
    for key in ("b1_tokens_per_s", "bN_tokens_per_s", "ttft_s", "offline_tokens_per_s", "cold_start_s", "warm_start_s",
                "offline_fresh_cold_tokens_per_s", "offline_fresh_warm_tokens_per_s", "prefix_speedup"):
        assert r[key] > 0, key
    for n in (64, 80):  # the quick long prompts: first token, decode rate, peak memory vs weights + KV
        assert r[f"long_{n}"]["ttft_s"] > 0 and r[f"long_{n}"]["weights_plus_kv_bytes"] > 0
    assert r["prefix_same_tokens"]  # on the CPU (tiny model): the cache changes no token
    assert r["offline_output_tokens"] > 0 and report["bandwidth_bytes_per_s"] > 0 and report["read_bytes_per_s"] > 0
    table = capsys.readouterr().out
    assert "b1 tok/s" in table and "tiny" in table


def test_bench_rejects_unknown_shape(capsys):
    assert bench.main(["--shape", "gpt-9", "--quick"]) == 2
    assert "unknown shape 'gpt-9'" in capsys.readouterr().err


def test_tensor_parallel_comparison_agrees(capsys):
    """The GPU tp check's code path on 2 of the simulated CPU devices: same greedy tokens at tp=1, 2."""
    assert bench.main(["--shape", "tiny", "--quick", "--tp", "1,2"]) == 0
    assert "tp=2:" in capsys.readouterr().out


def test_load_section_runs_and_reports(tmp_path, capsys):
    """`--load` on the tiny shape: the checkpoint written and loaded in fresh processes (the
    other steps left out for time), then the convert, orbax and sharded (--mesh) steps' code in this process."""
    out = tmp_path / "load.json"
    argv = ["--shape", "tiny", "--load", "--repeat", "1", "--skip", "cold,convert,orbax,transformers", "--out", str(out),
            "--load-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    warm = report["steps"]["safetensors"]["warm"]
    assert warm["seconds"] > 0 and warm["process_seconds"] >= warm["seconds"] and report["bytes"] > 0
    assert report["cold_cache"] == "left out (--skip cold)" and report["device"]
    assert "jaxllm.load, safetensors" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]  # the written checkpoint is gone
    bench_load.write_checkpoint(tmp_path / "hf", "tiny", "float32")
    bench_load.load_worker(["convert", str(tmp_path / "hf"), "float32", str(tmp_path / "orbax")])
    bench_load.load_worker(["orbax", str(tmp_path / "orbax"), "float32"])
    bench_load.load_worker(["sharded", str(tmp_path / "hf"), "float32", "dp=4,tp=2"])  # --mesh's step
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(steps) == 3 and all(s["seconds"] > 0 and "peak_rss_above_baseline_bytes" in s for s in steps)


@pytest.mark.parametrize("argv, message", [
    (["--tp", "x,2"], "--tp takes whole numbers >= 1 separated by commas, e.g. 1,2"),
    (["--tp", "1,,2"], "--tp takes whole numbers >= 1 separated by commas, e.g. 1,2"),
    (["--tp", "0"], "--tp takes whole numbers >= 1 separated by commas, e.g. 1,2"),
    (["--tp", "1,64"], "--tp 64 needs 64 devices but "),
    (["--dtype", "int9"], "dtype 'int9' is not supported; use one of float32, bfloat16, float16"),
    (["--load", "--dtype", "int9"], "dtype 'int9' is not supported"),
    (["--mesh", "dp=3"], "mesh 'dp=3' needs 3 devices but "),
    (["--mesh", "xp=2"], "mesh axis 'xp' in 'xp=2' is unknown"),
    (["--load", "--mesh", "dp=3"], "mesh 'dp=3' needs 3 devices but "),
    (["--skip", "foo"], "--skip foo: not a section: give some of b1, bN, ttft, offline, long, prefix, start (with --load: "),
    (["--skip", "b1,cold"], "--skip cold: not a section"),
    (["--load", "--skip", "b1"], "--skip b1: not a --load step: give some of safetensors, sharded, convert, orbax, transformers, cold"),
    (["--repeat", "0"], "--repeat 0: give a whole number >= 1"),
    (["--load-dir", "/tmp"], "--load-dir goes with --load: add --load, or drop --load-dir"),
    (["--repeat", "3", "--load-dir", "/tmp"], "--load-dir, --repeat go with --load"),
    (["--load", "--quantize", "int8"], "--quantize is not timed by --load"),
    (["--compare", "hf"], "--compare hf times transformers on a CUDA GPU"),  # this CPU's torch has no CUDA
    (["--shape", "tiny", "--shape", "gpt-9"], "unknown shape 'gpt-9': use one of "),
    (["--tp", "1", "--quantize", "int8", "--skip", "b1"], "--quantize, --skip do not apply to --tp (batch-1 decode"),
    (["--tp", "1", "--shape", "qwen3-0.6b"], "a second --shape does not apply to --tp"),
    (["--load", "--tp", "1,2"], "--tp and --load are two different runs: give one of them"),
    (["--load", "--compare", "hf"], "--compare does not apply to --load"),
])
def test_bench_rejects_bad_input_before_running(argv, message, capsys):
    """Each bad value: exit 2 and one line naming it, before any section starts (no timing printed)."""
    assert bench.main(["--quick", "--shape", "tiny", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("where, message", [
    (lambda tmp: tmp, "it is a folder: give a file path"),
    (lambda tmp: tmp / "missing" / "out.json", "does not exist"),
    (lambda tmp: "/sys/bench.json", "cannot create a file in /sys"),
])
def test_bench_checks_out_before_running(tmp_path, capsys, where, message):
    path = str(where(tmp_path))
    if path.startswith("/sys/") and not os.path.isdir("/sys"):
        pytest.skip("no /sys here (not Linux)")
    for mode in ([], ["--tp", "1"], ["--load"]):
        assert bench.main(["--quick", "--shape", "tiny", "--out", path, *mode]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: cannot write --out {path}: ") and message in err and err.count("\n") == 1, err


def test_bench_checks_load_dir(tmp_path, capsys):
    assert bench.main(["--quick", "--shape", "tiny", "--load", "--load-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot use --load-dir {tmp_path / 'nope'}: folder ")


def test_write_json_is_atomic(tmp_path, monkeypatch):
    """The results replace the file whole or not at all; no temporary file is left either way."""
    path = tmp_path / "out.json"
    path.write_text("old")
    path.chmod(0o640)
    bench_load.write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.stat().st_mode & 0o777 == 0o640
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        bench_load.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_section_process_is_one_line():
    """A section run in a fresh process that fails: its last error line, not its traceback."""
    with pytest.raises(JaxllmError, match=r"^the start of tiny failed in its process \(exit 1\): ValueError: boom$"):
        bench_load.fresh_python(["-c", "raise ValueError('boom')"], "the start of tiny", 60)


def test_help_names_every_shape_and_the_default_dtype(capsys):
    """--help listed three of the shapes --shape takes (not the MoE ones) and no --dtype default."""
    from jaxllm.random_model import SHAPES

    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(shape in text for shape in SHAPES), text
    assert "default: qwen3-0.6b" in text and "default: bfloat16" in text
