"""The TensorRT path end to end through the real code, on the strict TensorRT 10 emulator (tests/trt_emulator).

The emulator is not TensorRT: it enforces the API contract our code relies on and computes with ONNX Runtime on
the CPU. These tests prove the code keeps that contract (names, profiles, shapes, addresses, streams, flags,
precision pins, version rules, integrity) and that export -> engine -> sidecar -> mdrn-infer -> mdrn-bench works
as one path; what TensorRT itself computes on a GPU is tested by the real-TensorRT tests, which run wherever
TensorRT imports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from corpus import make_series, mr_small

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "trt_emulator"


def emu_env(tmp: Path, lean_only: bool = False, **settings: str) -> dict[str, str]:
    """The environment of a process that sees the emulator as its TensorRT (and, lean_only, only the lean one)."""
    paths = [EMU / "common", EMU / "lean"] if lean_only else [EMU / "common", EMU / "full", EMU / "lean"]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths)), "MDRN_TRT_EMU_LOG": str(tmp / "emu.jsonl"),
            **settings}


def run(tool: str, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"mdrn_edge.cli.{tool}", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)


def events(tmp: Path, kind: str) -> list[dict]:
    log = tmp / "emu.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def one_line(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    err = [line for line in proc.stderr.splitlines() if not line.startswith("[TRT-EMULATOR]")]
    assert proc.returncode == code, proc.stderr
    assert len(err) == 1 and text in err[0] and "Traceback" not in proc.stderr, proc.stderr


def export(tmp: Path, name: str, *options, env_settings: dict | None = None) -> tuple[dict, dict]:
    out = tmp / name
    proc = run("export", "mdrn-x4", "--output", out, "--json", *options, env=emu_env(tmp, **(env_settings or {})))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result, json.loads(Path(f"{result['engine']}.json").read_text())


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """FP32 (every default), FP16, and version-compatible engines, built once through mdrn-export."""
    tmp = tmp_path_factory.mktemp("emulated")
    built = {"fp32": export(tmp, "fp32"), "fp16": export(tmp, "fp16", "--fp16"),
             "vc-excluded": export(tmp, "vcx", "--fp16", "--version-compatible", "--exclude-lean-runtime"),
             "vc-embedded": export(tmp, "vce", "--fp16", "--version-compatible")}
    return tmp, built


def test_default_export_builds_a_checked_fp32_engine_without_tf32(engines):
    tmp, built = engines
    result, sidecar = built["fp32"]
    assert result["engine"] and Path(result["engine"]).is_file() and result["engine_skipped_reason"] is None
    engine = next(a for a in result["artifacts"] if a["format"] == "engine")
    assert engine["checks"]["psnr_drop_db"] <= 0.05 and engine["checks"]["gpu"].startswith("TensorRT emulator")
    assert sidecar["precision"] == "fp32" and "--noTF32" in sidecar["trtexec"]
    build = events(tmp, "build")[0]
    assert "TF32" not in build["flags"] and "FP16" not in build["flags"]


def test_fp16_engine_pins_cca_to_fp32_under_obey_and_the_trtexec_line_says_so(engines):
    tmp, built = engines
    result, sidecar = built["fp16"]
    build = events(tmp, "build")[1]
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(build["flags"])
    assert build["fp32_layers"] == sidecar["fp32_layers"] and not build["pinned_without_obey"]
    # #24: names as TensorRT's ONNX parser gives them: no layer for CCA's Constant nodes, a constant layer named
    # after each value and an ONNXTRT_Broadcast_N before its use, pinned with the 7 statistics layers of each block
    pinned, layers = sidecar["fp32_layers"], set(build["layers"])
    assert set(pinned) <= layers and not [n for n in layers if re.search(r"/attn/Constant(_\d+)?$", n)]
    block = [n for n in pinned if n.startswith("/body.0/") or n in ("ONNXTRT_Broadcast", "ONNXTRT_Broadcast_0")]
    assert block == ["/body.0/attn/ReduceMean", "/body.0/attn/Sub", "/body.0/attn/Constant_output_0", "ONNXTRT_Broadcast",
                     "/body.0/attn/Pow", "/body.0/attn/ReduceMean_1", "/body.0/attn/Constant_1_output_0",
                     "ONNXTRT_Broadcast_0", "/body.0/attn/Add", "/body.0/attn/Sqrt", "/body.0/attn/Add_1"], block
    assert len(pinned) == 8 * 11 and len({n for n in pinned if n.startswith("ONNXTRT_Broadcast")}) == 16
    precisions = re.search(r"--layerPrecisions=(\S+)", sidecar["trtexec"]).group(1)
    assert precisions.split(",") == [f"{n}:fp32" for n in pinned] and "--layerOutputTypes=" in sidecar["trtexec"]
    engine = next(a for a in result["artifacts"] if a["format"] == "engine")
    assert engine["checks"]["psnr_drop_db"] <= 0.05


def test_a_three_slice_series_runs_through_the_engine_and_matches_onnx_runtime(engines, tmp_path):
    tmp, built = engines
    series = make_series(tmp_path / "in", 3)
    before = {p.name: p.read_bytes() for p in series.iterdir()}
    log = tmp_path / "emu.jsonl"
    proc = run("infer", series, "--output", tmp_path / "trt", "--model", built["fp32"][0]["engine"], "--json",
               env={**emu_env(tmp), "MDRN_TRT_EMU_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "tensorrt"
    proc = run("infer", series, "--output", tmp_path / "ort", "--model", built["fp32"][0]["onnx"], env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    trt = [pydicom.dcmread(p).pixel_array.astype(int) for p in sorted((tmp_path / "trt").glob("*.dcm"))]
    ort = [pydicom.dcmread(p).pixel_array.astype(int) for p in sorted((tmp_path / "ort").glob("*.dcm"))]
    assert len(trt) == 3 and all(np.abs(a - b).max() <= 1 for a, b in zip(trt, ort))
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    shapes = [e["shape"] for e in runs if e["event"] == "execute"]
    assert len(shapes) == 3 and all(s[0] == 1 for s in shapes)  # the profile's batch is 1: one slice per call
    assert not [e for e in runs if e["event"] == "pageable_copy"]  # every copy through page-locked buffers
    assert {p.name: p.read_bytes() for p in series.iterdir()} == before


def test_a_version_compatible_plan_runs_on_the_lean_runtime_alone(engines, tmp_path):
    tmp, built = engines
    series = make_series(tmp_path / "in", 2)
    proc = run("infer", series, "--output", tmp_path / "out", "--model", built["vc-excluded"][0]["engine"],
               env=emu_env(tmp, lean_only=True))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2
    proc = run("infer", series, "--output", tmp_path / "no", "--model", built["fp32"][0]["engine"],
               env=emu_env(tmp, lean_only=True))
    one_line(proc, 4, "runs only engines built with mdrn-export --version-compatible")
    assert not (tmp_path / "no").exists()


def test_embedded_lean_runtime_runs_host_code_only_when_allowed(engines, tmp_path):
    tmp, built = engines
    series = make_series(tmp_path / "in", 1)
    engine = built["vc-embedded"][0]["engine"]
    proc = run("infer", series, "--output", tmp_path / "no", "--model", engine, env=emu_env(tmp))
    one_line(proc, 3, "pass --allow-host-code if you trust where it came from")
    assert not (tmp_path / "no").exists()
    later = emu_env(tmp, MDRN_TRT_EMU_VERSION="10.8.0")
    proc = run("infer", series, "--output", tmp_path / "yes", "--model", engine, "--allow-host-code", env=later)
    assert proc.returncode == 0, proc.stderr


def test_a_later_tensorrt_runs_an_excluded_lean_runtime_plan_with_the_builders_lean_library(engines, tmp_path):
    tmp, built = engines
    series = make_series(tmp_path / "in", 1)
    engine = built["vc-excluded"][0]["engine"]
    later = emu_env(tmp, MDRN_TRT_EMU_VERSION="10.8.0")
    proc = run("infer", series, "--output", tmp_path / "no", "--model", engine, env=later)
    one_line(proc, 3, "pass --lean-runtime with TensorRT 10.3.0's libnvinfer_lean library")
    lib = tmp_path / "libnvinfer_lean.so.10"
    lib.write_text("TensorRT lean runtime 10.3.0\n")  # what the emulator's load_runtime reads
    proc = run("infer", series, "--output", tmp_path / "yes", "--model", engine, "--lean-runtime", lib, env=later)
    assert proc.returncode == 0, proc.stderr
    proc = run("infer", series, "--output", tmp_path / "old", "--model", built["fp32"][0]["engine"], env=later)
    one_line(proc, 3, "built with TensorRT 10.3.0, this is TensorRT 10.8.0")


def test_a_tampered_engine_or_a_sidecar_without_its_hash_is_refused(engines, tmp_path):
    tmp, built = engines
    series = make_series(tmp_path / "in", 1)
    source = Path(built["fp32"][0]["engine"])
    for case in ("tampered", "unhashed"):
        folder = tmp_path / case
        folder.mkdir()
        engine = folder / source.name
        plan = bytearray(source.read_bytes())
        sidecar = json.loads(Path(f"{source}.json").read_text())
        if case == "tampered":
            plan[len(plan) // 2] ^= 0xFF
        else:
            del sidecar["engine_sha256"]
        engine.write_bytes(bytes(plan))
        Path(f"{engine}.json").write_text(json.dumps(sidecar))
        proc = run("infer", series, "--output", tmp_path / f"out-{case}", "--model", engine, env=emu_env(tmp))
        one_line(proc, 3, "does not match the SHA-256" if case == "tampered" else "records no engine_sha256")
        assert not (tmp_path / f"out-{case}").exists()


def test_bench_measures_engine_rows_through_the_emulator(tmp_path):
    proc = run("bench", "--output", tmp_path / "bench", "--sizes", "16", "--min-time", "0.05", "--json",
               "--backends", "onnxruntime-fp32-cpu,tensorrt-fp16", "--no-table3", env=emu_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
    assert "skipped" not in rows["tensorrt-fp16"], rows["tensorrt-fp16"]
    assert abs(rows["tensorrt-fp16"]["psnr"] - rows["onnxruntime-fp32-cpu"]["psnr"]) < 0.05
    assert rows["tensorrt-fp16"]["torch_imported"] is False


def test_a_shared_timing_cache_is_merged_and_one_from_another_gpu_refused_unless_asked(tmp_path):
    cache = tmp_path / "timing.cache"
    export(tmp_path, "a", "--timing-cache", cache)
    export(tmp_path, "b", "--fp16", "--timing-cache", cache)
    entries = json.loads(cache.read_bytes()[6:])["entries"]
    assert {k.split(":")[0] for k in entries} == {"FP32", "FP16"}  # the second build added to the first
    assert json.loads((tmp_path / "timing.cache.json").read_text()) == {"tensorrt_version": "10.3.0"}
    other_gpu = {"MDRN_TRT_EMU_CC": "9.0"}  # device properties differ (TensorRT checks more than this; so do we)
    proc = run("export", "mdrn-x4", "--output", tmp_path / "c", "--timing-cache", cache, "--json",
               env=emu_env(tmp_path, **other_gpu))
    one_line(proc, 7, "made on a GPU whose device properties differ from this one's")
    assert "--timing-cache-ignore-mismatch" in proc.stderr
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    result, sidecar = export(tmp_path, "d", "--timing-cache", cache, "--timing-cache-ignore-mismatch",
                             env_settings=other_gpu)
    assert "no option for" in sidecar["trtexec"]  # the sidecar's trtexec line says what trtexec cannot do


def test_a_timing_cache_of_another_tensorrt_version_is_replaced_with_a_warning(tmp_path):
    """Real TensorRT cannot read a cache another version wrote: it logs and ignores it (NVIDIA/TensorRT#3566), it
    does not fail; the build goes on with a new cache, says so in one line, and the file is replaced."""
    cache = tmp_path / "timing.cache"
    export(tmp_path, "a", "--timing-cache", cache)
    proc = run("export", "mdrn-x4", "--output", tmp_path / "b", "--timing-cache", cache, "--json",
               env=emu_env(tmp_path, MDRN_TRT_EMU_VERSION="10.4.0"))
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if not line.startswith(("[TRT-EMULATOR]", "- "))]
    assert len(ours) == 1 and "written by TensorRT 10.3.0, which TensorRT 10.4.0 cannot read" in ours[0], proc.stderr
    assert json.loads((tmp_path / "timing.cache.json").read_text()) == {"tensorrt_version": "10.4.0"}
    assert json.loads(cache.read_bytes()[6:])["version"] == "10.4.0"


def test_timing_cache_options_are_checked_first(tmp_path):
    proc = run("export", "mdrn-x4", "--output", tmp_path / "o", "--timing-cache-ignore-mismatch", env=emu_env(tmp_path))
    one_line(proc, 2, "--timing-cache-ignore-mismatch applies to a --timing-cache")


STATIC = ["--min-shape", "1x1x32x32", "--opt-shape", "1x1x32x32", "--max-shape", "1x1x32x32"]


def test_dla_engines_run_one_static_shape_report_their_dla_layers_and_tile_to_it(tmp_path):
    """#24 item 1: a dynamic profile puts no layer on the DLA (NVIDIA/TensorRT#2318), so a DLA engine is built for
    one shape, says how many layers run on the DLA, and mdrn-infer tiles and pads slices to exactly that shape."""
    dla = {"MDRN_TRT_EMU_DLA_CORES": "2"}
    proc = run("export", "mdrn-x4", "--output", tmp_path / "none", "--fp16", "--dla-core", "0", *STATIC, "--json",
               env=emu_env(tmp_path))
    one_line(proc, 2, "this device has no DLA")
    proc = run("export", "mdrn-x4", "--output", tmp_path / "fp32", "--dla-core", "0", *STATIC, "--json",
               env=emu_env(tmp_path))
    one_line(proc, 2, "the DLA runs FP16 or INT8 only")
    proc = run("export", "mdrn-x4", "--output", tmp_path / "int8", "--int8", "--calibration", mr_small(), "--dla-core",
               "0", *STATIC, "--json", env=emu_env(tmp_path, **dla))
    one_line(proc, 2, "not an explicitly quantised (Q/DQ) network")
    proc = run("export", "mdrn-x4", "--output", tmp_path / "dyn", "--fp16", "--dla-core", "0", "--json",
               env=emu_env(tmp_path, **dla))
    one_line(proc, 2, "the DLA runs one static shape")
    result, sidecar = export(tmp_path, "dla", "--fp16", "--dla-core", "1", *STATIC, env_settings=dla)
    assert sidecar["dla_core"] == 1 and "GPU_FALLBACK" in sidecar["flags"] and "--useDLACore=1" in sidecar["trtexec"]
    assert sidecar["dla_layers"] > 0 and sidecar["gpu_layers"] > 0  # convolutions on DLA; shuffle, CCA on the GPU
    engine = next(a for a in result["artifacts"] if a["format"] == "engine")
    assert engine["checks"]["dla_layers"] == sidecar["dla_layers"]
    for name, size in (("small", 24), ("large", 64)):  # padded up to 32, and tiled into 32 x 32 tiles
        src = make_series(tmp_path / f"in-{name}", 1, size=size)
        proc = run("infer", src, "--output", tmp_path / f"out-{name}", "--model", result["engine"], "--json",
                   "--no-progress", env=emu_env(tmp_path, **dla))
        assert proc.returncode == 0, proc.stderr
        out = pydicom.dcmread(next((tmp_path / f"out-{name}").glob("*.dcm")))
        assert (out.Rows, out.Columns) == (4 * size, 4 * size)
    shapes = {tuple(e["shape"]) for e in events(tmp_path, "execute") if "shape" in e}
    assert shapes <= {(1, 1, 32, 32)}, shapes  # the engine only ever saw its one shape


def test_an_int8_engine_is_built_from_the_qdq_onnx_and_runs_its_float_layers_in_fp16(tmp_path, emulator):
    """#24 items 4 and the emulator: an INT8 plan (FP16 + INT8 flags) runs the layers left unquantised in FP16, as
    TensorRT does; pinned to FP32 everywhere it computes the Q/DQ graph exactly as ONNX Runtime does."""
    import onnxruntime as ort

    from mdrn_edge.export.fp16 import load_onnx_info

    result, sidecar = export(tmp_path, "int8", "--int8", "--calibration", mr_small())
    assert result["onnx_int8"] and sidecar["precision"] == "int8" and {"INT8", "FP16"} <= set(sidecar["flags"])
    assert sidecar["onnx"].endswith(".int8.onnx") and "--int8" in sidecar["trtexec"]
    engine = next(a for a in result["artifacts"] if a["format"] == "engine")
    assert engine["checks"]["psnr_drop_db"] <= 0.1
    qdq = Path(result["onnx_int8"])
    info = load_onnx_info(Path(result["onnx"]))
    lr = _real_lr(info)
    want = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"lr": lr})[0]
    fp16 = _plan_session(emulator, qdq, info.fp32_layers, int8=True).run(None, {"lr": lr})[0]
    fp32 = _plan_session(emulator, qdq, None, int8=True, pin_all=True).run(None, {"lr": lr})[0]
    # FP16 rounding ahead of a Q node can move a value across a quantisation step: up to about 1% of the range
    assert np.abs(fp32 - want).max() < 1e-5 < np.abs(fp16 - want).max() < 2e-2 * np.abs(want).max()


@pytest.mark.parametrize("precision,options", [("int8", ["--int8", "--calibration"]), ("fp16", ["--fp16"])])
def test_tensorrt_11_builds_reduced_precision_strongly_typed(tmp_path, precision, options):
    """#24 item 5: TensorRT 11 has no BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS (the emulator at 11 neither):
    FP16 builds from the FP16 ONNX and INT8 from the Q/DQ ONNX as strongly typed networks, and run there."""
    args = [*options, *([str(mr_small())] if precision == "int8" else [])]
    result, sidecar = export(tmp_path, precision, *args, env_settings={"MDRN_TRT_EMU_VERSION": "11.0.0"})
    assert sidecar["precision"] == precision and sidecar["tensorrt_version"] == "11.0.0"
    assert "STRONGLY_TYPED" in sidecar["flags"] and not {"FP16", "INT8"} & set(sidecar["flags"])
    engine = next(a for a in result["artifacts"] if a["format"] == "engine")
    assert engine["checks"]["psnr_drop_db"] <= 0.1


# --- in-process: what only a live runner shows ------------------------------------------------------------------

@pytest.fixture()
def emulator(monkeypatch, tmp_path):
    """The emulator imported into this process for one test, then removed so no other test sees it."""
    for sub in ("common", "full", "lean"):
        monkeypatch.syspath_prepend(str(EMU / sub))
    monkeypatch.setenv("MDRN_TRT_EMU_LOG", str(tmp_path / "emu.jsonl"))
    yield __import__("trt_emulator")
    for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "tensorrt_lean", "cuda", "trt_emulator")]:
        del sys.modules[name]


def test_a_failed_activation_leaves_no_stream_or_buffer_behind(engines, emulator):
    from mdrn_edge.errors import ModelFileError
    from mdrn_edge.runtime.tensorrt import TensorRTRunner

    _, built = engines
    before = emulator.live_streams()
    with pytest.raises(ModelFileError, match="has no optimisation profile 3"):
        TensorRTRunner(built["fp32"][0]["engine"], profile=3).activate()
    assert emulator.live_streams() == before


def test_one_runner_shared_by_threads_never_interleaves_its_context(engines, emulator):
    from mdrn_edge.runtime.tensorrt import TensorRTRunner

    _, built = engines
    errors: list[BaseException] = []
    rng = np.random.default_rng(0)
    with TensorRTRunner(built["fp32"][0]["engine"]) as runner:
        def work(size: int) -> None:
            try:
                for _ in range(15):
                    x = rng.random((1, 1, size, size), dtype=np.float32)
                    assert runner.infer(x).shape == (1, 1, 4 * size, 4 * size)
            except BaseException as exc:  # noqa: BLE001  (collected and re-raised below)
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in (16, 24, 32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_a_failing_release_frees_the_rest_and_never_masks_the_error_in_flight(engines, emulator):
    """#24 item 9: the first failing cudaFree leaked every later buffer and replaced the error being raised."""
    from mdrn_edge.runtime.base import InferenceError
    from mdrn_edge.runtime.tensorrt import TensorRTRunner

    _, built = engines
    before = emulator.live_allocations(), emulator.live_streams()
    runner = TensorRTRunner(built["fp32"][0]["engine"]).activate()
    runner.infer(np.zeros((1, 1, 16, 16), np.float32))
    first = next(iter(runner._buffers.values()))[0]
    runner.cuda.free(first)  # freed behind the runner's back: its own cudaFree of it now fails
    with pytest.raises(InferenceError, match=r"1 GPU release\(s\) failed .*the rest was released"):
        runner.deactivate()
    assert (emulator.live_allocations(), emulator.live_streams()) == before and not runner.is_active

    runner = TensorRTRunner(built["fp32"][0]["engine"])
    with pytest.raises(ValueError, match="the error in flight"):
        with runner:
            runner.infer(np.zeros((1, 1, 16, 16), np.float32))
            runner.cuda.free(next(iter(runner._buffers.values()))[0])
            raise ValueError("the error in flight")
    assert (emulator.live_allocations(), emulator.live_streams()) == before


def test_an_engine_build_leaves_no_stream_behind(engines, emulator, tmp_path):
    """#24 item 9: build_engine opened a CUDA stream to read the device's name and never closed it."""
    from mdrn_edge.engines.tensorrt import EngineOptions, build_engine

    _, built = engines
    before = emulator.live_streams(), emulator.live_allocations()
    build_engine(Path(built["fp32"][0]["onnx"]), tmp_path / "m.engine", EngineOptions())
    assert (emulator.live_streams(), emulator.live_allocations()) == before and (tmp_path / "m.engine").is_file()


# --- #24: the emulator as strict as TensorRT: parser naming, FP16 arithmetic --------------------------------------

def _plan_session(trt, onnx_path: Path, pin: str | None, *, int8: bool = False, pin_all: bool = False):
    """Parse and build ``onnx_path`` as mdrn-export does (FP16, optionally INT8, ``pin`` pinned to FP32 under
    OBEY_PRECISION_CONSTRAINTS) and return the plan's ONNX Runtime session, the arithmetic the emulator runs."""
    from mdrn_edge.engines.tensorrt import pin_fp32_layers

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    pin_fp32_layers(trt, network, ".*" if pin_all else pin)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (1, 1, 16, 16), (1, 1, 64, 64), (1, 1, 128, 128))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return trt.Runtime(logger).deserialize_cuda_engine(plan).session


