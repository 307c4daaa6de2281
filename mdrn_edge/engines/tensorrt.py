"""TensorRT 10 engine builder: ONNX -> serialized plan + JSON sidecar (TensorRT 10.3 on JetPack 6.1 and newer).

TensorRT is imported lazily: this module loads anywhere, and the error that says what to install appears on
first use. CCA's statistics are pinned to FP32 (hand-written mean/variance/sqrt chains overflow in FP16).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdrn_edge.errors import EngineBuildError, InputError, MissingDependencyError
from mdrn_edge.fileio import atomic_path, file_sha256, write_json
from mdrn_edge.modelinfo import INPUT_NAME, METADATA_KEY, ModelInfo
from mdrn_edge.runtime.base import DEFAULT_PROFILE
from mdrn_edge.runtime.cuda import device_properties
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

    @property
    def is_static(self) -> bool:
        """One shape only (min = opt = max): what a DLA engine needs."""
        return self.min == self.opt == self.max

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


def _weights_carriers(trt, producers: dict[str, Any], tensor) -> list:
    """The layers that bring weights to a layer input: the ONNX parser's constant layer and any shuffle between
    (its ``ONNXTRT_Broadcast`` of a scalar); none for an activation."""
    chain, layer = [], producers.get(tensor.name)
    while layer is not None and layer.type == trt.LayerType.SHUFFLE and layer.num_inputs == 1:
        chain.append(layer)
        layer = producers.get(layer.get_input(0).name)
    return [*chain, layer] if layer is not None and layer.type == trt.LayerType.CONSTANT else []


def pin_fp32_layers(trt, network, pattern: str | None) -> list[str]:
    """Run the architecture's FP16-unsafe layers (MDRN: CCA's statistics) in FP32 inside an FP16 engine (needs
    OBEY_PRECISION_CONSTRAINTS); ``pattern`` is the model info's ``fp32_layers``, matched against the names the ONNX
    parser gives (a node's name, ``_N`` added where taken; Constant nodes make no layer). The constants those layers
    read are pinned with them: the parser makes a constant layer (and a broadcast) of each, which would otherwise
    run in FP16 and turn CCA's epsilon of 1e-8 into 0."""
    if not pattern:
        return []
    regex = re.compile(pattern)
    floats = (trt.float32, trt.float16)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producers = {layer.get_output(k).name: layer for layer in layers for k in range(layer.num_outputs)}
    # only floating-point layers: the parser may add integer shape layers under the same name scope
    computes_float = lambda layer: all(layer.get_output(k).dtype in floats for k in range(layer.num_outputs))  # noqa: E731
    matched = [layer for layer in layers if regex.search(layer.name) and computes_float(layer)]
    carriers = [c for layer in matched for k in range(layer.num_inputs)
                for c in _weights_carriers(trt, producers, layer.get_input(k)) if computes_float(c)]
    chosen = {layer.name for layer in [*carriers, *matched]}
    pinned = [layer for layer in layers if layer.name in chosen]  # in network order, as the sidecar lists them
    for layer in pinned:
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
    return [layer.name for layer in pinned]


@dataclass(frozen=True)
class EngineOptions:
    """How to build one engine; ``mdrn-export``'s engine options map one to one onto these fields."""

    precision: str = "fp32"  # fp32 | fp16 | int8 (from an explicitly quantised Q/DQ ONNX, FP16 elsewhere)
    profile: Profile = field(default_factory=lambda: Profile(*DEFAULT_PROFILE))
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False  # smaller plan; a later TensorRT then needs this version's lean runtime
    opt_level: int | None = None
    dla_core: int | None = None  # Jetson DLA core, GPU fallback for layers the DLA cannot run
    timing_cache_ignore_mismatch: bool = False  # use a cache made on a GPU with other device properties

    def check(self) -> None:
        """What can be refused before any work is done, in one line."""
        if self.timing_cache_ignore_mismatch and not self.timing_cache:
            raise InputError("--timing-cache-ignore-mismatch applies to a --timing-cache; add one or leave it out")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InputError("--exclude-lean-runtime applies to version-compatible engines: add --version-compatible")
        if self.dla_core is not None and self.precision == "fp32":
            raise InputError("--dla-core: the DLA runs FP16 or INT8 only; add --fp16")
        if self.dla_core is not None and self.precision == "int8":
            raise InputError("--dla-core with --int8: the DLA of TensorRT 10.3 (JetPack 6.1) takes INT8 only from implicit "
                             "calibration, not an explicitly quantised (Q/DQ) network, which is what mdrn-export writes "
                             "(Q/DQ for DLA came with TensorRT 10.11); use --fp16 for the DLA")
        if self.dla_core is not None and not self.profile.is_static:
            raise InputError("--dla-core: the DLA runs one static shape (TensorRT's DLA restrictions: a dynamic profile "
                             "puts no layer on it): give equal --min-shape, --opt-shape and --max-shape, a tile such as "
                             "1x1x128x128; mdrn-infer tiles and pads slices to it")


def trtexec_command(onnx: Path, engine: Path, opts: EngineOptions, strongly_typed: bool, pinned: list[str]) -> str:
    """The equivalent trtexec line, for Jetson users who build on the device."""
    parts = [f"trtexec --onnx={onnx.name} --saveEngine={engine.name}", opts.profile.trtexec(),
             f"--memPoolSize=workspace:{opts.workspace_mb}M"]
    if strongly_typed:
        parts.append("--stronglyTyped")
    elif opts.precision != "fp32":
        parts.append("--fp16" + (" --int8" if opts.precision == "int8" else ""))
        if pinned:
            layers = ",".join(f"{n}:fp32" for n in pinned)
            parts.append(f"--precisionConstraints=obey --layerPrecisions={layers} --layerOutputTypes={layers}")
    else:
        parts.append("--noTF32")
    if opts.timing_cache:
        parts.append(f"--timingCacheFile={opts.timing_cache}")
        if opts.timing_cache_ignore_mismatch:  # trtexec cannot: it refuses a cache of other device properties
            parts.append("# (built with --timing-cache-ignore-mismatch, which trtexec has no option for)")
    if opts.version_compatible:
        parts.append("--versionCompatible" + (" --excludeLeanRuntime" if opts.exclude_lean_runtime else ""))
    if opts.dla_core is not None:
        parts.append(f"--useDLACore={opts.dla_core} --allowGPUFallback")
    if opts.opt_level is not None:
        parts.append(f"--builderOptimizationLevel={opts.opt_level}")
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


def dla_layers(config, network, core: int) -> dict[str, int]:
    """How many of the network's layers TensorRT can place on the DLA with this configuration (the rest run on the
    GPU); an engine with none on it is refused: it would run on the GPU under a DLA label."""
    on_dla = sum(bool(config.can_run_on_DLA(network.get_layer(i))) for i in range(network.num_layers))
    if on_dla == 0:
        raise EngineBuildError(f"--dla-core {core}: no layer of this network can run on the DLA with this profile and "
                               "precision; build for the GPU (leave out --dla-core)")
    return {"dla_layers": on_dla, "gpu_layers": network.num_layers - on_dla}


def _use_dla(trt, builder, config, core: int) -> list[str]:
    cores = builder.num_DLA_cores
    if cores == 0:
        raise InputError(f"--dla-core {core}: this device has no DLA (Jetson AGX Orin, Orin NX and Xavier have them); "
                         "leave out --dla-core")
    if not 0 <= core < cores:
        raise InputError(f"--dla-core {core}: this device has DLA cores 0..{cores - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # depth-to-space and CCA's reductions run on the GPU
    return ["GPU_FALLBACK"]


def timing_cache_record(path: Path) -> Path:
    """The small JSON beside a timing cache saying which TensorRT wrote it (TensorRT cannot tell us: it logs and
    ignores a cache of another version, NVIDIA/TensorRT#3566)."""
    return path.with_name(path.name + ".json")


def _load_timing_cache(config, path: Path | None, ignore_mismatch: bool = False, built_by: str = ""):
    """This build's timing cache, seeded from ``path``. A cache another TensorRT version wrote cannot be used (its
    record says so: one warning, the build starts a new cache that replaces the file); one made on a GPU whose device
    properties differ (TensorRT compares more than the compute capability: two boards of one model can differ) is
    one line, unless ``ignore_mismatch`` uses its timings anyway."""
    data = path.read_bytes() if path and path.exists() else b""
    record = timing_cache_record(path) if path else None
    written_by = json.loads(record.read_text()).get("tensorrt_version") if record and record.exists() else None
    if data and written_by and written_by != built_by:
        log.warning("%s: written by TensorRT %s, which TensorRT %s cannot read; this build starts a new cache and "
                    "replaces the file", path, written_by, built_by)
        data = b""
    cache = config.create_timing_cache(data)
    if cache is None:
        raise EngineBuildError(f"{path}: not a TensorRT timing cache; delete it or give another --timing-cache")
    if not config.set_timing_cache(cache, ignore_mismatch):
        raise EngineBuildError(f"{path}: made on a GPU whose device properties differ from this one's (TensorRT "
                               "compares more than the compute capability); delete it, give another --timing-cache, "
                               "or --timing-cache-ignore-mismatch to use its timings anyway")


def save_timing_cache(config, path: Path, ignore_mismatch: bool = False, built_by: str = "") -> None:
    """Merge this build's timing cache into ``path`` under an exclusive lock, so that builds sharing one cache file
    add to it rather than overwrite each other (as Polygraphy does), then replace the file atomically and record
    which TensorRT wrote it."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = config.get_timing_cache()
        record = timing_cache_record(path)
        same = record.exists() and json.loads(record.read_text()).get("tensorrt_version") == built_by
        if path.exists() and same:
            on_disk = config.create_timing_cache(path.read_bytes())
            if on_disk is None or not cache.combine(on_disk, ignore_mismatch):
                log.warning("%s: made on a GPU with other device properties, replaced by this build's cache", path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
        write_json(record, {"tensorrt_version": built_by})


def build_engine(source: Path, engine_path: Path, opts: EngineOptions, fp16_onnx_path: Path | None = None,
                 ) -> tuple[Path, dict[str, Any]]:
    """Build a plan from the FP32 ONNX (``BuilderFlag.FP16`` for FP16, CCA pinned to FP32), or from the Q/DQ ONNX
    for INT8, and write it with its sidecar.

    From TensorRT 11 ``BuilderFlag.FP16``, ``INT8`` and the precision-constraint flags are gone: there the FP16
    ONNX, or the Q/DQ ONNX for INT8, is built as a strongly typed network (its types say each layer's precision;
    the INT8 file's float layers then run in FP32).
    """
    import onnx

    opts.check()
    trt = import_builder()
    device = device_properties()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = opts.precision in ("fp16", "int8") and not hasattr(trt.BuilderFlag, "FP16")
    if strongly_typed and opts.precision == "fp16" and not fp16_onnx_path:
        raise EngineBuildError("this TensorRT has no BuilderFlag.FP16: export the FP16 ONNX too (--fp16)")
    source = fp16_onnx_path if strongly_typed and opts.precision == "fp16" else source
    config = builder.create_builder_config()
    flags: list[str] = ["STRONGLY_TYPED"] if strongly_typed else []
    if opts.dla_core is not None:
        flags += _use_dla(trt, builder, config, opts.dla_core)
    network, _parser = _parse_onnx(trt, builder, logger, source, strongly_typed)
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    info = ModelInfo.from_json(meta.get(METADATA_KEY, "null"), str(source))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    pinned: list[str] = []
    if opts.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # an FP32 engine computes in FP32, not TF32's 10-bit mantissa
    elif not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
        if opts.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # the Q/DQ layers say where; FP16 elsewhere
            flags.append("INT8")
        pinned = pin_fp32_layers(trt, network, info.fp32_layers)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        flags.append("VERSION_COMPATIBLE")
        if opts.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
            flags.append("EXCLUDE_LEAN_RUNTIME")
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    profile = opts.profile
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(network.get_input(0).name, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(trt_profile) < 0:
        raise EngineBuildError(f"TensorRT rejected the profile {profile.to_dict()}")
    placement = dla_layers(config, network, opts.dla_core) if opts.dla_core is not None else {}
    _load_timing_cache(config, opts.timing_cache, opts.timing_cache_ignore_mismatch, trt.__version__)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{source}: TensorRT could not build an engine (see its log above); try a larger "
                               "--workspace or a smaller --max-shape")
    plan = bytes(plan)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(plan)
    if opts.timing_cache:
        save_timing_cache(config, opts.timing_cache, opts.timing_cache_ignore_mismatch, trt.__version__)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": trt.__version__,
        "gpu": device,
        "precision": opts.precision,
        "profiles": [profile.to_dict()],
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "onnx": source.name,
        "onnx_sha256": file_sha256(source),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "flags": flags,
        "workspace_mb": opts.workspace_mb,
        "fp32_layers": pinned,
        "version_compatible": opts.version_compatible,
        "lean_runtime": ("excluded" if opts.exclude_lean_runtime else "embedded") if opts.version_compatible else None,
        "dla_core": opts.dla_core,
        **placement,
        "hardware_compatibility_level": None,
        "strongly_typed": strongly_typed,
        "trtexec": trtexec_command(source, engine_path, opts, strongly_typed, pinned),
        "model": info.with_precision(opts.precision).to_dict(),
    }
    write_json(sidecar_path(engine_path), sidecar)
    log.info("built %s in %.1f s with TensorRT %s on %s", engine_path, sidecar["build_seconds"], trt.__version__, device)
    return engine_path, sidecar
