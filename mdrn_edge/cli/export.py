"""``mdrn-export``: checkpoint -> FP32 ONNX -> FP16 ONNX -> TensorRT engine, each checked on real MRI slices."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from mdrn_edge.cli.common import emit_json, json_option, user_errors
from mdrn_edge.errors import InputError, MdrnError, MissingDependencyError, require


def _stage_dir(output: Path) -> Path:
    try:
        output.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".mdrn-export-", dir=output))
    except OSError as exc:
        raise InputError(f"{output}: cannot write the output folder ({exc.strerror}); choose a writable --output") from None


def _publish(stage: Path, output: Path) -> None:
    """Move every staged file into the output folder (each rename atomic), then drop the stage."""
    for f in sorted(stage.iterdir()):
        os.replace(f, output / f.name)
    shutil.rmtree(stage, ignore_errors=True)


def _step(label: str, quiet: bool):
    if not quiet:
        click.echo(f"- {label} ...", err=True)


def _source(model: str) -> Path:
    """A given file as is; a shipped name as its checkpoint where torch is installed, else as its ONNX."""
    from mdrn_edge.weights import resolve_model

    if Path(model).exists():
        return Path(model)
    try:
        import torch  # noqa: F401
    except ImportError:
        return resolve_model(model, ".onnx")
    return resolve_model(model, ".pt")


@click.command("export", context_settings={"show_default": True})
@click.argument("model")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the ONNX files and engine.")
@click.option("--fp16/--no-fp16", default=False, help="Also write an FP16 ONNX (FP32 I/O, CCA statistics in FP32) and build an FP16 engine.")
@click.option("--engine/--no-engine", default=None, help="Build a TensorRT engine  [default: wherever TensorRT and a GPU are present].")
@click.option("--opset", type=int, default=17, help="ONNX opset.")
@click.option("--min-shape", default="1x1x16x16", help="Smallest LR input of the engine profile (NxCxHxW or HxW).")
@click.option("--opt-shape", default="1x1x256x256", help="LR input the engine is tuned for.")
@click.option("--max-shape", default="1x1x512x512", help="Largest LR input of the engine profile (keep it modest on Jetson).")
@click.option("--workspace", type=int, default=1024, help="TensorRT workspace limit in MB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache file, read and updated.")
@click.option("--version-compatible", is_flag=True, help="Version-compatible engine excluding the lean runtime (run it with the ~45 MB lean runtime).")
@click.option("--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimisation level (default 3).")
@click.option("--check-data", multiple=True, help="Real HR slices (DICOM/NIfTI) for the checks  [default: the bundled sample].")
@click.option("--max-psnr-drop", type=float, default=0.05, help="Largest FP16 PSNR loss (dB) against FP32 before the export fails.")
@json_option
@user_errors
def command(model, output, fp16, engine, opset, min_shape, opt_shape, max_shape, workspace, timing_cache,
            version_compatible, opt_level, check_data, max_psnr_drop, as_json):
    """Export MODEL to ONNX and TensorRT, with the checks that prove each file still matches on real MRI.

    MODEL is a checkpoint (.pt), a shipped name (mdrn-x4) or, on a device without PyTorch (a Jetson), an
    mdrn-edge FP32 ONNX file: then the FP16 ONNX and the engine are built from it and checked against it.
    """
    require("onnx", "export")
    from mdrn_edge.data.normalize import Normalizer
    from mdrn_edge.engines.tensorrt import Profile
    from mdrn_edge.export.checks import check_pairs, fp16_psnr_drop, torch_parity
    from mdrn_edge.export.fp16 import convert_fp16, copy_onnx, load_onnx_info
    from mdrn_edge.samples import sample_files

    quiet = as_json
    profile = Profile.parse(min_shape, opt_shape, max_shape)  # validate everything before writing anything
    path = _source(model)
    output = Path(output)
    net = None
    if path.suffix == ".onnx":
        info = load_onnx_info(path)
    else:
        require("torch", "export")
        from mdrn_edge.export.onnx import export_onnx, model_info_from_checkpoint
        from mdrn_edge.fileio import file_sha256
        from mdrn_edge.models.checkpoint import load_model

        net, ckpt = load_model(path)
        if ckpt["arch"] == "bicubic":
            raise InputError(f"{model}: bicubic has no weights to export")
        info = model_info_from_checkpoint(ckpt, file_sha256(path))
    stage = _stage_dir(output)
    artifacts, result = [], {"model": str(model), "engine": None}
    try:
        pairs = check_pairs(check_data or sample_files(), info.scale, Normalizer.from_dict(info.normalizer))
        if net is None:
            _step("ONNX FP32 (given: checked, not re-exported)", quiet)
            onnx32 = copy_onnx(path, stage / f"{info.name}.onnx")
        else:
            _step(f"ONNX FP32 (opset {opset})", quiet)
            onnx32 = export_onnx(net, info, stage / f"{info.name}.onnx", opset)
            onnx32.checks.update(torch_parity(net, onnx32.path, pairs))
        artifacts.append(onnx32)
        if fp16:
            _step("ONNX FP16 (CCA statistics kept in FP32)", quiet)
            onnx16 = convert_fp16(onnx32.path, stage / f"{info.name}.fp16.onnx")
            onnx16.checks.update(fp16_psnr_drop(onnx32.path, onnx16.path, pairs, info.scale, max_psnr_drop))
            artifacts.append(onnx16)
        engine_art = _engine(engine, onnx32, artifacts[-1] if fp16 else None, stage, info, fp16, profile, workspace,
                             timing_cache, version_compatible, opt_level, pairs, max_psnr_drop, quiet)
        artifacts.append(engine_art)
        _publish(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for art in artifacts:
        if art.path:
            art.path = output / art.path.name
    by_format = {a.format: a for a in artifacts}
    fp16_checks = by_format["onnx_fp16"].checks if "onnx_fp16" in by_format else {}
    result.update({
        "onnx": str(by_format["onnx"].path),
        "onnx_fp16": str(by_format["onnx_fp16"].path) if "onnx_fp16" in by_format else None,
        "max_abs_err": by_format["onnx"].checks.get("max_abs_err"),
        "fp16_psnr_drop_db": fp16_checks.get("fp16_psnr_drop_db"),
        "fp16_provider": fp16_checks.get("provider"),
        "engine": str(engine_art.path) if engine_art.path else None,
        "engine_skipped_reason": engine_art.skipped,
        "artifacts": [a.to_dict() for a in artifacts],
    })
    if as_json:
        emit_json(result)
    else:
        _table(artifacts)
    if engine and engine_art.skipped:
        raise MissingDependencyError(f"engine not built: {engine_art.skipped} (the ONNX files were written to {output})")


def _engine(engine, onnx32, onnx16, stage, info, fp16, profile, workspace, timing_cache, version_compatible, opt_level,
            pairs, max_psnr_drop, quiet):
    """Build and check the engine where TensorRT and a GPU are present; otherwise a skipped artifact with why."""
    from mdrn_edge.export.artifact import Artifact
    from mdrn_edge.runtime.tensorrt import tensorrt_unavailable_reason

    precision = "fp16" if fp16 else "fp32"
    if engine is False:
        return Artifact("engine", None, precision, skipped="--no-engine")
    reason = tensorrt_unavailable_reason()
    if reason is None:
        try:
            from mdrn_edge.engines.tensorrt import import_builder

            import_builder()
        except MdrnError as exc:
            reason = str(exc)
    if reason:
        return Artifact("engine", None, precision, skipped=reason)
    from mdrn_edge.engines.tensorrt import build_engine
    from mdrn_edge.export.checks import engine_check

    _step(f"TensorRT engine ({precision})", quiet)
    path = stage / f"{info.name}.{precision}.engine" if fp16 else stage / f"{info.name}.engine"
    _, sidecar = build_engine(onnx32.path, onnx16.path if onnx16 else None, path, fp16, profile, workspace,
                              Path(timing_cache) if timing_cache else None, version_compatible, opt_level)
    checks = engine_check(onnx32.path, path, pairs, info.scale, max_psnr_drop)
    return Artifact("engine", path, precision, {**checks, "tensorrt_version": sidecar["tensorrt_version"],
                                                 "gpu": sidecar["gpu"]["name"]}, sidecar["build_seconds"])


def _table(artifacts) -> None:
    click.echo(f"{'file':<34} {'size MB':>8} {'precision':>9} {'max err':>9} {'PSNR drop':>10}  status")
    for a in artifacts:
        err = a.checks.get("max_abs_err", a.checks.get("fp16_max_abs_err_vs_fp32"))
        drop = a.checks.get("fp16_psnr_drop_db")
        name = a.path.name if a.path else f"({a.format})"
        size = f"{a.size_mb:.2f}" if a.size_mb else "-"
        status = f"skipped: {a.skipped}" if a.skipped else "ok"
        click.echo(f"{name:<34} {size:>8} {a.precision:>9} {f'{err:.2e}' if err is not None else '-':>9} "
                   f"{f'{drop:+.4f} dB' if drop is not None else '-':>10}  {status}")


if __name__ == "__main__":
    command()