def _real_lr(info) -> np.ndarray:
    image = pydicom.dcmread(mr_small()).pixel_array.astype(np.float32)
    return info.normalizer.fit(image).normalize(image)[None, None].astype(np.float32)


def test_the_parser_names_layers_as_onnx_tensorrt_does(emulator, tmp_path):
    """No layer for a Constant node, a constant layer named after the weights it holds, ONNXTRT_Broadcast for a
    lower-rank input, and every taken name suffixed _N from one counter (a layer named like a node taken before)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Constant", [], ["eps"], name="c", value=helper.make_tensor("v", TensorProto.FLOAT, [], [1e-8])),
             helper.make_node("Add", ["x", "eps"], ["a"], name="n"), helper.make_node("Mul", ["a", "two"], ["b"], name="n"),
             helper.make_node("Add", ["b", "eps"], ["y"], name="ONNXTRT_Broadcast")]
    path = tmp_path / "names.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [two]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    trt = emulator
    logger = trt.Logger(trt.Logger.WARNING)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    layers = [(layer.name, layer.type.name) for layer in network.layers]
    assert layers == [("eps", "CONSTANT"), ("ONNXTRT_Broadcast", "SHUFFLE"), ("n", "ELEMENTWISE"),
                      ("two", "CONSTANT"), ("ONNXTRT_Broadcast_0", "SHUFFLE"), ("n_1", "ELEMENTWISE"),
                      ("ONNXTRT_Broadcast_2", "SHUFFLE"), ("ONNXTRT_Broadcast_3", "ELEMENTWISE")], layers


def test_an_fp16_plan_computes_in_fp16_so_an_unpinned_cca_overflows(emulator):
    """#24: FP16 arithmetic in every layer not pinned (not ONNX Runtime's upcasting CPU kernels). A real slice at
    600x its normalised range keeps every activation within FP16 but puts (x - mean)^2 of CCA past 65504: with CCA
    pinned as mdrn-export pins it the plan matches FP32 to FP16's rounding, without the pins it is not finite."""
    import onnxruntime as ort

    from mdrn_edge.export.fp16 import load_onnx_info

    onnx_path = ROOT / "mdrn_edge" / "weights" / "mdrn-x4.onnx"
    info = load_onnx_info(onnx_path)
    reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pinned, unpinned = _plan_session(emulator, onnx_path, info.fp32_layers), _plan_session(emulator, onnx_path, None)
    for k in (1, 600):
        lr = _real_lr(info) * k
        want = reference.run(None, {"lr": lr})[0]
        got = pinned.run(None, {"lr": lr})[0]
        assert np.isfinite(got).all() and 1e-6 < np.abs(got - want).max() / np.abs(want).max() < 5e-3
        assert np.isfinite(unpinned.run(None, {"lr": lr})[0]).all() == (k == 1)


