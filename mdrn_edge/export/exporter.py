"""The exporter: one table of formats, one function per format, composed by :func:`export` (after Ultralytics).

Every format function takes the export job and returns an :class:`Artifact`: the file it wrote and the checks it
passed (a skipped artifact says why). Everything is written into a stage folder inside ``output_dir`` and moved
into place only when every requested format has passed, so a failed gate leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from mdrn_edge.engines.tensorrt import EngineOptions, Profile
from mdrn_edge.errors import InputError, MdrnError, require
from mdrn_edge.evaluate import EvalPairs
from mdrn_edge.export.artifact import Artifact
from mdrn_edge.export.triton import REPOSITORY, TritonOptions
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.base import DEFAULT_PROFILE, Runner

log = logging.getLogger(__name__)


MAX_PARSER_OPSET = 20  # the newest opset onnx-tensorrt 10.x's operator table documents


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how; the CLI's options map one to one onto these fields."""

    fp16: bool = False
    int8: bool = False
    calibration: Sequence[str | Path] = ()  # real MRI series for INT8 calibration (its last sixth is held apart)
    engine: bool | None = None  # None: wherever TensorRT and a GPU are present
    opset: int = 17
    profile: Profile = field(default_factory=lambda: Profile(*DEFAULT_PROFILE))
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    timing_cache_ignore_mismatch: bool = False
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    opt_level: int | None = None
    dla_core: int | None = None
    check_data: Sequence[str | Path] = ()
    max_psnr_drop: float = 0.05
    max_int8_psnr_drop: float = 0.1
    openvino: bool = False  # gate OpenVINO's BF16 (and INT8) on the check slices and record the result in the files
    triton: TritonOptions | None = None  # also write a Triton model repository (export/triton.py)
    overwrite: bool = False  # replace same-named files an earlier mdrn-export wrote (never anyone else's)

    @property
    def engine_precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    def engine_options(self) -> EngineOptions:
        return EngineOptions(self.engine_precision, self.profile, self.workspace_mb, self.timing_cache,
                             self.version_compatible, self.exclude_lean_runtime, self.opt_level, self.dla_core,
                             self.timing_cache_ignore_mismatch)

    def check(self) -> None:
        """Option combinations refused before any work, in one line."""
        if self.int8 and not self.calibration:
            raise InputError("--int8 needs --calibration SERIES: real MRI like the slices the model will see (a "
                             "folder of DICOM or a NIfTI volume)")
        if self.calibration and not self.int8:
            raise InputError("--calibration is for --int8; add --int8 or leave it out")
        if self.dla_core is not None and self.engine is False:
            raise InputError("--dla-core builds a DLA engine; leave out --no-engine")
        if self.opset > MAX_PARSER_OPSET and (self.engine or self.dla_core is not None):
            raise InputError(f"--opset {self.opset} is past what TensorRT 10's ONNX parser documents (up to "
                             f"{MAX_PARSER_OPSET}); use --opset {MAX_PARSER_OPSET} or lower, or --no-engine")
        self.engine_options().check()

    def formats(self) -> list[str]:
        return ["onnx", *(["onnx_fp16"] if self.fp16 else []), *(["onnx_int8"] if self.int8 else []),
                *(["openvino"] if self.openvino else []), *(["engine"] if self.engine is not False else []),
                *(["triton"] if self.triton else [])]


@dataclass
class ExportJob:
    """The state the format functions share: the source, the stage folder, the check pairs, open runners."""

    source: Path
    info: ModelInfo
    net: Any  # the torch model, or None when exporting from an FP32 ONNX
    stage: Path
    cfg: ExportConfig
    pairs: list[EvalPairs]
    held_apart: list[EvalPairs] = field(default_factory=list)  # INT8 calibration slices kept out of calibrating
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    runners: dict[str, Runner] = field(default_factory=dict)

    def runner(self, key: str, make: Callable[[], Runner]) -> Runner:
        """An active runner, opened once per export and closed by :meth:`close`."""
        if key not in self.runners:
            self.runners[key] = make().activate()
        return self.runners[key]

    def onnx_runner(self, path: Path, cpu: bool = False) -> Runner:
        from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

        providers = ["CPUExecutionProvider"] if cpu else None
        return self.runner(f"ort:{path}:{cpu}", lambda: OnnxRuntimeRunner(path, providers=providers))

    def release(self, *prefixes: str) -> None:
        """Close the open runners whose keys start with ``prefixes`` (they are reopened when asked for again)."""
        for key in [k for k in self.runners if k.startswith(prefixes)]:
            self.runners.pop(key).deactivate()

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()


