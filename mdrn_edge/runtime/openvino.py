"""OpenVINO backend: the runtime made for Intel CPUs (and iGPUs, NPUs), reading the same ONNX file.

Measured on an Intel Xeon with AMX (2 cores, mdrn-x4, 256 x 256 LR; ``benchmarks/results/``): FP32 1.2x ONNX
Runtime, BF16 on AMX and OpenVINO's INT8 kernels for the Q/DQ model about 2.2x, and under 2x lost when other work
shares the cores (ONNX Runtime lost 3x). Three things make that so, and each is a rule here:

- **Static shapes.** A model reshaped to the call's exact ``N x 1 x H x W`` and compiled once per shape ran 1.2x
  faster than the dynamic model as is. Tiles and batched slices have few shapes, so each is compiled once and
  kept (at most :data:`MAX_SHAPES`); a compiled model is cached on disk, keyed by the file's SHA-256, the
  OpenVINO version and the CPU, and verified against its recorded digest before it is imported.
- **Explicit precision.** OpenVINO's CPU plugin runs FP32 models in BF16 by default on CPUs with native BF16:
  FP32 here always sets ``INFERENCE_PRECISION_HINT=f32``, and BF16 runs only where the CPU reports it and the
  file records a passed gate (:mod:`mdrn_edge.runtime.config`).
- **INT8 where it is fast.** The Q/DQ model ``mdrn-export --int8`` writes is 0.5x ONNX Runtime FP32 on ONNX
  Runtime (its INT8 convolutions sit between float layers: quantise, dequantise and NCHW/NHWC transposes took
  47% of the time, the INT8 convolutions 10%); OpenVINO fuses the same pairs into its INT8 kernels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.errors import InputError, MissingDependencyError, ModelFileError, PathRefused, first_line, require
from mdrn_edge.fileio import atomic_path
from mdrn_edge.modelinfo import METADATA_KEY, ModelInfo
from mdrn_edge.runtime.base import Runner, check_graph
from mdrn_edge.runtime.config import RuntimeConfig, gate_name

log = logging.getLogger(__name__)

MIN_OPENVINO = (2024, 0)  # the openvino namespace, export_model/import_model and the property names used here
MAX_SHAPES = 4  # compiled shapes kept in memory: a tile, its edge tiles, a last short batch
DEVICES = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
HINTS = {"fp32": "f32", "bf16": "bf16"}


def import_openvino():
    """The ``openvino`` module, or one line: not installed, or older than :data:`MIN_OPENVINO`."""
    ov = require("openvino", "runtime")
    version = getattr(ov, "__version__", "0")
    found = tuple(int(v) for v in re.findall(r"\d+", version)[:2])
    if found < MIN_OPENVINO:
        raise MissingDependencyError(
            f"openvino {version.split('-')[0]} is older than {'.'.join(map(str, MIN_OPENVINO))}, which mdrn-edge needs; "
            "upgrade it with: pip install -U openvino")
    return ov


def openvino_version() -> str:
    """OpenVINO's release (``2026.4.1``), without its build suffix."""
    return import_openvino().__version__.split("-")[0]


def openvino_unavailable_reason() -> str | None:
    """None where OpenVINO can run here; otherwise why not, in one line."""
    try:
        import_openvino()
    except MissingDependencyError as exc:
        return str(exc)
    return None


def device_precisions(core, device: str = "CPU") -> set[str]:
    """What the device computes natively, as OpenVINO reports it (``BF16`` on CPUs with AVX-512 BF16 or AMX)."""
    return {str(p) for p in core.get_property(device, "OPTIMIZATION_CAPABILITIES")}


def cache_root(cache_dir: str | Path | None) -> Path | None:
    """The folder compiled models are cached in: ``cache_dir``, the user's cache (None), or none (``"off"``)."""
    if str(cache_dir) == "off":
        return None
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdrn-edge" / "openvino"


def read_onnx(path: Path):
    """The ONNX file as an OpenVINO model, through the ONNX frontend only: ``Core.read_model`` tries every
    frontend on a file that is not ONNX, and TensorFlow's prints its parse errors on stderr, lines that are not
    ours."""
    ov = import_openvino()
    try:
        frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
        return frontend.convert(frontend.load(str(path)))
    except Exception as exc:
        text = " ".join(str(exc).split())
        why = "it cannot be parsed as ONNX" if "parsed" in text else first_line(exc)
        raise ModelFileError(f"{path}: OpenVINO cannot read it ({why}); is it an ONNX model?") from None