# --- #24 items 2 and 3: ONNX Runtime's TensorRT EP, emulated over the emulator ------------------------------------

@pytest.fixture()
def trt_ep(emulator, monkeypatch, tmp_path):
    """onnxruntime with the emulated TensorRT EP in this process for one test."""
    import onnxruntime as ort

    ep = __import__("ort_tensorrt_ep")
    monkeypatch.setattr(ort, "InferenceSession", ep.InferenceSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [ep.TRT, ep.CPU])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield ep
    sys.modules.pop("ort_tensorrt_ep", None)


def test_the_tensorrt_ep_keeps_cca_in_fp32_where_the_layer_norm_fallback_alone_may_not(trt_ep, tmp_path, capsys):
    """#24 item 3: with mdrn-edge's options CCA's statistics run on the CUDA EP in the FP16 file's FP32 and a slice
    whose (x - mean)^2 passes 65504 stays finite and close to the file on the CPU; with only
    trt_layer_norm_fp32_fallback (precision without a constraints flag: a hint TensorRT may ignore) it overflows."""
    from mdrn_edge.export.fp16 import convert_fp16, load_onnx_info
    from mdrn_edge.runtime.base import InferenceError
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner, tensorrt_ep_options

    fp32 = ROOT / "mdrn_edge" / "weights" / "mdrn-x4.onnx"
    fp16 = convert_fp16(fp32, tmp_path / "mdrn-x4.fp16.onnx").path
    info = load_onnx_info(fp32)
    lr = _real_lr(info) * 600
    want = trt_ep.REAL_SESSION(str(fp16), providers=[trt_ep.CPU]).run(None, {"lr": lr})[0]
    runner = OnnxRuntimeRunner(fp16, tensorrt_ep=True)
    with runner:
        assert runner.provider == trt_ep.TRT
        got = runner.infer(lr)
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
    hint_only = {**tensorrt_ep_options(fp16, info.with_precision("fp16")), "trt_layer_norm_fp32_fallback": True}
    del hint_only["trt_op_types_to_exclude"]
    runner = OnnxRuntimeRunner(fp16, tensorrt_ep=True, provider_options={trt_ep.TRT: hint_only})
    with pytest.raises(InferenceError, match="produced NaN/Inf"):
        with runner:
            runner.infer(lr)
    assert capsys.readouterr().out == ""