def _timed(fmt: str):
    """Time a format function, log what it wrote, and set the artifact's seconds."""

    def wrap(func: Callable[[ExportJob], Artifact]) -> Callable[[ExportJob], Artifact]:
        def run(job: ExportJob) -> Artifact:
            t0 = time.perf_counter()
            art = func(job)
            art.seconds = art.seconds or time.perf_counter() - t0
            log.info("%s: %s in %.1f s", fmt, art.path or f"skipped ({art.skipped})", art.seconds)
            return art

        run.__doc__ = func.__doc__
        return run

    return wrap


@_timed("onnx")
def export_onnx_fp32(job: ExportJob) -> Artifact:
    """FP32 ONNX with dynamic batch/H/W, checked against PyTorch (max abs error <= 1e-4) on real slices; from an
    FP32 ONNX source, the file itself (its parity was checked when it was exported)."""
    path = job.stage / f"{job.info.name}.onnx"
    if job.net is None:
        from mdrn_edge.export.fp16 import copy_onnx

        return copy_onnx(job.source, path)
    from mdrn_edge.export.checks import PARITY_TOLERANCE, gate
    from mdrn_edge.export.onnx import export_onnx
    from mdrn_edge.models.runner import TorchRunner

    art = export_onnx(job.net, job.info, path, job.cfg.opset)
    reference = job.runner("torch", lambda: TorchRunner.from_model(job.net, job.info))
    art.checks.update(gate(reference, job.onnx_runner(path, cpu=True), job.pairs, "ONNX Runtime", max_abs_err=PARITY_TOLERANCE))
    return art


@_timed("onnx_fp16")
def export_onnx_fp16(job: ExportJob) -> Artifact:
    """FP16 ONNX (FP32 I/O, the architecture's FP16-unsafe layers kept in FP32), gated on its activation range
    (headroom below FP16's largest value) and on its PSNR loss against the FP32 ONNX, both run by ONNX Runtime on
    real slices; on the CPU the report says what that can and cannot prove."""
    from mdrn_edge.export.checks import fp16_range_check, gate
    from mdrn_edge.export.fp16 import CPU_SCOPE, convert_fp16

    fp32 = job.artifacts["onnx"].path
    art = convert_fp16(fp32, job.stage / f"{job.info.name}.fp16.onnx")
    art.checks.update(fp16_range_check(fp32, job.pairs, job.info))
    art.checks.update(gate(job.onnx_runner(fp32), job.onnx_runner(art.path), job.pairs, "FP16",
                           max_psnr_drop=job.cfg.max_psnr_drop))
    if art.checks["provider"] == "CPUExecutionProvider":
        art.checks["scope"] = CPU_SCOPE
    return art


