"""The benchmark's code path end to end on a tiny config, so it cannot rot (timings not checked)."""

import importlib.util
import json
import os
import subprocess
import sys

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
    assert r["offline_pool_pages"] > 0 and r["offline_decode_rows_per_call"] >= 1  # what the pool allows cuDNN's decode
    table = capsys.readouterr().out
    assert "b1 tok/s" in table and "tiny" in table
    assert report["settings"]["shapes"] == ["tiny"] and report["settings"]["quick"] and report["platform"] == "cpu"


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
    (["--kv-dtype", "int9"], "kv_dtype must be one of None, 'int8', 'fp8'"),
    (["--load", "--kv-dtype", "int8"], "--kv-dtype is not timed by --load"),
    (["--tp", "1", "--kv-dtype", "int8"], "--kv-dtype does not apply to --tp"),
    (["--compare", "hf"], "--compare hf times transformers on a CUDA GPU"),  # this CPU's torch has no CUDA
    (["--shape", "tiny", "--shape", "gpt-9"], "unknown shape 'gpt-9': use one of "),
    (["--tp", "1", "--quantize", "int8", "--skip", "b1"], "--quantize, --skip do not apply to --tp (batch-1 decode"),
    (["--tp", "1", "--shape", "qwen3-0.6b"], "a second --shape does not apply to --tp"),
    (["--load", "--tp", "1,2"], "--tp and --load are two different runs: give one of them"),
    (["--load", "--compare", "hf"], "--compare does not apply to --load"),
    (["--shape", "tiny"], "--shape tiny is given twice: give each shape once"),  # with the "--shape tiny" every case has
    (["--tp", "2,1,2"], "--tp 2,1,2: a degree is given twice"),
    (["--skip", "b1,bN,ttft,offline,long,prefix,start"], "--skip b1,bN,ttft,offline,long,prefix,start leaves nothing to measure"),
    (["--load", "--skip", "safetensors,convert,orbax,transformers"], "--skip safetensors,convert,orbax,transformers leaves nothing"),
    (["--load", "--mesh", "tp=1", "--skip", "safetensors,convert,orbax,transformers,cold"], None),  # the mesh's step is left
])
def test_bench_rejects_bad_input_before_running(argv, message, capsys, monkeypatch):
    """Each bad value: exit 2 and one line naming it, before any section starts (no timing printed);
    (message None: a good value, stopped at the first section)."""
    if message is None:
        monkeypatch.setattr(bench, "load_main", lambda *a: _raise(JaxllmError("started")))
        message = "started"
    assert bench.main(["--quick", "--shape", "tiny", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, err


def _raise(err):
    raise err


def _ckpt(tmp, *files):
    (tmp / "ckpt").mkdir()
    for name in files:
        (tmp / "ckpt" / name).write_text("{}")
    return str(tmp / "ckpt")


@pytest.mark.parametrize("folder, extra, message", [
    (lambda tmp: str(tmp / "missing"), [], "--load-folder {} does not exist: give a Hugging Face checkpoint folder"),
    (lambda tmp: _ckpt(tmp, "model.gguf") + "/model.gguf", [], "--load-folder {} is a GGUF file: --load times safetensors"),
    (lambda tmp: _ckpt(tmp, "config.json") + "/config.json", [], "--load-folder {} is a file, not a folder"),
    (lambda tmp: _ckpt(tmp), [], "--load-folder {} has no config.json and no *.safetensors files"),
    (lambda tmp: _ckpt(tmp, "config.json"), [], "--load-folder {} has no *.safetensors files"),
    (lambda tmp: _ckpt(tmp, "model.safetensors"), [], "--load-folder {} has no config.json: give"),
    (lambda tmp: _ckpt(tmp, "config.json", "model.safetensors"), ["--shape", "tiny"], "--shape does not apply to --load-folder"),
])
def test_bench_load_folder_is_checked_before_running(tmp_path, capsys, folder, extra, message):
    """--load-folder that is no Hugging Face checkpoint folder (missing, a GGUF file, without config.json or
    safetensors): one line before any step; a GGUF file was 'not a folder', an empty folder failed in its first
    step's process, and a --shape beside it was dropped."""
    path = folder(tmp_path)
    assert bench.main(["--load-folder", path, "--repeat", "1", *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message.format(path)}") and err.count("\n") == 1, err


@pytest.mark.parametrize("missing, message", [
    ("torch", "--compare hf cannot run: torch is not installed: pip install torch transformers, and run from a source checkout"),
    ("transformers", "--compare hf cannot run: transformers is not installed: pip install torch"),
    ("checkout", "--compare hf cannot run: jaxllm is not a source checkout here"),
])
def test_compare_hf_says_what_to_install(missing, message, monkeypatch, capsys):
    """--compare hf without torch or transformers, or outside a source checkout: one line naming `pip install torch
    transformers` and the source checkout (it said only 'install them', and outside a checkout 'run from the repository')."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    if missing == "checkout":
        monkeypatch.setattr(bench_load, "HF_PEER", bench_load.HF_PEER.with_name("gone.py"))
    assert bench.main(["--quick", "--shape", "tiny", "--compare", "hf"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and "or drop --compare" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [[], ["--tp", "1"], ["--skip", "start,long", "--mesh", "dp=1"], ["--shape", "tiny", "--out", "x.json"]])
def test_full_sizes_on_a_cpu_are_refused_with_the_small_run(argv, capsys, tmp_path, monkeypatch):
    """Without --quick the sizes are a GPU's (32k-token prompts, batch 64): on a CPU they ran for hours; now one
    line naming --quick and a small command, before any work (and nothing written)."""
    monkeypatch.chdir(tmp_path)
    for heavy in ("bandwidths", "bench_jax", "start_time", "offline_first_run", "tp_compare"):  # a run that starts fails at once
        monkeypatch.setattr(bench, heavy, lambda *a, name=heavy: pytest.fail(f"{name} started"))
    assert bench.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: the full sizes are meant for a GPU") and err.count("\n") == 1, err
    assert "python -m jaxllm.bench --shape tiny --quick" in err and list(tmp_path.iterdir()) == []


def test_bench_load_module_runs_the_load_benchmark():
    """`python -m jaxllm.bench_load` did nothing and exited 0: it is the bench's --load."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "jaxllm.bench_load", *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m jaxllm.bench_load"), out
    out = run("--shape", "tiny", "--skip", "safetensors,convert,orbax,transformers")
    assert out.returncode == 2 and out.stderr.startswith("error: --skip safetensors,convert,orbax,transformers leaves nothing"), out


def _stub_sections(monkeypatch, result):
    monkeypatch.setattr(bench, "bandwidths", lambda: (3.0e9, 2.0e9))
    monkeypatch.setattr(bench, "bench_jax", lambda shape, *a: {"shape": shape, "param_bytes": 10**8, "peak_device_bytes": None, **result})


@pytest.mark.parametrize("result, shown", [
    ({}, "tiny - - - - - - - -"),
    ({"b1_tokens_per_s": 10.0, "bN_tokens_per_s": float("nan"), "ttft_s": float("inf")},
     "tiny 10.0 50% - - - - - -"),
])
def test_report_labels_units_and_records_the_run(result, shown, tmp_path, monkeypatch, capsys):
    """The table names each column's unit and the bandwidths in the unit that fits them (a CPU's were
    '0.00 TB/s'); a section that measured nothing (or a rate that came out NaN / inf) is '-' in the table and null
    in the JSON, which is strict JSON and records the run's settings, date, versions and device."""
    _stub_sections(monkeypatch, result)
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--shape", "tiny", "--dtype", "float32", "--skip", "start,long", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert "copy bandwidth 3.0 GB/s, read bandwidth 2.0 GB/s (the roofline's)" in rows and shown in rows, text
    assert "shape b1 tok/s roofline bN tok/s off tok/s ttft s cold s warm s peak GB" in rows, text
    assert "nan" not in text.lower() and "inf" not in text.lower(), text  # the table, and the JSON line of each shape
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert report["settings"] == {"shapes": ["tiny"], "dtype": "float32", "quick": True, "skip": ["long", "start"], "quantize": None,
                                  "quantize_embeddings": False, "kv_dtype": None, "mesh": None, "compare": None, "tp": None,
                                  "repeat": 2}
    assert report["device"] and report["platform"] == "cpu" and report["jax"] and report["date"][:2] == "20" and report["sizes"]["bN"] == 2
    (r,) = report["results"]
    assert all(r.get(k) is None for k in ("bN_tokens_per_s", "ttft_s")), r


def test_table_is_printed_before_the_out_write(tmp_path, monkeypatch, capsys):
    """--out failing after the run (its folder removed meanwhile): the table is on stdout all the same."""
    _stub_sections(monkeypatch, {"b1_tokens_per_s": 10.0})
    out = tmp_path / "gone" / "r.json"
    out.parent.mkdir()
    monkeypatch.setattr(bench, "bandwidths", lambda: (out.parent.rmdir(), (3.0e9, 2.0e9))[1])
    assert bench.main(["--quick", "--shape", "tiny", "--skip", "start", "--out", str(out)]) == 2
    stdout, err = capsys.readouterr()
    assert "tiny 10.0 50%" in " ".join(stdout.split()) and err.splitlines()[-1].startswith(f"error: cannot write --out {out}: "), err


@pytest.mark.parametrize("argv, keys", [
    (["--tp", "1"], {"rows", "shape", "sizes"}),
    (["--load", "--repeat", "1"], {"steps", "shape"}),
])
def test_tp_and_load_json_record_the_run(argv, keys, tmp_path, monkeypatch):
    """--tp's and --load's JSON held no date, dtype or jax version (--tp: only the device and the rows)."""
    monkeypatch.setattr(bench, "tp_compare", lambda *a: [{"tp": 1, "b1_tokens_per_s": 5.0, "same_greedy_as_first": True}])
    monkeypatch.setattr(bench_load, "load_section", lambda shape, dtype, *a: {"shape": shape, "steps": {}, "device": "cpu"})
    monkeypatch.setattr(bench_load, "load_table", lambda report: "")
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--shape", "tiny", *argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert keys <= set(report) and report["settings"]["dtype"] == "bfloat16" and report["settings"]["shapes"] == ["tiny"]
    assert report["jax"] and report["date"][:2] == "20" and report["device"], report


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_write_json_writes_strict_json(bad, tmp_path):
    """A non-finite rate (a section that measured nothing) is null: json wrote NaN / Infinity, which no strict
    JSON parser (jq, JavaScript) loads."""
    path = tmp_path / "out.json"
    bench_load.write_json(str(path), {"a": bad, "b": [1.5, {"c": bad}], "d": (bad, 2)})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [1.5, {"c": None}], "d": [None, 2]}


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