def test_the_tensorrt_ep_builds_the_qdq_model_in_int8_and_a_fallback_is_one_line_never_stdout(trt_ep, tmp_path, capsys):
    """#24 item 2: the Q/DQ model needs trt_int8_enable (TensorRT refuses it otherwise and ONNX Runtime falls back,
    printing on stdout): with mdrn-edge's options it runs on the EP; without, --trt-ep is one line, stdout empty."""
    from mdrn_edge.errors import MissingDependencyError
    from mdrn_edge.export.fp16 import load_onnx_info
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner, tensorrt_ep_options

    result, _ = export(tmp_path, "int8", "--int8", "--calibration", mr_small())
    qdq = Path(result["onnx_int8"])
    info = load_onnx_info(Path(result["onnx"]))
    runner = OnnxRuntimeRunner(qdq, tensorrt_ep=True)
    with runner:
        assert runner.provider == trt_ep.TRT
        assert runner.infer(_real_lr(info)).shape == (1, 1, 256, 256)
    no_int8 = {**tensorrt_ep_options(qdq, info.with_precision("int8")), "trt_int8_enable": False}
    with pytest.raises(MissingDependencyError, match=r"--trt-ep, but ONNX Runtime runs it on CPUExecutionProvider "
                                                    r"\(EP Error .*TensorRT EP failed to create engine"):
        OnnxRuntimeRunner(qdq, tensorrt_ep=True, provider_options={trt_ep.TRT: no_int8}).activate()
    assert capsys.readouterr().out == ""
