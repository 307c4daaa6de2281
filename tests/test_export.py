import ast
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from corpus import mr_small, shared_files
from helpers import train_tiny
from mdrn_edge.cli.export import command as export_cli
from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import imresize
from mdrn_edge.errors import ModelFileError
from mdrn_edge.fileio import file_sha256
from mdrn_edge.modelinfo import METADATA_KEY, ModelInfo
from mdrn_edge.models.mdrn import MDRN
from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner, provider_order
from mdrn_edge.runtime.sidecar import check_compatible
from mdrn_edge.runtime.tensorrt import tensorrt_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    res = CliRunner().invoke(export_cli, [str(ckpt), "--fp16", "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output)


def test_export_fp16_json_reports_parity_and_psnr_drop(exported):
    out, result = exported
    assert {"onnx", "onnx_fp16", "max_abs_err", "fp16_psnr_drop_db", "engine"} <= set(result)
    assert result["max_abs_err"] <= 1e-4
    assert result["fp16_psnr_drop_db"] <= 0.05
    assert result["fp16_provider"] == provider_order("auto")[0]  # CUDA where onnxruntime-gpu has it, else CPU
    if tensorrt_unavailable_reason():
        assert result["engine"] is None and result["engine_skipped_reason"]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(a["path"]).name for a in result["artifacts"] if a["path"])


def test_onnx_has_dynamic_axes_checker_passes_and_carries_metadata(exported, ckpt):
    out, result = exported
    model = onnx.load(result["onnx"])
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    info = ModelInfo.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert info.scale == 4 and info.arch == "mdrn" and info.normalizer.mode == "percentile"
    assert info.checkpoint_sha256 == file_sha256(ckpt)
    assert info.config["num_feat"] == 56 and info.mdrn_edge_version and "torch" in info.provenance


def test_fp16_graph_keeps_cca_statistics_in_fp32(exported):
    _, result = exported
    model = onnx.load(result["onnx_fp16"])
    stats = [n for n in model.graph.node if re.search(MDRN.FP32_LAYERS, n.name)]
    assert len(stats) == 8 * 9  # 8 blocks x (2 ReduceMean, Sub, Pow, 2 Add, Sqrt, 2 Constant)
    fp16_inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "weights should be FP16"
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    sqrt_out = [n.output[0] for n in stats if n.op_type == "Sqrt"]
    assert all(types.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for name in sqrt_out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O


def test_fp16_is_finite_at_a_600x500_lr_input(exported):
    """The spec measured an all-NaN output here with a sum-based CCA in pure FP16."""
    _, result = exported
    slice_ = read_volume([mr_small()]).data[0]
    lr = imresize(slice_ / slice_.max(), (600, 500))[None, None]
    with OnnxRuntimeRunner(result["onnx_fp16"], device="cpu") as runner:
        out = runner.infer(lr)  # the runner itself refuses NaN/Inf
    assert out.shape == (1, 1, 2400, 2000) and np.isfinite(out).all()


def test_fp16_gate_runs_on_several_real_slices_and_says_what_the_cpu_check_proves(exported):
    """#12 item 7: more than one 64x64 slice (pydicom-data's 1024x1024 and 484x484 MR where installed), the
    activation headroom below FP16's largest value, and the scope of a CPU-only check in the report."""
    _, result = exported
    checks = next(a for a in result["artifacts"] if a["format"] == "onnx_fp16")["checks"]
    assert len(checks["lr_sizes"]) >= 6 and max(max(s) for s in checks["lr_sizes"]) >= 256
    assert 0 < checks["fp16_max_activation"] < 65504 / 2 and checks["fp16_headroom"] > 2
    if checks["provider"] == "CPUExecutionProvider":
        assert "not FP16 arithmetic" in checks["scope"] and "65504" in checks["scope"]


def test_fp16_range_check_refuses_activations_near_the_fp16_limit(exported):
    """Real slices far outside the model's normalisation push activations towards 65504: refused, naming the
    layer, although ONNX Runtime on the CPU (upcasting FP16) would compute them without overflow."""
    from mdrn_edge.errors import ExportCheckError
    from mdrn_edge.export.checks import check_pairs, fp16_range_check
    from mdrn_edge.export.fp16 import load_onnx_info

    _, result = exported
    info = load_onnx_info(Path(result["onnx"]))
    pairs = check_pairs([[mr_small()]], info)
    assert fp16_range_check(Path(result["onnx"]), pairs, info)["fp16_headroom"] > 2
    for p in pairs:
        p.lr *= 1e6  # the tiny test model's activations grow with its input
    with pytest.raises(ExportCheckError, match=r"layer \S+ reaches \d+ on real slices.*FP16 may overflow"):
        fp16_range_check(Path(result["onnx"]), pairs, info)


def test_onnx_runtime_tensorrt_ep_gets_fp16_caches_and_a_profile(exported, tmp_path, monkeypatch):
    """#12 item 6: without options the TensorRT EP rebuilds an FP32 engine at every start and for every shape."""
    from mdrn_edge.errors import MissingDependencyError
    from mdrn_edge.export.fp16 import load_onnx_info
    from mdrn_edge.runtime.onnxruntime import tensorrt_ep_options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _, result = exported
    fp16 = Path(result["onnx_fp16"])
    info = load_onnx_info(Path(result["onnx"]))
    opts = tensorrt_ep_options(fp16, info.with_precision("fp16"))
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_int8_enable"] is False
    # #24 item 3: CCA's statistics off TensorRT (to the CUDA EP, FP32), beside ONNX Runtime's own exclusions
    excluded = opts["trt_op_types_to_exclude"].split(",")
    assert excluded[:3] == ["NonMaxSuppression", "NonZero", "RoiAlign"] and {"ReduceMean", "Pow", "Sqrt"} <= set(excluded)
    assert not {"Add", "Conv", "Mul", "Constant"} & set(excluded)
    int8 = tensorrt_ep_options(fp16, info.with_precision("int8"))  # #24 item 2: without it TensorRT refuses Q/DQ
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is True
    assert "trt_op_types_to_exclude" not in tensorrt_ep_options(fp16, info)  # FP32: nothing to keep from FP16
    with monkeypatch.context() as m:  # the op types are read with onnx: without it one line naming the [gpu] extra
        m.setitem(sys.modules, "onnx", None)
        with pytest.raises(MissingDependencyError, match=r"^onnx is not installed .*pip install onnx, or .*\[gpu\]"):
            tensorrt_ep_options(fp16, info.with_precision("fp16"))
        assert "trt_op_types_to_exclude" not in tensorrt_ep_options(fp16, info)  # FP32 never needs it
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_max_shapes"]) == ("lr:1x1x16x16", "lr:1x1x512x512")
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path)) and file_sha256(fp16)[:16] in opts["trt_engine_cache_path"]
    for path, half in ((fp16, True), (Path(result["onnx"]), False)):
        runner = OnnxRuntimeRunner(path, providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
        with warnings.catch_warnings():  # "not in available provider names" where onnxruntime lacks the EP
            warnings.simplefilter("ignore", UserWarning)
            with runner:  # without a TensorRT EP it runs on the CPU, with the options it was given
                assert runner.infer(np.zeros((1, 1, 16, 16), np.float32)).shape == (1, 1, 64, 64)
        given = runner.provider_options["TensorrtExecutionProvider"]
        assert given["trt_fp16_enable"] is half and Path(given["trt_engine_cache_path"]).is_dir()


def test_parity_on_real_vs_seg_slices_at_two_sizes(ckpt, tmp_path, shared_series):
    res = CliRunner().invoke(export_cli, [str(ckpt), "--output", str(tmp_path), "--no-engine", "--json",
                                          *sum((["--check-data", str(p)] for p in shared_files(101, 104)), [])])
    assert res.exit_code == 0, res.output
    checks = json.loads(res.output)["artifacts"][0]["checks"]
    assert checks["max_abs_err"] <= 1e-4 and len(checks["lr_sizes"]) == 2
    assert checks["lr_sizes"][0] == [128, 128] and checks["lr_sizes"][1] != [128, 128]


def run_export(*args):
    return CliRunner().invoke(export_cli, [str(a) for a in args])


def one_error_line(res):
    lines = [line for line in res.output.splitlines() if line.strip() and not line.startswith("- ")]
    return res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output


def test_failed_fp16_gate_leaves_nothing_behind(ckpt, tmp_path):
    res = run_export(ckpt, "--fp16", "--output", tmp_path / "o", "--max-psnr-drop", "-1")
    assert one_error_line(res) and "FP16 loses" in res.output
    assert not (tmp_path / "o").exists()  # the folder it made for this export is gone too


def _bad_checkpoint(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage")
    elif kind == "foreign":
        torch.save({"weight": torch.zeros(1)}, path)
    return path


@pytest.mark.parametrize("kind,expected", [
    ("missing", "no such file or shipped model"),
    ("corrupt", "not a loadable weights-only checkpoint"),
    ("foreign", "not an mdrn-edge checkpoint"),
])
def test_bad_checkpoints_are_one_line(tmp_path, kind, expected):
    res = run_export(_bad_checkpoint(tmp_path, kind), "--output", tmp_path / "o")
    assert one_error_line(res) and expected in res.output
    assert not (tmp_path / "o").exists()


def test_checkpoint_from_another_architecture_is_refused(ckpt, tmp_path):
    data = torch.load(ckpt, weights_only=True)
    data["arch"] = "edsr"
    torch.save(data, tmp_path / "edsr.pt")
    res = run_export(tmp_path / "edsr.pt", "--output", tmp_path / "o")
    assert one_error_line(res) and "do not fit the stored architecture" in res.output


def test_newer_checkpoint_format_is_refused(ckpt, tmp_path):
    data = torch.load(ckpt, weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "new.pt")
    assert "upgrade mdrn-edge" in run_export(tmp_path / "new.pt", "--output", tmp_path / "o").output


@pytest.mark.parametrize("args,expected", [
    (["--min-shape", "1x1x600x600"], "min <= opt <= max"),
    (["--max-shape", "1x3x512x512"], "one channel"),
    (["--opt-shape", "big"], "NxCxHxW"),
])
def test_bad_profile_shapes_are_refused_before_writing(ckpt, tmp_path, args, expected):
    res = run_export(ckpt, "--output", tmp_path / "o", *args)
    assert one_error_line(res) and expected in res.output and not (tmp_path / "o").exists()


def test_unwritable_output_is_one_line(ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    res = run_export(ckpt, "--output", tmp_path / "file" / "sub")
    assert one_error_line(res) and "cannot write the output folder" in res.output


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are present here")
def test_explicit_engine_without_tensorrt_says_what_to_install_and_keeps_onnx(ckpt, tmp_path):
    res = run_export(ckpt, "--engine", "--output", tmp_path / "o")
    assert res.exit_code != 0 and "install" in res.output.splitlines()[-1]
    assert (tmp_path / "o" / "mdrn-x4.onnx").exists()


# --- TensorRT: what can be checked without a GPU ------------------------------------------------------------------

SIDECAR = {"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}, "version_compatible": False}


def test_sidecar_accepts_the_same_version_and_gpu():
    check_compatible(SIDECAR, "10.3.0.30", {"name": "Orin", "compute_capability": "8.7"}, "m.engine")


@pytest.mark.parametrize("version,cc,expected", [
    ("10.4.0", "8.7", "built with TensorRT 10.3.0"),
    ("10.3.0", "9.0", "built for Orin (compute 8.7)"),
])
def test_sidecar_refuses_another_version_or_gpu_with_one_line(version, cc, expected):
    with pytest.raises(ModelFileError, match=re.escape(expected)) as err:
        check_compatible(SIDECAR, version, {"name": "H100", "compute_capability": cc}, "m.engine")
    assert "rebuild it on this device" in str(err.value) and "\n" not in str(err.value)


def test_version_compatible_engines_run_on_any_later_tensorrt_major_included():
    """TensorRT: version-compatible plans of 8.6 run on 9 and 10; never on an older runtime."""
    vc = {**SIDECAR, "version_compatible": True}
    check_compatible(vc, "10.16.1", {"compute_capability": "8.7"}, "m.engine")
    check_compatible(vc, "11.1.0", {"compute_capability": "8.7"}, "m.engine")
    with pytest.raises(ModelFileError):
        check_compatible(vc, "10.2.0", {"compute_capability": "8.7"}, "m.engine")


def _attributes_used_on(source: Path, names: set[str]) -> set[tuple[str, str]]:
    tree = ast.parse(source.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "self":
                base = ast.Name(id=base.attr)
            if isinstance(base, ast.Name) and base.id in names:
                found.add((base.id, node.attr))
    return found


# Every TensorRT name our code calls, with the release that introduced it (NVIDIA's API docs and release notes):
# JetPack 6.1 ships TensorRT 10.3, so nothing newer may be used. A name missing here fails the test below: look
# up when it appeared before adding it.
TRT_SINCE = {
    "Logger": "5.0", "WARNING": "5.0", "Builder": "5.0", "Runtime": "5.0", "OnnxParser": "5.0", "__version__": "5.0",
    "create_network": "5.0", "create_builder_config": "6.0", "create_optimization_profile": "6.0",
    "build_serialized_network": "8.0", "NetworkDefinitionCreationFlag": "5.0", "STRONGLY_TYPED": "10.0",
    "parse_from_file": "7.0", "num_errors": "5.0", "get_error": "5.0", "desc": "5.0", "node": "5.0", "node_name": "8.6",
    "num_layers": "5.0", "get_layer": "5.0", "get_input": "5.0", "get_output": "5.0", "num_outputs": "5.0",
    "precision": "5.0", "set_output_type": "5.0", "num_inputs": "5.0", "type": "5.0", "LayerType": "5.0",
    "CONSTANT": "5.0", "SHUFFLE": "5.0", "dtype": "5.0", "name": "5.0", "float32": "5.0", "float16": "5.0",
    "set_memory_pool_limit": "8.4", "MemoryPoolType": "8.4", "WORKSPACE": "8.4",
    "set_flag": "6.0", "clear_flag": "6.0", "BuilderFlag": "6.0", "FP16": "6.0", "INT8": "6.0", "TF32": "7.1",
    "GPU_FALLBACK": "6.0", "OBEY_PRECISION_CONSTRAINTS": "8.2", "VERSION_COMPATIBLE": "8.6",
    "EXCLUDE_LEAN_RUNTIME": "8.6", "builder_optimization_level": "8.6",
    "create_timing_cache": "8.0", "set_timing_cache": "8.0", "get_timing_cache": "8.0", "serialize": "8.0",
    "combine": "8.0", "add_optimization_profile": "6.0", "set_shape": "6.0",
    "default_device_type": "5.0", "DLA_core": "5.0", "can_run_on_DLA": "6.0", "DeviceType": "5.0", "DLA": "5.0", "num_DLA_cores": "5.0",
    "deserialize_cuda_engine": "5.0", "engine_host_code_allowed": "8.6", "load_runtime": "8.6",
    "num_io_tensors": "8.5", "get_tensor_name": "8.5", "get_tensor_mode": "8.5", "get_tensor_dtype": "8.5",
    "get_tensor_profile_shape": "8.5", "TensorIOMode": "8.5", "INPUT": "8.5", "OUTPUT": "8.5",
    "create_execution_context": "5.0", "device_memory_size_v2": "10.1", "set_optimization_profile_async": "7.0",
    "set_input_shape": "8.5", "get_tensor_shape": "8.5", "set_tensor_address": "8.5", "execute_async_v3": "8.5",
}
TRT_OBJECTS = {"trt", "builder", "config", "network", "layer", "parser", "runtime", "shim", "engine", "ctx",
               "context", "trt_profile", "cache", "on_disk", "e", "t"}


def test_every_tensorrt_name_the_code_calls_exists_in_tensorrt_10_3():
    """JetPack 6.1's TensorRT 10.3 is the oldest we support: the code may call nothing introduced after it."""
    sources = [ROOT / "mdrn_edge" / "runtime" / "tensorrt.py", ROOT / "mdrn_edge" / "engines" / "tensorrt.py"]
    used = {attr for src in sources for _, attr in _attributes_used_on(src, TRT_OBJECTS)}
    used |= {attr for src in sources for base, attr in _enum_members_used(src)}
    unknown = sorted(used - set(TRT_SINCE) - {"WARNING", "input_name", "output_name", "cuda", "path", "profile",
                                               "sidecar", "logger", "info", "lean_runtime", "allow_host_code",
                                               "profile_shapes", "_buffers", "_host", "_lock", "trt"})
    assert not unknown, f"TensorRT names with no known release: {unknown}; add them to TRT_SINCE with their release"
    newer = {n: v for n, v in TRT_SINCE.items() if n in used and tuple(map(int, v.split("."))) > (10, 3)}
    assert not newer, f"not in TensorRT 10.3 (JetPack 6.1): {newer}"
    assert len(used & set(TRT_SINCE)) >= 50


def _enum_members_used(source: Path) -> set[tuple[str, str]]:
    """``trt.X.Y`` attribute chains: the enum members (BuilderFlag.FP16, TensorIOMode.INPUT, ...)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            base = node.value
            if isinstance(base.value, ast.Name) and base.value.id == "trt":
                found.add((base.attr, node.attr))
    return found


def test_runtime_api_names_exist_in_the_tensorrt_10_lean_bindings():
    """Every TensorRT call of the runtime backend, checked against the real TensorRT 10 lean runtime module."""
    trt = pytest.importorskip("tensorrt_lean_bindings", reason="pip install tensorrt-lean-cu12-bindings (dev extra)")
    classes = {"engine": trt.ICudaEngine, "ctx": trt.IExecutionContext, "context": trt.IExecutionContext,
               "runtime": trt.Runtime, "shim": trt.Runtime, "trt": trt}
    used = _attributes_used_on(ROOT / "mdrn_edge" / "runtime" / "tensorrt.py", set(classes))
    used = {(obj, attr) for obj, attr in used if not (obj == "trt" and attr == "__version__")}
    assert len(used) >= 15
    missing = sorted(f"{obj}.{attr}" for obj, attr in used if not hasattr(classes[obj], attr))
    assert not missing, f"not in TensorRT {trt.__version__}: {missing}"
    for removed in ("execute_async_v2", "get_binding_index", "max_batch_size"):
        assert removed not in (ROOT / "mdrn_edge" / "runtime" / "tensorrt.py").read_text()


def test_builder_uses_no_api_removed_in_tensorrt_10():
    text = (ROOT / "mdrn_edge" / "engines" / "tensorrt.py").read_text()
    for removed in ("build_engine(network", "max_workspace_size", "max_batch_size", "EXPLICIT_BATCH", "binding"):
        assert removed not in text
    trt = pytest.importorskip("tensorrt_lean_bindings", reason="pip install tensorrt-lean-cu12-bindings (dev extra)")
    for base, member in _enum_members_used(ROOT / "mdrn_edge" / "engines" / "tensorrt.py"):
        if hasattr(trt, base):
            assert hasattr(getattr(trt, base), member), f"trt.{base}.{member}"


def test_the_emulator_offers_only_names_real_tensorrt_has():
    """The test emulator must not let code pass that calls something TensorRT lacks (checked against the real lean
    runtime bindings for the runtime classes and the enums)."""
    trt = pytest.importorskip("tensorrt_lean_bindings", reason="pip install tensorrt-lean-cu12-bindings (dev extra)")
    sys.path.insert(0, str(ROOT / "tests" / "trt_emulator" / "common"))
    try:
        import trt_emulator as emu
    finally:
        sys.path.pop(0)
    pairs = [(emu.Runtime, trt.Runtime), (emu.ICudaEngine, trt.ICudaEngine), (emu.IExecutionContext, trt.IExecutionContext),
             (emu.ITimingCache, trt.ITimingCache), (emu.IOptimizationProfile, trt.IOptimizationProfile)]
    for fake, real in pairs:
        public = {n for n in vars(fake) if not n.startswith("_")} - {"lean", "header", "session", "engine", "version",
                                                                     "entries", "cc", "shapes", "logger"}
        assert public and not {n for n in public if not hasattr(real, n)}, (fake.__name__, public - set(dir(real)))
    for enum_name in ("BuilderFlag", "MemoryPoolType", "DeviceType", "TensorIOMode"):
        fake = {m.name for m in getattr(emu, enum_name)}
        assert fake <= set(dir(getattr(trt, enum_name))), enum_name


# --- TensorRT: the real thing, wherever it can run ---------------------------------------------------------------

needs_trt = pytest.mark.skipif(bool(tensorrt_unavailable_reason()), reason=f"TensorRT engine cannot run here: {tensorrt_unavailable_reason()}")


@pytest.mark.tensorrt
@needs_trt
def test_fp16_engine_builds_with_sidecar_and_matches_onnx_runtime(ckpt, tmp_path):
    res = run_export(ckpt, "--fp16", "--engine", "--output", tmp_path, "--json", "--max-shape", "1x1x128x128",
                     "--timing-cache", tmp_path / "tc.cache")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    engine = Path(result["engine"])
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["engine_sha256"] == file_sha256(engine)
    assert sidecar["fp32_layers"] and sidecar["trtexec"].startswith("trtexec --onnx=")
    checks = result["artifacts"][-1]["checks"]
    assert checks["psnr_drop_db"] <= 0.05
    assert (tmp_path / "tc.cache").stat().st_size > 0


def test_export_from_the_shipped_onnx_without_torch(tmp_path):
    """The Jetson path: FP16 ONNX (and, where TensorRT runs, the engine) built on the device from the ONNX."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from mdrn_edge.cli.export import command\n"
            f"command(['mdrn-x4', '--fp16', '--output', {str(tmp_path)!r}, '--json'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout)
    assert result["max_abs_err"] is None and result["fp16_psnr_drop_db"] <= 0.05
    assert "not re-run" in result["artifacts"][0]["checks"]["torch_parity"]
    assert (tmp_path / "mdrn-x4.onnx").read_bytes() == (ROOT / "mdrn_edge" / "weights" / "mdrn-x4.onnx").read_bytes()


def test_engine_check_pairs_fit_the_default_profile():
    """#12 audit item 1: the bundled 64x64 sample at x4 gives 16x16 and 12x12 LR check slices, below the default
    profile minimum 16x16 for the crop; the engine gate keeps only what the profile admits (cropping what exceeds
    its maximum), so a default engine export no longer asks the engine for shapes it cannot run."""
    from mdrn_edge.cli.export import command as export_command
    from mdrn_edge.engines.tensorrt import Profile
    from mdrn_edge.errors import ExportCheckError
    from mdrn_edge.export.checks import check_pairs, within_profile
    from mdrn_edge.runtime import create_runner, resolve_model_file

    defaults = {p.name: p.default for p in export_command.params}
    profile = Profile.parse(defaults["min_shape"], defaults["opt_shape"], defaults["max_shape"])
    with create_runner(resolve_model_file("mdrn-x4", None)) as runner:
        pairs = check_pairs([[mr_small()]], runner.info)
    assert sorted(p.lr.shape[-1] for p in pairs) == [12, 16]  # what made every default engine export fail
    kept = within_profile(pairs, profile.min[2:], profile.max[2:], 4, "model.engine")
    assert [p.lr.shape[-2:] for p in kept] == [(16, 16)] and kept[0].hr.shape[-2:] == (64, 64)
    cropped = within_profile(pairs, (8, 8), (10, 10), 4, "model.engine")
    assert all(p.lr.shape[-2:] == (10, 10) and p.hr.shape[-2:] == (40, 40) for p in cropped)
    assert np.array_equal(cropped[0].lr[0], pairs[0].lr[0, 3:13, 3:13])
    with pytest.raises(ExportCheckError, match="admits none of the check slices"):
        within_profile(pairs, (32, 32), (64, 64), 4, "model.engine")


# --- INT8: explicit quantisation calibrated on real MRI -----------------------------------------------------------

def test_int8_export_calibrates_on_real_mri_and_passes_its_gate_on_the_held_apart_dev_slices(shared_series, tmp_path):
    """The issue's command: ``mdrn-export mdrn-x4 --int8 --calibration ../shared/data/vs-seg-001-t1 --json``."""
    before = {p.name: p.stat().st_mtime_ns for p in shared_series.iterdir()}
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--int8", "--calibration", str(shared_series), "--json",
                                          "--output", str(tmp_path / "out"), "--no-engine"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["int8_psnr_drop_db"] <= 0.1
    art = next(a for a in result["artifacts"] if a["format"] == "onnx_int8")
    assert art["checks"]["held_apart_slices"] == 20  # 1-101 .. 1-120, never used to calibrate
    assert art["checks"]["calibration_inputs"] == 32 and [128, 128] in art["checks"]["lr_sizes"]
    # an INT8 engine may run the layers left in float in FP16 (#24 item 4): their range is checked too
    assert 0 < art["checks"]["fp16_max_activation"] < 65504 / 2 and art["checks"]["fp16_headroom"] > 2
    model = onnx.load(result["onnx_int8"])
    consumers = {i for n in model.graph.node if n.op_type == "Conv" for i in n.input}
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    int8 = [n.name for n in convs if n.input[0] in dequantized]
    assert len(int8) >= 80 and not any(re.search("conv_first|upsample|attn", name) for name in int8)
    assert consumers & dequantized
    info = ModelInfo.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert info.precision == "int8"
    assert {p.name: p.stat().st_mtime_ns for p in shared_series.iterdir()} == before


@pytest.mark.parametrize("args,expected", [
    (["--int8"], "--int8 needs --calibration SERIES"),
    (["--calibration", "x"], "--calibration is for --int8"),
    (["--int8", "--calibration", "/nonexistent/series"], "/nonexistent/series"),
    (["--exclude-lean-runtime"], "add --version-compatible"),
])
def test_int8_and_engine_option_mistakes_are_one_line_and_write_nothing(args, expected, tmp_path):
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(tmp_path / "out"), "--no-engine", *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
