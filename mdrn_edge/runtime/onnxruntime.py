"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, with a printed fallback order."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.errors import InputError, MissingDependencyError, ModelFileError, first_line, require
from mdrn_edge.modelinfo import METADATA_KEY, ModelInfo
from mdrn_edge.runtime.base import DEFAULT_PROFILE, Runner, check_graph

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def provider_order(device: str = "auto", tensorrt_ep: bool = False) -> list[str]:
    """Providers to try, best first, among those this onnxruntime build has (CPU always last). ``cuda`` asks for
    the GPU: a build without the CUDA provider is one line, never a silent run on the CPU."""
    ort = require("onnxruntime", "runtime")
    available = set(ort.get_available_providers())
    if device == "cuda" and PROVIDERS["cuda"] not in available:
        raise MissingDependencyError(
            f"--device cuda: this onnxruntime {ort.__version__} has no CUDA provider (it has "
            f"{', '.join(sorted(available))}); install onnxruntime-gpu (pip install onnxruntime-gpu, or '.[gpu]' in the mdrn-edge clone), or use --device "
            "auto or cpu")
    wanted = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "auto": ["cuda", "cpu"]}[device]
    if tensorrt_ep and device == "cpu":
        raise InputError("--trt-ep runs the model on the GPU with TensorRT; leave out --device cpu or --trt-ep")
    if tensorrt_ep and PROVIDERS["tensorrt"] not in available:
        raise MissingDependencyError(
            f"--trt-ep: this onnxruntime {ort.__version__} has no TensorrtExecutionProvider (it has "
            f"{', '.join(sorted(available))}); install onnxruntime-gpu with TensorRT, or leave out --trt-ep")
    if tensorrt_ep:
        wanted = ["tensorrt", *wanted]
    return [PROVIDERS[k] for k in wanted if PROVIDERS[k] in available]



def ep_cache_dir(model: Path) -> Path:
    """Where the TensorRT EP keeps its engines and timing cache for one model file: keyed by the file's SHA-256
    and the onnxruntime version, so that a changed model or an upgraded runtime never loads a stale engine."""
    import onnxruntime as ort

    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdrn-edge" / "trt-ep"
    return root / f"{model.stem}-{digest}-ort{ort.__version__}"


# ONNX Runtime's own default for trt_op_types_to_exclude (data-dependent-shape ops), kept when we add to it
ORT_TRT_EXCLUDED = ("NonMaxSuppression", "NonZero", "RoiAlign")


def fp16_unsafe_op_types(model: Path, info: ModelInfo) -> list[str]:
    """The operator types whose every node the architecture declares FP16-unsafe (``ModelInfo.fp32_layers``; MDRN:
    CCA's ReduceMean, Sub, Pow, Sqrt): the TensorRT EP leaves them to the CUDA EP, which runs them in the file's
    FP32. Needs the ``onnx`` package (the ``[gpu]`` extra has it)."""
    if not info.fp32_layers:
        return []
    onnx = require("onnx", "gpu")
    pattern = re.compile(info.fp32_layers)
    nodes = [n for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type != "Constant"]
    unsafe = {n.op_type for n in nodes if pattern.search(n.name)}
    return sorted(op for op in unsafe if all(pattern.search(n.name) for n in nodes if n.op_type == op))


