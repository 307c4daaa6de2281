"""Triton (issue #29): the model repository mdrn-export writes is parsed by Triton's own schema; mdrn-serve runs a real
Triton server (nvidia-pytriton's) on loopback, and mdrn-infer / the TritonRunner use it as a local file: the same
derived series, requests of concurrent clients batched by Triton, a server that stops mid-series is one line and
leaves nothing partial.

What needs NGC's Triton (its onnxruntime and tensorrt backends loading our repository) cannot run here: pytriton's
server carries only the Python backend; that test skips with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from corpus import ROOT, make_series, real_series
from helpers import free_port, one_error_line
from mdrn_edge.cli.export import command as export_cli
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.errors import ModelFileError

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install -e '.[triton]'")


def infer(*args):
    return CliRunner().invoke(infer_cli, [*map(str, args), "--no-progress"])


# --- the repository -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-export")
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(out), "--triton", "--triton-max-batch", "4",
                                          "--triton-instances", "2", "--no-engine", "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_the_repository_parses_with_tritons_schema_and_carries_the_model_info(repository):
    from mdrn_edge.export.triton import info_of, parse_config
    from mdrn_edge.fileio import file_sha256

    out, summary = repository
    assert summary["triton"] == str(out / "triton")
    folder = out / "triton" / "mdrn-x4"
    config = parse_config((folder / "config.pbtxt").read_text(), "config")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [1, -1, -1] and config.input[0].name == "lr" and config.output[0].name == "sr"
    assert config.instance_group[0].count == 2 and config.HasField("dynamic_batching")
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # FP32: no TensorRT accelerator
    info = info_of(config, "config")
    assert info.name == "mdrn-x4" and info.scale == 4 and info.checks  # the contract, thresholds included
    assert config.parameters["model_sha256"].string_value == file_sha256(folder / "1" / "model.onnx")


def test_fp16_asks_for_onnx_runtimes_tensorrt_accelerator_with_the_profile(tmp_path):
    from mdrn_edge.export.triton import TritonOptions, config_text, parse_config
    from mdrn_edge.modelinfo import ModelInfo

    text = config_text("m", "onnxruntime_onnx", ModelInfo(arch="mdrn", scale=4), TritonOptions(tensorrt_precision="FP16"),
                       ((1, 1, 16, 16), (1, 1, 256, 256), (4, 1, 512, 512)))
    accel = parse_config(text, "m").optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert accel.parameters["trt_layer_norm_fp32_fallback"] == "1"  # CCA's variance stays in FP32
    assert accel.parameters["trt_profile_max_shapes"] == "lr:4x1x512x512"


def test_a_broken_config_is_refused_in_one_line():
    from mdrn_edge.export.triton import parse_config

    with pytest.raises(ModelFileError) as err:
        parse_config('name: "m"\nmax_batch_size: "eight"\n', "m/config.pbtxt")
    assert "not a valid Triton model configuration" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelFileError):
        parse_config('name: "m"\nmax_batchsize: 8\n', "m/config.pbtxt")  # a typo of a field


def test_export_options_for_triton_need_triton(tmp_path):
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(tmp_path / "o"), "--triton-max-batch", "4"])
    assert res.exit_code == 2 and "add --triton" in res.output and not (tmp_path / "o").exists()


def test_ngc_tritons_backends_load_the_repository():
    pytest.skip("needs NGC's Triton container (its onnxruntime and tensorrt backends); nvidia-pytriton's server, the "
                "one that runs here, has only the Python backend, which mdrn-serve uses")


# --- a real Triton server: mdrn-serve -------------------------------------------------------------------------------
class Served:
    """``mdrn-serve`` in its own process on loopback ports, stopped with SIGTERM."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
        self.proc = subprocess.Popen([sys.executable, "-m", "mdrn_edge.cli.serve", "--http-port", str(self.http),
                                      "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--json",
                                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT, start_new_session=True)
        line = self.proc.stdout.readline()
        self.ready = json.loads(line) if line.startswith("{") else {"error": line}
        if "error" in self.ready:
            self.stop(crash=True)
            pytest.fail(f"mdrn-serve did not start: {self.ready} {self.proc.stderr.read()[-2000:]}")

    def stop(self, crash: bool = False) -> tuple[int, str]:
        """SIGTERM (a clean stop), or with ``crash`` SIGKILL to mdrn-serve and its Triton (a machine that died)."""
        if crash:
            os.killpg(self.proc.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read()

    def counts(self) -> tuple[int, int]:
        """Triton's inference count and execution count of the model (Prometheus metrics)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10).read().decode()
        value = lambda name: sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))  # noqa: E731
        return int(value("nv_inference_count")), int(value("nv_inference_exec_count"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed: pip install -e '.[triton]'")
    server = Served(tmp_path_factory.mktemp("serve"), "--backend", "onnxruntime", "--max-batch", "8",
                    "--queue-delay", "20000")
    yield server
    code, err = server.stop()
    assert code in (0, 130), err[-2000:]


def test_mdrn_serve_says_where_it_serves_and_is_healthy(served):
    assert served.ready["http"] == f"triton://127.0.0.1:{served.http}/mdrn-x4"
    assert urllib.request.urlopen(served.ready["health"], timeout=10).status == 200
    assert "nv_inference_count" in urllib.request.urlopen(served.ready["metrics"], timeout=10).read().decode()


def test_infer_through_triton_writes_the_series_the_local_run_writes(tmp_path, served):
    src = real_series(tmp_path / "in", 60, 61)
    local = infer(src, "--output", tmp_path / "local", "--backend", "onnxruntime", "--json")
    assert local.exit_code == 0, local.output
    for scheme, port in (("triton", served.http), ("grpc", served.grpc)):
        res = infer(src, "--output", tmp_path / scheme, "--model", f"{scheme}://127.0.0.1:{port}/mdrn-x4", "--json")
        assert res.exit_code == 0, res.output
        result = json.loads(res.stdout)
        assert result["backend"] == "triton" and "served by onnxruntime" in result["precision_reason"]
        for a, b in zip(sorted((tmp_path / "local").glob("*.dcm")), sorted((tmp_path / scheme).glob("*.dcm"))):
            x, y = pydicom.dcmread(a), pydicom.dcmread(b)
            assert x.SOPInstanceUID == y.SOPInstanceUID  # same UIDs: same model, same source
            assert np.abs(x.pixel_array.astype(int) - y.pixel_array.astype(int)).max() <= 1
        assert [s["consistency_db"] for s in result["slices"]] == pytest.approx(
            [s["consistency_db"] for s in json.loads(local.stdout)["slices"]], abs=0.01)


def test_four_concurrent_clients_are_batched_by_triton(served):
    from mdrn_edge.runtime.triton import TritonRunner

    before = served.counts()
    x = np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)
    errors = []

    def client():
        try:
            with TritonRunner(f"triton://127.0.0.1:{served.http}/mdrn-x4") as runner:
                for _ in range(6):
                    assert runner.infer(x).shape == (1, 1, 256, 256)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    after = served.counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 24 and executions < inferences  # some executions ran batches of more than one request


def test_a_missing_model_or_server_is_one_line(tmp_path, served):
    src = make_series(tmp_path / "in", 1)
    res = infer(src, "--output", tmp_path / "o1", "--model", f"triton://127.0.0.1:{served.http}/nope")
    assert "model 'nope' is not ready on the server" in one_error_line(res, 10)
    res = infer(src, "--output", tmp_path / "o2", "--model", f"grpc://127.0.0.1:{free_port()}/mdrn-x4")
    assert "failed after 4 tries" in one_error_line(res, 10)
    res = infer(src, "--output", tmp_path / "o3", "--model", "triton://127.0.0.1/mdrn-x4")
    assert "triton://HOST:PORT/NAME" in one_error_line(res, 2)
    res = infer(src, "--output", tmp_path / "o4", "--model", f"triton://127.0.0.1:{served.http}/mdrn-x4",
                "--backend", "openvino")
    assert "leave out --backend" in one_error_line(res, 2)
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 5))


def test_a_port_in_use_is_one_line(tmp_path, served):
    res = subprocess.run([sys.executable, "-m", "mdrn_edge.cli.serve", "--http-port", str(served.http),
                          "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and f"--http-port {served.http}" in res.stderr


def test_a_server_stopped_mid_series_is_one_line_and_nothing_partial(tmp_path):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed: pip install -e '.[triton]'")
    server = Served(tmp_path / "serve", "--backend", "onnxruntime")
    try:
        src = make_series(tmp_path / "in", 4)
        for f in src.glob("*.dcm"):  # 512 x 512 slices (the real slice, each pixel 8 x 8): 16 tiles, seconds each
            ds = pydicom.dcmread(f)
            ds.PixelData = np.kron(ds.pixel_array, np.ones((8, 8), ds.pixel_array.dtype)).tobytes()
            ds.Rows, ds.Columns = 8 * ds.Rows, 8 * ds.Columns
            ds.save_as(f, enforce_file_format=True)
        proc = subprocess.Popen([sys.executable, "-m", "mdrn_edge.cli.infer", str(src), "--output", str(tmp_path / "out"),
                                 "--model", server.ready["http"], "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 60
        while server.counts()[0] < 20 and time.monotonic() < deadline:  # into the second slice
            time.sleep(0.2)
        server.stop(crash=True)
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 10 and len(lines) == 1 and "failed after 4 tries" in lines[0], err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    finally:
        server.stop()


def test_mdrn_bench_measures_the_served_model_beside_the_local_rows(tmp_path, served):
    pytest.importorskip("torch", reason="mdrn-bench needs torch: pip install -e '.[bench]'")
    from mdrn_edge.cli.bench import command as bench_cli

    res = CliRunner().invoke(bench_cli, ["--backends", "torch-fp32-cpu,onnxruntime-fp32-cpu", "--triton",
                                         served.ready["grpc"], "--sizes", "64", "--rounds", "1", "--min-time", "0.2",
                                         "--no-table3", "--output", str(tmp_path / "bench"), "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["results"]}
    assert "skipped" not in rows["triton"], rows["triton"]
    assert rows["triton"]["provider"].startswith("Triton GRPC") and rows["triton"]["max_abs_err"] < 1e-3
    res = CliRunner().invoke(bench_cli, ["--triton", "triton://nowhere", "--output", str(tmp_path / "b2")])
    assert res.exit_code == 2 and "triton://HOST:PORT/NAME" in res.output and not (tmp_path / "b2").exists()


def test_a_node_uses_the_shared_server(tmp_path, served):
    """mdrn-node beside a scanner's Orthanc, its inference on the Triton server (the many-scanners deployment)."""
    from helpers import start_orthanc
    from mdrn_edge.runtime.pacs import Destination, send_files
    from test_node import node, wait_stable

    scanner = start_orthanc(tmp_path / "orthanc", "ORTHANC")
    try:
        send_files(sorted(make_series(tmp_path / "in", 2).glob("*.dcm")), Destination.parse(scanner.dest))
        wait_stable(scanner, 1)
        res, events = node(scanner, tmp_path / "state", "--model", served.ready["grpc"])
        assert res.exit_code == 0, res.output
        done = [e for e in events if e["outcome"] == "done"]
        assert len(done) == 1 and done[0]["backend"] == "triton" and done[0]["checks"]["n_flagged"] == 0, events
    finally:
        scanner.stop()
