"""ONNX export of a checkpoint: FP32 with dynamic batch/H/W, and FP16 with the CCA statistics kept in FP32.

Each function writes one file atomically and returns it with the checks it passed, in the manner of
Ultralytics' exporter; :mod:`mdrn_edge.cli.export` only composes them.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mdrn_edge
from mdrn_edge.errors import ModelFileError, first_line, require
from mdrn_edge.fileio import atomic_path
from mdrn_edge.modelinfo import CCA_STAT_PATTERN, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelInfo

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


@dataclass
class Artifact:
    """A file an export step wrote, with what it checked (name -> value) and how long it took."""

    format: str
    path: Path | None
    precision: str
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def size_mb(self) -> float | None:
        return self.path.stat().st_size / 1e6 if self.path and self.path.exists() else None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path) if self.path else None, "precision": self.precision,
                "size_mb": self.size_mb, "checks": self.checks, "seconds": round(self.seconds, 2), "skipped": self.skipped}


def cca_stat_nodes(model_proto) -> list[str]:
    """Names of the nodes computing CCA's per-channel mean and std."""
    return [n.name for n in model_proto.graph.node if CCA_STAT_PATTERN.search(n.name)]


def _set_metadata(model_proto, info: ModelInfo) -> None:
    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()


def export_onnx(model: nn.Module, info: ModelInfo, path: Path, opset: int = DEFAULT_OPSET) -> Artifact:
    """FP32 ONNX with dynamic batch, height and width; ``onnx.checker`` must pass; metadata from ``info``."""
    onnx = require("onnx", "export")
    t0 = time.perf_counter()
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: it names nodes after the module path (``/body.0/attn/...``),
        # which is how CCA's statistics are found for FP32 pinning, and gives plain dynamic axes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.rand(1, 1, 32, 32),), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=False, do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
        )
        proto = onnx.load(str(tmp))
        _set_metadata(proto, replace(info, precision="fp32"))
        proto.producer_name, proto.producer_version = "mdrn-edge", mdrn_edge.__version__
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    log.info("wrote %s (opset %d, onnx %s)", path, opset, onnx.__version__)
    checks = {"onnx_checker": True, "opset": opset, "dynamic_axes": ["batch", "height", "width"],
              "onnx_version": onnx.__version__, "torch_version": str(torch.__version__)}
    return Artifact("onnx", Path(path), "fp32", checks, time.perf_counter() - t0)


def convert_fp16(fp32_path: Path, path: Path, keep_io_types: bool = True) -> Artifact:
    """FP16 weights and compute, FP32 inputs/outputs by default, CCA statistics kept in FP32."""
    onnx = require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export")
    from onnxconverter_common import __version__ as occ_version

    t0 = time.perf_counter()
    proto = onnx.load(str(fp32_path))
    fp32_nodes = cca_stat_nodes(proto)
    info = ModelInfo.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY], str(fp32_path))
    try:
        with warnings.catch_warnings():  # "number will be truncated": expected for FP16 weights, reported below
            warnings.simplefilter("ignore", UserWarning)
            half = float16.convert_float_to_float16(proto, keep_io_types=keep_io_types, node_block_list=fp32_nodes)
    except Exception as exc:
        raise ModelFileError(f"{fp32_path}: FP16 conversion failed ({first_line(exc)})") from None
    _set_metadata(half, replace(info, precision="fp16"))
    with atomic_path(path) as tmp:
        onnx.checker.check_model(half, full_check=True)
        onnx.save(half, str(tmp))
    checks = {"onnx_checker": True, "fp32_nodes": len(fp32_nodes), "keep_io_types": keep_io_types,
              "onnxconverter_common_version": occ_version}
    return Artifact("onnx_fp16", Path(path), "fp16", checks, time.perf_counter() - t0)


def model_info_from_checkpoint(ckpt: dict[str, Any], sha256: str) -> ModelInfo:
    return ModelInfo(
        arch=ckpt["arch"], scale=int(ckpt["scale"]), normalizer=ckpt["normalizer"], config=ckpt.get("config", {}),
        provenance={**ckpt.get("provenance", {}), "iteration": ckpt.get("iteration"), "metrics": ckpt.get("metrics", {})},
        checkpoint_sha256=sha256, mdrn_edge_version=mdrn_edge.__version__,
    )


def onnx_predict(path: Path, batch: np.ndarray, providers: list[str] | None = None) -> tuple[np.ndarray, str]:
    """Run an ONNX file on an ``N x 1 x H x W`` float32 batch; returns the output and the provider that ran it."""
    from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, providers=providers) as runner:
        return runner.infer(batch), runner.provider
