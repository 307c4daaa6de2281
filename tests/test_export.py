import ast
import json
import re
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
    assert list((tmp_path / "o").iterdir()) == []


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


def test_version_compatible_engines_run_forward_within_the_major():
    vc = {**SIDECAR, "version_compatible": True}
    check_compatible(vc, "10.16.1", {"compute_capability": "8.7"}, "m.engine")
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


def test_runtime_api_names_exist_in_the_tensorrt_10_lean_bindings():
    """Every TensorRT call of the runtime backend, checked against the real TensorRT 10 lean runtime module."""
    trt = pytest.importorskip("tensorrt_lean_bindings", reason="pip install tensorrt-lean-cu12-bindings (dev extra)")
    classes = {"engine": trt.ICudaEngine, "ctx": trt.IExecutionContext, "context": trt.IExecutionContext,
               "runtime": trt.Runtime, "trt": trt}
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
    for flag in ("FP16", "OBEY_PRECISION_CONSTRAINTS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"):
        assert hasattr(trt.BuilderFlag, flag)


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
        pairs = check_pairs([mr_small()], runner.info)
    assert sorted(p.lr.shape[-1] for p in pairs) == [12, 16]  # what made every default engine export fail
    kept = within_profile(pairs, profile.min[2:], profile.max[2:], 4, "model.engine")
    assert [p.lr.shape[-2:] for p in kept] == [(16, 16)] and kept[0].hr.shape[-2:] == (64, 64)
    cropped = within_profile(pairs, (8, 8), (10, 10), 4, "model.engine")
    assert all(p.lr.shape[-2:] == (10, 10) and p.hr.shape[-2:] == (40, 40) for p in cropped)
    assert np.array_equal(cropped[0].lr[0], pairs[0].lr[0, 3:13, 3:13])
    with pytest.raises(ExportCheckError, match="admits none of the check slices"):
        within_profile(pairs, (32, 32), (64, 64), 4, "model.engine")