def engine_unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built here (no TensorRT, no builder, no GPU), or None."""
    from mdrn_edge.runtime.tensorrt import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        try:
            from mdrn_edge.engines.tensorrt import import_builder

            import_builder()
        except MdrnError as exc:
            reason = str(exc)
    return reason


@_timed("onnx_int8")
def export_onnx_int8(job: ExportJob) -> Artifact:
    """INT8 Q/DQ ONNX (explicit quantisation, CCA and the layers INT8 hurts most in float), calibrated on real MRI
    and gated on its PSNR loss against the FP32 ONNX on slices held apart from the calibration, and on the FP16
    activation range: an INT8 engine built with TensorRT's FP16 and INT8 flags may run every layer left in float
    in FP16 (NVIDIA/TensorRT#4095), the convolutions kept float among them, so their range is checked as for an
    FP16 export (the pinned FP32 layers excepted)."""
    from mdrn_edge.export.checks import fp16_range_check, gate
    from mdrn_edge.export.int8 import calibration_split, quantize_int8

    fp32 = job.artifacts["onnx"].path
    calibrate, held = calibration_split(job.cfg.calibration, job.info)
    art = quantize_int8(fp32, job.stage / f"{job.info.name}.int8.onnx", calibrate, job.stage)
    job.held_apart = held
    pairs = [*held, *job.pairs]
    art.checks.update(gate(job.onnx_runner(fp32, cpu=True), job.onnx_runner(art.path, cpu=True), pairs, "INT8",
                           max_psnr_drop=job.cfg.max_int8_psnr_drop, limit_option="--max-int8-psnr-drop"))
    art.checks["held_apart_slices"] = int(sum(len(p.lr) for p in held))
    art.checks.update(fp16_range_check(fp32, pairs, job.info))
    return art


@_timed("openvino")
def export_openvino(job: ExportJob) -> Artifact:
    """OpenVINO's reduced precisions gated against ONNX Runtime FP32 on the check slices, and each passed gate
    recorded in the file it applies to (``ModelInfo.gates``), so that the runtime may choose it: BF16 of the FP32
    ONNX where this CPU computes BF16 natively, OpenVINO's INT8 kernels (float layers in BF16) of the INT8 ONNX.
    OpenVINO reads the ONNX files themselves: no IR is written, since reading mdrn-x4's IR took 33 ms against
    17 ms for its ONNX (measured here); start-up is compiling, 0.29 s per input shape, which the runtime's
    compiled-model cache cuts to a 0.08 s import."""
    from mdrn_edge.export.checks import gate
    from mdrn_edge.runtime.openvino import OpenVINORunner, openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    if reason:
        return Artifact("openvino", None, "bf16", skipped=reason)
    from mdrn_edge.runtime.config import RuntimeConfig, gate_name

    fp32 = job.artifacts["onnx"].path
    reference = job.onnx_runner(fp32, cpu=True)
    targets = [("bf16", fp32, job.pairs, job.cfg.max_psnr_drop, "--max-psnr-drop")]
    if "onnx_int8" in job.artifacts:
        targets.append(("int8", job.artifacts["onnx_int8"].path, [*job.held_apart, *job.pairs],
                        job.cfg.max_int8_psnr_drop, "--max-int8-psnr-drop"))
    checks: dict[str, Any] = {}
    for precision, path, pairs, limit, option in targets:
        config = RuntimeConfig("openvino", "cpu", precision, allow_ungated=True, cache_dir="off")
        candidate = job.runner(f"ov:{path}:{precision}", lambda: OpenVINORunner(path, config))
        if (candidate.float_precision if precision == "int8" else candidate.precision) != "bf16":
            checks[precision] = {"skipped": f"this CPU has no native BF16 ({candidate.reason})"}
            continue
        figures = gate(reference, candidate, pairs, f"OpenVINO {precision.upper()}", max_psnr_drop=limit,
                       limit_option=option)
        checks[precision] = record_gate(path, gate_name("openvino", precision), figures)
    return Artifact("openvino", fp32, "bf16", checks)


def record_gate(path: Path, name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Write a passed gate into an ONNX file's model info (its other bytes unchanged); returns what was recorded."""
    import onnx

    from mdrn_edge.export.artifact import read_metadata, set_metadata
    from mdrn_edge.fileio import atomic_path
    from mdrn_edge.hardware import cpu_features, cpu_model
    from mdrn_edge.runtime.openvino import openvino_version

    record = {"passed": True, "psnr_drop_db": figures["psnr_drop_db"], "max_psnr_drop": figures["max_psnr_drop"],
              "max_abs_err": figures["max_abs_err"], "n_slices": figures["n_slices"], "lr_sizes": figures["lr_sizes"],
              "reference": "onnxruntime fp32 (CPU)", "openvino": openvino_version(), "cpu": cpu_model(),
              "cpu_features": cpu_features()}
    proto = onnx.load(str(path))
    set_metadata(proto, read_metadata(proto, str(path)).with_gate(name, record))
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return record


@_timed("engine")
def export_engine(job: ExportJob) -> Artifact:
    """A TensorRT engine (FP16 or INT8 when asked) with its JSON sidecar, gated on its PSNR loss against ONNX
    Runtime FP32; skipped with the reason where TensorRT or a GPU is missing."""
    cfg = job.cfg
    precision = cfg.engine_precision
    reason = engine_unavailable_reason() or (f"--opset {cfg.opset} is past what TensorRT 10's ONNX parser documents "
                                             f"(up to {MAX_PARSER_OPSET}); export with --opset {MAX_PARSER_OPSET} for an engine"
                                             if cfg.opset > MAX_PARSER_OPSET else None)
    if reason:
        return Artifact("engine", None, precision, skipped=reason)
    from mdrn_edge.engines.tensorrt import build_engine
    from mdrn_edge.export.checks import gate, within_profile
    from mdrn_edge.runtime.tensorrt import TensorRTRunner

    fp32 = job.artifacts["onnx"].path
    fp16 = job.artifacts.get("onnx_fp16")
    source = job.artifacts["onnx_int8"].path if precision == "int8" else fp32
    path = job.stage / (f"{job.info.name}.engine" if precision == "fp32" else f"{job.info.name}.{precision}.engine")
    job.release("ort:", "ov:")  # the gates' sessions hold memory (a CUDA arena) the builder needs on an 8 GB Orin
    _, sidecar = build_engine(source, path, cfg.engine_options(), fp16.path if fp16 else None)
    pairs = within_profile(job.pairs, cfg.profile.min[2:], cfg.profile.max[2:], job.info.scale, str(path))
    # the plan was built in this process a moment ago: its embedded lean runtime is ours to trust
    engine = job.runner("trt", lambda: TensorRTRunner(path, allow_host_code=True))
    limit, option = ((cfg.max_int8_psnr_drop, "--max-int8-psnr-drop") if precision == "int8"
                     else (cfg.max_psnr_drop, "--max-psnr-drop"))
    checks = gate(job.onnx_runner(fp32), engine, pairs, "the engine", max_psnr_drop=limit, limit_option=option)
    return Artifact("engine", path, precision, {**checks, "tensorrt_version": sidecar["tensorrt_version"],
                                                 "gpu": sidecar["gpu"]["name"], "dla_core": sidecar["dla_core"],
                                                 **{k: sidecar[k] for k in ("dla_layers", "gpu_layers") if k in sidecar}},
                    sidecar["build_seconds"])


@_timed("triton")
def export_triton(job: ExportJob) -> Artifact:
    """A Triton model repository: the FP32 ONNX (ONNX Runtime backend; with --fp16/--int8, its TensorRT accelerator
    in that precision with the engine profile's shapes) and, where an engine was built, the plan (TensorRT backend,
    the TensorRT version that built it recorded): each config checked by Triton's schema."""
    from mdrn_edge.export.triton import write_model

    repository = job.stage / REPOSITORY
    options, info = job.cfg.triton, job.info
    precision = {"fp16": "FP16", "int8": "INT8"}.get(job.cfg.engine_precision, options.tensorrt_precision)
    onnx_options = replace(options, tensorrt_precision=precision) if options.kind == "KIND_GPU" else options
    profile = (job.cfg.profile.min, job.cfg.profile.opt, job.cfg.profile.max)
    models = [write_model(repository, info.name, "onnxruntime_onnx", job.artifacts["onnx"].path, info, onnx_options,
                          profile)]
    engine = job.artifacts.get("engine")
    if engine and engine.path and not engine.skipped:
        from mdrn_edge.runtime.sidecar import read_sidecar

        built = str(read_sidecar(engine.path).get("tensorrt_version"))
        models.append(write_model(repository, f"{info.name}-trt", "tensorrt_plan", engine.path,
                                  info.with_precision(engine.precision), replace(options, tensorrt_precision=None),
                                  parameters={"tensorrt_version": built}))
    return Artifact("triton", repository, "fp32", {"models": [m.name for m in models], "max_batch": options.max_batch,
                                                   "instances": options.instances, "tensorrt_accelerator": precision})


# name -> (what it writes, the function); the CLI, the benchmarks and the summary all read this one table.
FORMATS: dict[str, tuple[str, Callable[[ExportJob], Artifact]]] = {
    "onnx": ("FP32 ONNX, dynamic batch/H/W, checked against PyTorch", export_onnx_fp32),
    "onnx_fp16": ("FP16 ONNX, FP16-unsafe layers in FP32, PSNR-gated", export_onnx_fp16),
    "onnx_int8": ("INT8 Q/DQ ONNX calibrated on real MRI, PSNR-gated on held-apart slices", export_onnx_int8),
    "openvino": ("OpenVINO BF16 (and INT8) gated on real MRI, recorded in the ONNX files", export_openvino),
    "engine": ("TensorRT engine + JSON sidecar, PSNR-gated", export_engine),
    "triton": ("Triton model repository (ONNX Runtime; the engine as a TensorRT plan), configs checked by Triton's schema", export_triton),
}


def load_source(model: str | Path) -> tuple[Path, ModelInfo, Any]:
    """``(file, model info, torch model or None)``: a given file as is; a shipped name as its checkpoint where
    torch is installed, else as its FP32 ONNX (the Jetson path)."""
    from mdrn_edge.weights import resolve_model

    path = Path(model)
    if not path.exists():
        try:
            import torch  # noqa: F401

            path = resolve_model(model, ".pt")
        except ImportError:
            path = resolve_model(model, ".onnx")
    if path.suffix == ".onnx":
        from mdrn_edge.export.fp16 import load_onnx_info

        return path, load_onnx_info(path), None
    require("torch", "export")
    from mdrn_edge.models.checkpoint import load_model

    net, ckpt, info = load_model(path)
    if info.arch == "bicubic":
        raise InputError(f"{model}: bicubic has no weights to export")
    return path, info, net


def _stage_dir(output: Path) -> tuple[Path, list[Path]]:
    """A stage folder inside ``output``, and the folders made for it (removed again if the export fails)."""
    made = [p for p in (output, *output.parents) if not p.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".mdrn-export-", dir=output)), made
    except OSError as exc:
        raise InputError(f"{output}: cannot write the output folder ({exc.strerror}); choose a writable --output") from None


