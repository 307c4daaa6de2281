import json

import pytest
from click.testing import CliRunner

from mdrn_edge.cli.bench import command as bench_cli

FIELDS = {"backend", "precision", "device", "lr_size", "batch", "latency_ms", "throughput", "first_result_s",
          "peak_rss_mb", "max_abs_err", "psnr"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = CliRunner().invoke(bench_cli, ["--output", str(out), "--sizes", "16,24", "--min-time", "0.05", "--json",
                                         "--backends", "torch-fp32-cpu,onnxruntime-fp32-cpu,onnxruntime-fp16-cpu,tensorrt-fp16",
                                         "--table3-size", "24"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output)


def test_writes_json_markdown_and_plots(report):
    out, data = report
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(data))
    md = (out / "report.md").read_text()
    assert "onnxruntime-fp32-cpu" in md and "Table 3" in md and "tensorrt-fp16: " in md
    for png in ("latency_by_backend.png", "latency_vs_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_result_has_the_schema_or_a_skip_reason(report):
    _, data = report
    assert len(data["results"]) == 2 * 4
    for r in data["results"]:
        if "skipped" in r:
            assert r["backend"] == "tensorrt" and r["skipped"]
        else:
            assert FIELDS <= set(r) and {"p50", "p90", "p99"} <= set(r["latency_ms"])
            assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]


def test_accuracy_against_pytorch_and_the_light_runtime_stays_light(report):
    _, data = report
    for r in data["results"]:
        if r["name"] == "onnxruntime-fp32-cpu":
            assert r["max_abs_err"] <= 1e-4 and r["torch_imported"] is False
            assert r["peak_rss_mb"] < next(t["peak_rss_mb"] for t in data["results"]
                                           if t["name"] == "torch-fp32-cpu" and t["lr_size"] == r["lr_size"])
        if r["name"] == "onnxruntime-fp16-cpu":
            assert r["max_abs_err"] < 1e-2


def test_table3_and_machine_capability(report):
    _, data = report
    models = {m["arch"]: m for m in data["models"]}
    assert models["mdrn"]["params"] == 257_640 and models["edsr"]["params"] > models["rfdn"]["params"] > 257_640
    assert all(m["latency_ms"] > 0 and m["peak_mem_mb"] > 0 and m["paper_time_ms"] for m in models.values())
    assert data["matmul_gflops"]["cpu"] > 1
    assert all(0 < r["share_of_matmul_peak"] < 1.5 for r in data["results"] if "skipped" not in r)
    assert data["ratios"]["onnxruntime_cpu_speedup"] and data["ratios"]["first_result_speedup"]


def test_unknown_backend_is_one_line(tmp_path):
    res = CliRunner().invoke(bench_cli, ["--output", str(tmp_path), "--backends", "cuda-magic"])
    assert res.exit_code != 0 and "valid: torch-fp32-cpu" in res.output
