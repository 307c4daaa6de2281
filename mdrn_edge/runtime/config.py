"""How to run a model: one typed :class:`RuntimeConfig` that ``mdrn-infer``, ``mdrn-node``, ``mdrn-bench`` and
``super_resolve()`` pass to :func:`~mdrn_edge.runtime.create_runner`, instead of a growing list of keywords.

Reduced precision is never silent. A runtime precision other than the file's own (BF16 of an FP32 ONNX on
OpenVINO, OpenVINO's INT8 kernels for a Q/DQ file) runs only when the model file records a passed gate for it
(``ModelInfo.gates``, written by ``mdrn-export --openvino``: PSNR loss against FP32 on real MRI within the
limit), or when the caller says ``allow_ungated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mdrn_edge.errors import InputError

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
DEVICES = ("auto", "cpu", "cuda", "gpu", "npu")  # gpu/npu: OpenVINO's Intel GPU and NPU plugins
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def gate_name(backend: str, precision: str) -> str:
    """The key of a reduced-precision gate in ``ModelInfo.gates``: ``openvino-bf16``."""
    return f"{backend}-{precision}"


@dataclass(frozen=True)
class RuntimeConfig:
    """Which backend runs a model, where and in which precision; the CLI's options map one to one onto these.

    ``precision="auto"`` runs the fastest precision the model file has passed a gate for on this CPU (see
    :func:`mdrn_edge.runtime.choose_backend`); an explicit precision is refused with one line where the
    backend, the CPU or the file cannot run it, or where no gate was passed and ``allow_ungated`` is False.
    ``cache_dir`` keeps OpenVINO's compiled models (None: the user's cache folder; ``"off"``: none).
    """

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    tensorrt_ep: bool = False
    allow_host_code: bool = False
    lean_runtime: str | Path | None = None
    allow_ungated: bool = False
    cache_dir: str | Path | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("backend", self.backend, BACKENDS), ("device", self.device, DEVICES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"threads must be a positive whole number, got {self.threads!r}")
