"""ONNX export of a PyTorch checkpoint: FP32 with dynamic batch, height and width, metadata for the runtime.

Each function writes one file atomically and returns it with the checks it passed, in the manner of
Ultralytics' exporter; :mod:`mdrn_edge.cli.export` only composes them.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import mdrn_edge
from mdrn_edge.errors import require
from mdrn_edge.export.artifact import Artifact, set_metadata
from mdrn_edge.fileio import atomic_path
from mdrn_edge.modelinfo import INPUT_NAME, OUTPUT_NAME, ModelInfo

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


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
        set_metadata(proto, info.with_precision("fp32"))
        proto.producer_name, proto.producer_version = "mdrn-edge", mdrn_edge.__version__
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    log.info("wrote %s (opset %d, onnx %s)", path, opset, onnx.__version__)
    checks = {"onnx_checker": True, "opset": opset, "dynamic_axes": ["batch", "height", "width"],
              "onnx_version": onnx.__version__, "torch_version": str(torch.__version__)}
    return Artifact("onnx", Path(path), "fp32", checks, time.perf_counter() - t0)