def written_by_us(path: Path) -> bool:
    """An ONNX file with mdrn-edge's metadata, an engine with its sidecar, or a sidecar: what --overwrite may replace."""
    import json

    from mdrn_edge.runtime.sidecar import SIDECAR_FORMAT, sidecar_path

    try:
        if path.is_dir():  # a Triton repository: every model folder's config carries our model info
            from mdrn_edge.export.triton import info_of, parse_config

            configs = list(path.glob("*/config.pbtxt"))
            return bool(configs) and all(info_of(parse_config(c.read_text(), str(c)), str(c)) for c in configs)
        if path.suffix == ".onnx":
            import onnx

            from mdrn_edge.modelinfo import METADATA_KEY

            return any(p.key == METADATA_KEY for p in onnx.load(str(path), load_external_data=False).metadata_props)
        if path.suffix == ".json":
            return json.loads(path.read_text()).get("format") == SIDECAR_FORMAT
        return sidecar_path(path).is_file() and written_by_us(sidecar_path(path))
    except Exception:
        return False


def check_targets(output: Path, names: list[str], overwrite: bool) -> None:
    """Refuse to replace a same-named file unless --overwrite was given and mdrn-export wrote it."""
    for name in names:
        target = output / name
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise InputError(f"{target}: already exists; pass --overwrite to replace an earlier export, or choose "
                                 "another --output")
            if target.is_symlink() or not written_by_us(target):
                raise InputError(f"{target}: exists and was not written by mdrn-export; --overwrite only replaces "
                                 "earlier exports, choose another --output")


