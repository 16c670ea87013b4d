"""The benchmark's code path end to end on a tiny config, so it cannot rot (timings not checked)."""

import json

from jaxllm import bench, bench_load


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
    assert r["offline_output_tokens"] > 0 and report["bandwidth_bytes_per_s"] > 0
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
