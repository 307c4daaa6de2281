"""TensorRT 10 engine builder: ONNX -> serialized plan + JSON sidecar (TensorRT 10.3 on JetPack 6.1 and newer).

TensorRT is imported lazily: this module loads anywhere, and the error that says what to install appears on
first use. CCA's statistics are pinned to FP32 (hand-written mean/variance/sqrt chains overflow in FP16).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdrn_edge.errors import EngineBuildError, InputError, MissingDependencyError
from mdrn_edge.fileio import atomic_path, file_sha256, write_json
from mdrn_edge.modelinfo import INPUT_NAME, METADATA_KEY, ModelInfo
from mdrn_edge.runtime.cuda import cuda_adapter
from mdrn_edge.runtime.sidecar import SIDECAR_FORMAT, sidecar_path

log = logging.getLogger(__name__)

BUILDER_HINT = ("TensorRT's builder (libnvinfer + ONNX parser) is not installed; on a Jetson use JetPack's TensorRT, "
                "elsewhere pip install tensorrt (the lean runtime cannot build)")



@dataclass(frozen=True)
class Profile:
    """One optimisation profile of the ``lr`` input: min/opt/max N x 1 x H x W."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    @classmethod
    def parse(cls, min_shape: str, opt_shape: str, max_shape: str) -> "Profile":
        shapes = [parse_shape(s, f"--{k}-shape") for s, k in ((min_shape, "min"), (opt_shape, "opt"), (max_shape, "max"))]
        lo, opt, hi = shapes
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"profile shapes must satisfy min <= opt <= max in every dimension, got "
                             f"{min_shape} / {opt_shape} / {max_shape}")
        return cls(lo, opt, hi)

    def to_dict(self) -> dict[str, Any]:
        return {"input": INPUT_NAME, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def trtexec(self) -> str:
        f = lambda s: "x".join(map(str, s))  # noqa: E731
        return f"--minShapes={INPUT_NAME}:{f(self.min)} --optShapes={INPUT_NAME}:{f(self.opt)} --maxShapes={INPUT_NAME}:{f(self.max)}"


def parse_shape(text: str, option: str = "shape") -> tuple[int, int, int, int]:
    """``NxCxHxW`` or ``HxW`` (batch 1) -> (N, 1, H, W); MDRN takes one channel and any H, W >= 1."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"{option} {text!r}: write it as NxCxHxW or HxW, e.g. 1x1x256x256") from None
    if len(dims) == 2:
        dims = (1, 1, *dims)
    if len(dims) != 4 or dims[1] != 1 or min(dims) < 1:
        raise InputError(f"{option} {text!r}: need N x 1 x H x W with every dimension >= 1 (MDRN takes one channel)")
    return dims  # type: ignore[return-value]


def import_builder():
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(BUILDER_HINT) from None
    if not hasattr(trt, "Builder"):
        raise MissingDependencyError(BUILDER_HINT)
    return trt


def pin_fp32_layers(trt, network, pattern: str | None) -> list[str]:
    """Run the architecture's FP16-unsafe layers (MDRN: CCA's statistics) in FP32 inside an FP16 engine (needs
    OBEY_PRECISION_CONSTRAINTS); ``pattern`` is the model info's ``fp32_layers``."""
    pinned: list[str] = []
    if not pattern:
        return pinned
    regex = re.compile(pattern)
    floats = (trt.float32, trt.float16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        # only floating-point layers: the parser may add integer shape layers under the same name scope
        if regex.search(layer.name) and all(t.dtype in floats for t in outputs):
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            pinned.append(layer.name)
    return pinned


def trtexec_command(onnx: Path, engine: Path, fp16: bool, profile: Profile, workspace_mb: int,
                    timing_cache: Path | None, version_compatible: bool, opt_level: int | None, pinned: list[str]) -> str:
    """The equivalent trtexec line, for Jetson users who build on the device."""
    parts = [f"trtexec --onnx={onnx.name} --saveEngine={engine.name}", profile.trtexec(),
             f"--memPoolSize=workspace:{workspace_mb}M"]
    if fp16:
        parts.append("--fp16")
        if pinned:
            parts.append("--precisionConstraints=obey --layerPrecisions=" + ",".join(f"{n}:fp32" for n in pinned))
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    if version_compatible:
        parts.append("--versionCompatible --excludeLeanRuntime")
    if opt_level is not None:
        parts.append(f"--builderOptimizationLevel={opt_level}")
    return " ".join(parts)


def _parse_onnx(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        detail = "; ".join(f"node {e.node()} ({e.node_name()}): {e.desc()}" for e in errors) or "no detail"
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {detail}")
    return network, parser


def build_engine(onnx_path: Path, fp16_onnx_path: Path | None, engine_path: Path, fp16: bool, profile: Profile,
                 workspace_mb: int = 1024, timing_cache: Path | None = None, version_compatible: bool = False,
                 opt_level: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Build a plan from the FP32 ONNX (with ``BuilderFlag.FP16`` for FP16) and write it with its sidecar.

    From TensorRT 11 ``BuilderFlag.FP16`` is gone: there the FP16 ONNX is built as a strongly typed network.
    """
    import onnx

    trt = import_builder()
    device = cuda_adapter().device()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = fp16 and not hasattr(trt.BuilderFlag, "FP16")
    source = fp16_onnx_path if strongly_typed else onnx_path
    if strongly_typed and not source:
        raise EngineBuildError("this TensorRT has no BuilderFlag.FP16: export the FP16 ONNX too (--fp16)")
    network, _parser = _parse_onnx(trt, builder, logger, source, strongly_typed)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    info = ModelInfo.from_json(meta.get(METADATA_KEY, "null"), str(onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    flags, pinned = [], []
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_fp32_layers(trt, network, info.fp32_layers)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
        flags += ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    if opt_level is not None:
        config.builder_optimization_level = opt_level
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(network.get_input(0).name, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(trt_profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the profile {profile.to_dict()}")
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see its log above); try a larger "
                               "--workspace or a smaller --max-shape")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if timing_cache:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": device,
        "precision": "fp16" if fp16 else "fp32",
        "profiles": [profile.to_dict()],
        "engine_sha256": file_sha256(engine_path),
        "onnx": source.name,
        "onnx_sha256": file_sha256(source),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "flags": flags,
        "workspace_mb": workspace_mb,
        "fp32_layers": pinned,
        "version_compatible": version_compatible,
        "hardware_compatibility_level": None,
        "strongly_typed": strongly_typed,
        "trtexec": trtexec_command(source, engine_path, fp16 and not strongly_typed, profile, workspace_mb,
                                   timing_cache, version_compatible, opt_level, pinned),
        "model": info.with_precision("fp16" if fp16 else "fp32").to_dict(),
    }
    write_json(sidecar_path(engine_path), sidecar)
    log.info("built %s in %.1f s with TensorRT %s on %s", engine_path, sidecar["build_seconds"], trt.__version__, device)
    return engine_path, sidecar