def _publish(stage: Path, output: Path, overwrite: bool) -> None:
    """Check every target again, then move every staged file into the output folder (each rename atomic)."""
    files = sorted(stage.iterdir())
    check_targets(output, [f.name for f in files], overwrite)
    for f in files:
        if f.is_dir() and (output / f.name).is_dir():  # an earlier repository (check_targets allowed it): set aside
            old = Path(tempfile.mkdtemp(prefix=f".{f.name}.replaced-", dir=output))
            os.replace(output / f.name, old / f.name)
            os.replace(f, output / f.name)
            shutil.rmtree(old, ignore_errors=True)
            continue
        os.replace(f, output / f.name)


def export(source: str | Path, output_dir: str | Path, cfg: ExportConfig = ExportConfig(),
           progress: Callable[[str], None] | None = None) -> list[Artifact]:
    """Export ``source`` (checkpoint, shipped name or mdrn-edge FP32 ONNX) into ``output_dir``: every format of
    ``cfg`` in table order, each gated on real MRI (``cfg.check_data``, default the bundled sample). Returns the
    artifacts with their final paths; an engine that cannot be built here is a skipped artifact with the reason."""
    require("onnx", "export")
    from mdrn_edge.export.checks import check_pairs
    from mdrn_edge.samples import check_samples

    cfg.check()
    path, info, net = load_source(source)
    output = Path(output_dir)
    check_targets(output, [f"{info.name}.onnx", *([f"{info.name}.fp16.onnx"] if cfg.fp16 else []),
                           *([f"{info.name}.int8.onnx"] if cfg.int8 else []), *([REPOSITORY] if cfg.triton else [])],
                  cfg.overwrite)
    stage, made = _stage_dir(output)
    job, published = None, False
    try:
        job = ExportJob(path, info, net, stage, cfg, check_pairs([cfg.check_data] if cfg.check_data else check_samples(), info))
        for fmt in cfg.formats():
            if progress:
                progress(f"{fmt}: {FORMATS[fmt][0]}")
            job.artifacts[fmt] = FORMATS[fmt][1](job)
        _publish(stage, output, cfg.overwrite)
        published = True
    except MdrnError as exc:  # a failed check names the file by its final name: the stage is gone once we return
        raise type(exc)(f"{str(exc).replace(str(stage), str(output))} (nothing was written)") from None
    finally:
        if job:
            job.close()
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made if not published else []:  # folders made for this export, left empty by its failure
            with contextlib.suppress(OSError):
                folder.rmdir()
    artifacts = list(job.artifacts.values())
    for art in artifacts:
        if art.path:
            art.path = output / art.path.name
    return artifacts