def tensorrt_ep_options(model: Path, info: ModelInfo, workspace_mb: int = 1024) -> dict[str, Any]:
    """Options for ONNX Runtime's TensorRT EP: without them it builds an FP32 engine for every new input shape at
    every start (minutes on a Jetson). FP16 for FP16 models; INT8 as well for the Q/DQ model (without
    ``trt_int8_enable`` TensorRT refuses it, "int8 is not configured in the builder", and ONNX Runtime falls back to
    CUDA: microsoft/onnxruntime#13381). With reduced precision CCA's statistics are excluded from TensorRT
    (``trt_op_types_to_exclude``) and run on the CUDA EP in the file's FP32: the FP16 file's casts do not pin
    precision in TensorRT's weakly typed network, and ``trt_layer_norm_fp32_fallback`` sets Pow's and Reduce's
    precision without a precision-constraints flag, which TensorRT documents as a hint it may ignore
    (``ILayer::setPrecision``). Engine and timing caches on disk; one explicit profile of LR shapes (the pipeline
    keeps batches and tiles within it)."""
    cache = ep_cache_dir(model)
    shape = lambda dims: f"{info.input_name}:{'x'.join(map(str, dims))}"  # noqa: E731
    reduced = info.precision in ("fp16", "int8")
    options = {
        "trt_fp16_enable": reduced,
        "trt_int8_enable": info.precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": workspace_mb << 20,
        "trt_profile_min_shapes": shape(DEFAULT_PROFILE[0]),
        "trt_profile_opt_shapes": shape(DEFAULT_PROFILE[1]),
        "trt_profile_max_shapes": shape(DEFAULT_PROFILE[2]),
    }
    if reduced:
        options["trt_op_types_to_exclude"] = ",".join([*ORT_TRT_EXCLUDED, *fp16_unsafe_op_types(model, info)])
    return options


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", providers: list[str] | None = None,
                 tensorrt_ep: bool = False, threads: int | None = None,
                 provider_options: dict[str, dict[str, Any]] | None = None, precision: str = "auto") -> None:
        super().__init__(path)
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"--device {device} is an OpenVINO device; use --backend openvino, or --device cpu or cuda")
        self.device, self.precision, self.tensorrt_ep = device, precision, tensorrt_ep
        self.providers = providers or provider_order(device, tensorrt_ep)
        self.threads, self.provider_options = threads, provider_options or {}
        self.session = None
        self._fallback = ""  # what ONNX Runtime printed when an execution provider failed

    def activate_impl(self) -> None:
        ort = require("onnxruntime", "runtime")
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX file; export one with mdrn-export or use a shipped model")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # input shapes vary (slices, tiles): a memory pattern is planned per shape and kept; without it peak
        # memory at a 256 x 256 LR input fell from 572 to 432 MB at the same speed (measured, CPU, x4)
        opts.enable_mem_pattern = False
        # intra-op threads that spin while they wait fight whatever shares the cores (mdrn-infer's writer thread,
        # a node's DICOM decoding and sending): on 2 cores beside one busy process, spinning made a 256 x 256 call
        # 2.40x slower than on a quiet machine and not spinning 1.59x, at 6% cost when quiet
        # (benchmarks/results/busy-cpu/busy_cpu.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if PROVIDERS["tensorrt"] in self.providers and PROVIDERS["tensorrt"] not in self.provider_options:
            info = self._session(ort, opts, [PROVIDERS["cpu"]])[1]  # the model's precision, before the EP builds
            cache = tensorrt_ep_options(self.path, info)
            Path(cache["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            self.provider_options = {**self.provider_options, PROVIDERS["tensorrt"]: cache}
        self.session, self.info = self._session(ort, opts, self.providers)
        if self.precision not in ("auto", self.info.precision):
            hint = ("--backend openvino runs an FP32 ONNX in BF16" if self.precision == "bf16" else
                    f"give the {self.precision.upper()} ONNX that mdrn-export writes")
            raise InputError(f"{self.path}: ONNX Runtime runs a file in its own precision ({self.info.precision}), not "
                             f"--precision {self.precision}; {hint}")
        if self.tensorrt_ep and self.provider != PROVIDERS["tensorrt"]:  # asked for: never a silent fallback
            why = self._fallback or "TensorRT did not take the model"
            raise MissingDependencyError(f"{self.path}: --trt-ep, but ONNX Runtime runs it on {self.provider} ({why}); "
                                         "check the TensorRT installation, or leave out --trt-ep")
        if self.device == "cuda" and self.provider not in (PROVIDERS["cuda"], PROVIDERS["tensorrt"]):
            raise MissingDependencyError(
                f"{self.path}: --device cuda, but ONNX Runtime fell back to {self.provider} (CUDA or cuDNN could not be "
                "loaded); check the CUDA installation, or use --device auto or cpu")
        log.info("onnxruntime %s: providers tried %s, running on %s", ort.__version__, self.providers, self.provider)

    def _session(self, ort, opts, providers: list[str]):
        """A session and the model info it carries; one line for a file ONNX Runtime cannot load or we did not
        export."""
        printed = io.StringIO()
        try:  # ONNX Runtime prints an EP's failure and its fallback on stdout, which is --json's: kept apart
            with contextlib.redirect_stdout(printed):
                session = ort.InferenceSession(str(self.path), opts,
                                               providers=[(p, self.provider_options.get(p, {})) for p in providers])
            said = [line for line in printed.getvalue().splitlines()
                    if line.strip() and not line.startswith("*")]  # what it said, not its banner of stars
            self._fallback = first_line(RuntimeError("\n".join(said))) if said else ""
        except Exception as exc:
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load it ({first_line(exc)}); is it an ONNX model?") from None
        meta = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelFileError(f"{self.path}: not an mdrn-edge model (no '{METADATA_KEY}' metadata); export it with mdrn-export")
        info = ModelInfo.from_json(meta[METADATA_KEY], str(self.path))
        check_graph(self.path, info, [(i.name, i.shape) for i in session.get_inputs()],
                    [o.name for o in session.get_outputs()])
        return session, info

    def input_limits(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The TensorRT EP's profile when it runs the model (shapes outside it would rebuild or fail)."""
        return (DEFAULT_PROFILE[0], DEFAULT_PROFILE[2]) if self.provider == PROVIDERS["tensorrt"] else None

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0] if self.session else "none"

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: batch})[0]

    def deactivate_impl(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": self.provider, "providers_tried": self.providers}
