"""The benchmark's code path end to end on a tiny config, so it cannot rot (timings not checked)."""

import json

from jaxllm import bench


def test_bench_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--shape", "tiny", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (r,) = report["results"]
    for key in ("b1_tokens_per_s", "bN_tokens_per_s", "ttft_s", "offline_tokens_per_s", "cold_start_s", "warm_start_s"):
        assert r[key] > 0, key
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