def summarize(source: str | Path, artifacts: list[Artifact]) -> dict[str, Any]:
    """The flat JSON the CLI prints: the files, the headline checks, and every artifact in full."""
    by = {a.format: a for a in artifacts}
    onnx, fp16, int8, engine = by.get("onnx"), by.get("onnx_fp16"), by.get("onnx_int8"), by.get("engine")
    openvino = by.get("openvino")
    return {
        "model": str(source),
        "onnx": str(onnx.path) if onnx else None,
        "onnx_fp16": str(fp16.path) if fp16 else None,
        "max_abs_err": onnx.checks.get("max_abs_err") if onnx else None,
        "fp16_psnr_drop_db": fp16.checks.get("psnr_drop_db") if fp16 else None,
        "fp16_provider": fp16.checks.get("provider") if fp16 else None,
        "onnx_int8": str(int8.path) if int8 else None,
        "int8_psnr_drop_db": int8.checks.get("psnr_drop_db") if int8 else None,
        "openvino_gates": (openvino.skipped or openvino.checks) if openvino else None,
        "engine": str(engine.path) if engine and engine.path else None,
        "engine_skipped_reason": engine.skipped if engine else "--no-engine",
        "triton": str(by["triton"].path) if "triton" in by else None,
        "artifacts": [a.to_dict() for a in artifacts],
    }