def file_precision(path: Path) -> str | None:
    """The precision an mdrn-edge ONNX file declares (None where it cannot say: the runner that opens the file
    then says why in one line)."""
    try:
        return ModelInfo.from_json(read_onnx(path).get_rt_info(["framework", METADATA_KEY]).astype(str)).precision
    except Exception:
        return None


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, path: str | Path, config: RuntimeConfig = RuntimeConfig()) -> None:
        super().__init__(path)
        self.config = config
        self.device = DEVICES.get(config.device, "")
        if not self.device:
            raise InputError(f"--device {config.device}: OpenVINO runs on Intel CPUs, GPUs and NPUs (--device cpu, gpu "
                             "or npu); for CUDA use --backend onnxruntime or tensorrt")
        self.precision = "fp32"
        self.float_precision = "fp32"  # of the layers an INT8 file keeps in float
        self.reason = ""
        self.cache: Path | None = None
        self._core = self._model = None
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    # --- activation -------------------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        ov = import_openvino()
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX file; export one with mdrn-export or use a shipped model")
        self._core = ov.Core()
        if self.device not in self._core.available_devices:
            raise InputError(f"--device {self.config.device}: OpenVINO {openvino_version()} sees no {self.device} here "
                             f"(it has {', '.join(self._core.available_devices) or 'none'})")
        self._model = read_onnx(self.path)
        self.info = self._read_info()
        native = device_precisions(self._core, self.device)
        self._choose_precision(native)
        self.cache = self._cache_folder(native)
        log.info("openvino %s on %s: %s (%s)", openvino_version(), self.device, self.precision, self.reason)

    def _read_info(self) -> ModelInfo:
        """The model contract from the ONNX metadata (OpenVINO keeps it as framework rt_info), and a graph whose
        one input and output carry the names it declares."""
        key = ["framework", METADATA_KEY]
        if not self._model.has_rt_info(key):
            raise ModelFileError(f"{self.path}: not an mdrn-edge model (no '{METADATA_KEY}' metadata); export it with "
                                 "mdrn-export")
        info = ModelInfo.from_json(self._model.get_rt_info(key).astype(str), str(self.path))
        inputs = [(p.get_any_name(), [d.get_length() if d.is_static else None for d in p.get_partial_shape()])
                  for p in self._model.inputs]
        check_graph(self.path, info, inputs, [p.get_any_name() for p in self._model.outputs])
        return info

    def _choose_precision(self, native: set[str]) -> None:
        """The precision to run, from the request, the file's own precision, the device and the file's gates."""
        wanted, own, cfg = self.config.precision, self.info.precision, self.config
        if own == "fp16":
            raise InputError(f"{self.path}: an FP16 ONNX is for GPUs (--backend onnxruntime --device cuda, or "
                             "TensorRT); OpenVINO runs the FP32 ONNX, in FP32 or BF16, and the INT8 one")
        if wanted == "fp16":
            raise InputError("--precision fp16 is not an OpenVINO CPU precision here; use bf16 (gated), int8 or fp32")
        if own == "int8" and wanted not in ("auto", "int8"):
            raise InputError(f"{self.path}: an INT8 (Q/DQ) model runs in INT8; for --precision {wanted} give its FP32 ONNX")
        if own == "fp32" and wanted == "int8":
            raise InputError(f"{self.path}: an FP32 model; --precision int8 needs the INT8 Q/DQ model that mdrn-export "
                             "--int8 --calibration SERIES writes")
        bf16_native = "BF16" in native
        reduced = "bf16" if own == "fp32" else "int8"
        gate = self.info.gates.get(gate_name(self.backend, reduced))
        if wanted == "bf16" and not bf16_native:
            raise InputError(f"--precision bf16: this {self.device} has no native BF16 (OpenVINO reports "
                             f"{', '.join(sorted(native))}); use --precision fp32")
        if own == "int8":  # INT8 convolutions as the file says; its float layers in BF16 only where gated
            self.precision = "int8"
            use_bf16 = bf16_native and (gate is not None or (cfg.allow_ungated and wanted == "int8"))
            self.float_precision = "bf16" if use_bf16 else "fp32"
            if use_bf16:
                why = "gated" if gate else "ungated, as asked"
            else:
                why = "no BF16 on this CPU" if not bf16_native else "no openvino-int8 gate recorded"
            self.reason = f"float layers in {self.float_precision}: {why}"
            return
        if wanted == "bf16" and gate is None and not cfg.allow_ungated:
            raise InputError(f"{self.path}: no OpenVINO BF16 gate is recorded in it (its loss against FP32 on real MRI "
                             f"was never measured); run mdrn-export {self.path.name} --openvino to measure and record it, "
                             "or add --allow-ungated to run it unmeasured")
        if wanted == "bf16":
            self.precision, self.reason = "bf16", "gated" if gate else "ungated, as asked"
        elif wanted == "auto" and bf16_native and gate is not None:
            self.precision, self.reason = "bf16", f"gated, {gate.get('psnr_drop_db', 0):.3f} dB against FP32"
        else:
            self.precision = "fp32"
            self.reason = ("as asked" if wanted == "fp32" else "no BF16 on this CPU" if not bf16_native
                           else "no openvino-bf16 gate recorded in the file")

    def properties(self) -> dict[str, Any]:
        """The compile properties: latency first, the chosen precision stated (never OpenVINO's default)."""
        props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                 "INFERENCE_PRECISION_HINT": HINTS[self.float_precision if self.precision == "int8"
                                                                   else self.precision]}
        if self.config.threads:
            props["INFERENCE_NUM_THREADS"] = self.config.threads
        return props

    # --- the compiled-model cache -------------------------------------------------------------------------------
    def _cache_folder(self, native: set[str]) -> Path | None:
        """This file's folder in the cache, created and known to be writable, or None (``--cache-dir off``)."""
        root = cache_root(self.config.cache_dir)
        if root is None:
            return None
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        device = self._core.get_property(self.device, "FULL_DEVICE_NAME")
        machine = hashlib.sha256(f"{device}|{sorted(native)}".encode()).hexdigest()
        folder = root / f"{self.path.stem}-{digest[:16]}-ov{openvino_version()}-{machine[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise PathRefused(f"{root}: cannot write the OpenVINO cache there ({exc.strerror or first_line(exc)}); "
                              "give --cache-dir a writable folder, or --cache-dir off") from None
        return folder

    def _blob_name(self, shape: tuple[int, ...]) -> str:
        precision = f"int8-{self.float_precision}" if self.precision == "int8" else self.precision
        return f"{precision}-t{self.config.threads or 0}-{'x'.join(map(str, shape))}"

    def _load_cached(self, shape: tuple[int, ...]):
        """A compiled model from the cache, verified against the digest recorded when it was written; a blob
        without a matching record is refused (a changed blob could silently change every output)."""
        if self.cache is None:
            return None
        blob, record = self.cache / f"{self._blob_name(shape)}.blob", self.cache / f"{self._blob_name(shape)}.json"
        if not blob.exists():
            return None
        data = blob.read_bytes()
        try:
            expected = json.loads(record.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            expected = None
        if expected != hashlib.sha256(data).hexdigest():
            raise ModelFileError(f"{blob}: a compiled-model blob mdrn-edge did not write (no matching record); delete "
                                 f"the folder {self.cache} or use --cache-dir off")
        try:
            return self._core.import_model(io.BytesIO(data), self.device, self.properties())
        except Exception as exc:
            raise ModelFileError(f"{blob}: OpenVINO cannot import it ({first_line(exc)}); delete the folder "
                                 f"{self.cache}") from None

    def _store(self, shape: tuple[int, ...], compiled) -> None:
        """Record first, then the blob, each replaced atomically: a crash leaves no blob without its record."""
        if self.cache is None:
            return
        stream = io.BytesIO()
        compiled.export_model(stream)
        data = stream.getvalue()
        name = self._blob_name(shape)
        try:
            with atomic_path(self.cache / f"{name}.json") as tmp:
                tmp.write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "model": self.path.name,
                                           "openvino": openvino_version(), "shape": list(shape)}))
            with atomic_path(self.cache / f"{name}.blob") as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            log.warning("%s: compiled model not cached (%s)", self.cache, exc.strerror or first_line(exc))

    def _request(self, shape: tuple[int, ...]):
        """The infer request for one input shape: kept, imported from the cache, or compiled (and cached)."""
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return self._compiled[shape]
        compiled = self._load_cached(shape)
        if compiled is None:
            model = self._model.clone()
            try:
                model.reshape({self.info.input_name: list(shape)})
                compiled = self._core.compile_model(model, self.device, self.properties())
            except Exception as exc:
                raise ModelFileError(f"{self.path}: OpenVINO cannot compile it for a {'x'.join(map(str, shape))} input "
                                     f"({first_line(exc)}); is its input fixed-size? re-export it with mdrn-export") from None
            self._store(shape, compiled)
        self._compiled[shape] = compiled.create_infer_request()
        while len(self._compiled) > MAX_SHAPES:
            self._compiled.popitem(last=False)
        return self._compiled[shape]

    # --- inference ----------------------------------------------------------------------------------------------
    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        request = self._request(tuple(batch.shape))
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)  # the request reuses it

    def deactivate_impl(self) -> None:
        self._compiled.clear()
        self._model = self._core = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, "provider": f"OpenVINO {self.device}",
                "precision_reason": self.reason, "openvino": openvino_version(),
                "cache": str(self.cache) if self.cache else None,
                **({"float_precision": self.float_precision} if self.precision == "int8" else {})}
