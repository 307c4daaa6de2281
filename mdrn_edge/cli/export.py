"""``mdrn-export``: checkpoint -> FP32 ONNX -> FP16 ONNX -> TensorRT engine, each checked on real MRI slices."""

from __future__ import annotations

from pathlib import Path

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineCommand, emit_json, json_option, stop_on_signals, user_errors, version_option,
)
from mdrn_edge.errors import InputError, MissingDependencyError
from mdrn_edge.runtime.base import DEFAULT_PROFILE


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims))



@click.command("export", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.argument("model")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the ONNX files and engine.")
@click.option("--fp16/--no-fp16", default=False, help="Also write an FP16 ONNX (FP32 I/O, CCA statistics in FP32) and build an FP16 engine.")
@click.option("--int8", is_flag=True, help="Also write an INT8 Q/DQ ONNX calibrated on --calibration (CCA and the most INT8-sensitive layers in float) and build the engine in INT8; gated like FP16.")
@click.option("--openvino", is_flag=True, help="Gate OpenVINO's BF16 (on CPUs with native BF16) and, with --int8, its INT8 kernels on the check slices, and record each passed gate in the ONNX file, so mdrn-infer may run it.")
@click.option("--calibration", multiple=True, help="Real MRI series (DICOM folder or NIfTI) for --int8; its last sixth is held apart to gate the INT8 model.")
@click.option("--engine/--no-engine", default=None, help="Build a TensorRT engine  [default: wherever TensorRT and a GPU are present].")
@click.option("--opset", type=click.IntRange(13, 21), default=17, help="ONNX opset (13 or newer: the FP16 conversion and TensorRT 10 need it).")
@click.option("--min-shape", default=_shape(DEFAULT_PROFILE[0]), help="Smallest LR input of the engine profile (NxCxHxW or HxW).")
@click.option("--opt-shape", default=_shape(DEFAULT_PROFILE[1]), help="LR input the engine is tuned for.")
@click.option("--max-shape", default=_shape(DEFAULT_PROFILE[2]), help="Largest LR input of the engine profile (keep it modest on Jetson).")
@click.option("--workspace", type=click.IntRange(16, 1 << 20), default=1024, help="TensorRT workspace limit in MB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache file, read and updated (builds sharing it add to it; one written by another TensorRT version is replaced, with a warning).")
@click.option("--timing-cache-ignore-mismatch", is_flag=True, help="Use a --timing-cache made on a GPU whose device properties differ from this one's (TensorRT compares more than the compute capability); tactics may then be slower.")
@click.option("--version-compatible", is_flag=True, help="Version-compatible engine: runs on this and later TensorRT releases of its major and the next one (10.x -> 11.x; no other combination); its plan embeds TensorRT's lean runtime (host code: mdrn-infer then needs --allow-host-code).")
@click.option("--exclude-lean-runtime", is_flag=True, help="With --version-compatible: leave the lean runtime out of the plan; the same TensorRT version (or its lean runtime, tensorrt_lean) runs it without host code, and a later one when mdrn-infer is given --lean-runtime.")
@click.option("--dla-core", type=click.IntRange(0, 15), help="Build for this Jetson DLA core (FP16; one static shape: equal --min/--opt/--max-shape, a tile mdrn-infer tiles and pads to; layers the DLA cannot run fall back to the GPU; the layers on each are reported).")
@click.option("--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimisation level (default 3).")
@click.option("--check-data", multiple=True, help="Real HR slices of one series (DICOM/NIfTI) for the checks  [default: the bundled sample, plus pydicom-data's MR slices where installed].")
@click.option("--max-psnr-drop", type=float, default=0.05, help="Largest FP16 PSNR loss (dB) against FP32 before the export fails.")
@click.option("--max-int8-psnr-drop", type=float, default=0.1, help="Largest INT8 PSNR loss (dB) against FP32, on held-apart slices, before the export fails.")
@click.option("--triton", is_flag=True, help="Also write a Triton model repository (OUTPUT/triton): the ONNX model for Triton's ONNX Runtime backend (with --fp16/--int8 its TensorRT accelerator in that precision) and the engine, where built, as a TensorRT plan; configs checked with Triton's schema.")
@click.option("--triton-max-batch", type=click.IntRange(1, 1024), default=8, help="With --triton: the largest batch Triton's dynamic batcher forms.")
@click.option("--triton-instances", type=click.IntRange(1, 64), default=1, help="With --triton: model instances per device.")
@click.option("--triton-device", type=click.Choice(["gpu", "cpu"]), default="gpu", help="With --triton: where the instances run.")
@click.option("--overwrite", is_flag=True, help="Replace same-named files of an earlier mdrn-export in --output (never other files).")
@json_option
@user_errors
def command(model, output, fp16, int8, openvino, calibration, engine, opset, min_shape, opt_shape, max_shape, workspace,
            timing_cache, timing_cache_ignore_mismatch, version_compatible, exclude_lean_runtime, dla_core, opt_level,
            check_data, max_psnr_drop, max_int8_psnr_drop, triton, triton_max_batch, triton_instances, triton_device,
            overwrite, as_json):
    """Export MODEL to ONNX and TensorRT, with the checks that prove each file still matches on real MRI.

    MODEL is a checkpoint (.pt), a shipped name (mdrn-x4) or, on a device without PyTorch (a Jetson), an
    mdrn-edge FP32 ONNX file: then the FP16 ONNX and the engine are built from it and checked against it.
    """
    from mdrn_edge.engines.tensorrt import Profile
    from mdrn_edge.export import ExportConfig, export, summarize
    from mdrn_edge.export.triton import TritonOptions

    stop_on_signals()
    if not triton and (triton_max_batch != 8 or triton_instances != 1 or triton_device != "gpu"):
        raise InputError("--triton-max-batch, --triton-instances and --triton-device shape the Triton repository; add "
                         "--triton or leave them out")
    repository = TritonOptions(max_batch=triton_max_batch, instances=triton_instances,
                               kind=f"KIND_{triton_device.upper()}") if triton else None
    cfg = ExportConfig(fp16=fp16, int8=int8, openvino=openvino, calibration=calibration, engine=engine, opset=opset,
                       profile=Profile.parse(min_shape, opt_shape, max_shape), workspace_mb=workspace,
                       timing_cache=Path(timing_cache) if timing_cache else None,
                       timing_cache_ignore_mismatch=timing_cache_ignore_mismatch, version_compatible=version_compatible,
                       exclude_lean_runtime=exclude_lean_runtime, opt_level=opt_level, dla_core=dla_core,
                       check_data=check_data, max_psnr_drop=max_psnr_drop, max_int8_psnr_drop=max_int8_psnr_drop,
                       triton=repository, overwrite=overwrite)
    artifacts = export(model, output, cfg, progress=None if as_json else lambda step: click.echo(f"- {step} ...", err=True))
    if as_json:
        emit_json(summarize(model, artifacts))
    else:
        _table(artifacts)
    skipped = next((a.skipped for a in artifacts if a.format == "engine" and a.skipped), None)
    if (engine or dla_core is not None) and skipped:
        raise MissingDependencyError(f"engine not built: {skipped} (the ONNX files were written to {output})")


def _table(artifacts) -> None:
    click.echo(f"{'file':<34} {'size MB':>8} {'precision':>9} {'max err':>9} {'PSNR drop':>10}  status")
    for a in artifacts:
        if a.format == "triton":
            _row(f"{a.path.name}/ ({', '.join(a.checks['models'])})", "-", a.precision, None, None, "ok")
            continue
        if a.format == "openvino" and not a.skipped:  # one row per gated precision, in the file it was recorded in
            for precision, gate in a.checks.items():
                _row(f"(openvino {precision})", "-", precision, gate.get("max_abs_err"), gate.get("psnr_drop_db"),
                     f"skipped: {gate['skipped']}" if "skipped" in gate else "gate recorded")
            continue
        _row(a.path.name if a.path else f"({a.format})", f"{a.size_mb:.2f}" if a.size_mb else "-", a.precision,
             a.checks.get("max_abs_err"), a.checks.get("psnr_drop_db"), f"skipped: {a.skipped}" if a.skipped else "ok")


def _row(name: str, size: str, precision: str, err: float | None, drop: float | None, status: str) -> None:
    click.echo(f"{name:<34} {size:>8} {precision:>9} {f'{err:.2e}' if err is not None else '-':>9} "
                   f"{f'{drop:+.4f} dB' if drop is not None else '-':>10}  {status}")


if __name__ == "__main__":
    command()
