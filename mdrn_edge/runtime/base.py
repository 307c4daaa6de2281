"""One interface for every inference backend, after Polygraphy's runners.

The public ``activate`` / ``infer`` / ``deactivate`` check state and inputs; backends only write ``*_impl``.
Every backend takes and returns a float32 ``N x 1 x H x W`` array, and times ``infer_impl`` with the same scope
(host arrays in, host arrays out, copies included) so latencies compare fairly.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from mdrn_edge.errors import InputError, MdrnError, ModelFileError
from mdrn_edge.modelinfo import ModelInfo


log = logging.getLogger(__name__)

# The LR shapes (N x 1 x H x W) an engine covers unless told otherwise: mdrn-export's default engine profile and
# the profile of ONNX Runtime's TensorRT EP; modest on purpose (Jetson memory), larger slices are tiled.
DEFAULT_PROFILE = ((1, 1, 16, 16), (1, 1, 256, 256), (1, 1, 512, 512))


def check_graph(path: Path, info: ModelInfo, inputs: list[tuple[str, list]], outputs: list[str]) -> None:
    """A model graph the pipeline can run: one input and one output named as its metadata declares, the input
    ``N x 1 x H x W`` with H and W free (slices and tiles of any size). Each runner passes what its runtime
    reports (names, and dimensions as numbers or None/names for free ones); anything else is one line, exit 3."""
    hint = "re-export it with mdrn-export (one input and output, dynamic batch, H and W)"
    if [name for name, _ in inputs] != [info.input_name] or outputs != [info.output_name]:
        raise ModelFileError(f"{path}: its graph's inputs {[n for n, _ in inputs]} and outputs {outputs} are not the one "
                             f"'{info.input_name}' and '{info.output_name}' its metadata declares; {hint}")
    dims = inputs[0][1]
    fixed = [d for d in dims[2:] if isinstance(d, int)]
    if len(dims) != 4 or fixed:
        shown = "x".join(str(d) if isinstance(d, int) else "?" for d in dims)
        raise ModelFileError(f"{path}: its graph input '{info.input_name}' is {shown}, not N x 1 x H x W with H and W "
                             f"free; {hint}")


class InferenceError(MdrnError):
    """The backend produced something unusable (NaN/Inf output, wrong shape)."""


class Runner(ABC):
    backend = "base"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.is_active = False
        self.info: ModelInfo | None = None
        self.last_inference_time: float | None = None

    # --- public API ---------------------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if self.is_active:
            raise RuntimeError(f"{self.backend} runner for {self.path} is already active")
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.deactivate()
            return
        try:  # an error in flight is what the user must see: a failing release after it is only logged
            self.deactivate()
        except Exception as cleanup:  # noqa: BLE001
            log.warning("%s: %s", self.path, cleanup)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """SR of an ``N x 1 x H x W`` float32 batch; NaN/Inf outputs are refused, never passed on."""
        if not self.is_active:
            raise RuntimeError(f"activate the {self.backend} runner before infer()")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise InputError(f"expected an N x 1 x H x W batch, got shape {batch.shape}")
        self.check_shape(batch.shape)
        t0 = time.perf_counter()
        out = self.infer_impl(batch)
        self.last_inference_time = time.perf_counter() - t0
        s = self.scale
        expected = (batch.shape[0], 1, batch.shape[2] * s, batch.shape[3] * s)
        if out.shape != expected:
            raise InferenceError(f"{self.path}: {self.backend} returned shape {out.shape}, expected {expected}")
        if not np.isfinite(out).all():
            raise InferenceError(
                f"{self.path}: {self.backend} produced NaN/Inf ({int((~np.isfinite(out)).sum())} values); "
                "for an FP16 model keep CCA's statistics in FP32 (re-export with mdrn-export) or use the FP32 model"
            )
        return out

    @property
    def scale(self) -> int:
        assert self.info is not None, "activate_impl must set self.info"
        return int(self.info.scale)

    def model_sha256(self) -> str:
        """The SHA-256 of the model file this runner runs (what the derived DICOM names as its equipment)."""
        from mdrn_edge.fileio import file_sha256

        return file_sha256(self.path)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "path": str(self.path), "model": self.info.name if self.info else None,
                "precision": self.info.precision if self.info else None}

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Backends with fixed limits (TensorRT profiles) refuse out-of-range shapes here, before running."""

    def input_limits(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The smallest and largest ``N x 1 x H x W`` input this backend runs (a TensorRT profile), or None for
        any: the pipeline plans batches and tiles within them."""
        return None

    # --- for backends -------------------------------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:
        """Release resources (optional)."""
