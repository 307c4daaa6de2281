"""FP16 ONNX from an FP32 one, with CCA's statistics kept in FP32 (onnx + onnxconverter-common, no torch)."""

from __future__ import annotations

import re
import shutil
import time
import warnings
from pathlib import Path

from mdrn_edge.errors import ModelFileError, first_line, require
from mdrn_edge.export.artifact import Artifact, read_metadata, set_metadata
from mdrn_edge.fileio import atomic_path
from mdrn_edge.modelinfo import ModelInfo


def fp32_nodes(model_proto, info: ModelInfo) -> list[str]:
    """Names of the nodes the architecture declares FP16-unsafe (MDRN: CCA's mean/std chain and its constants)."""
    if not info.fp32_layers:
        return []
    pattern = re.compile(info.fp32_layers)
    return [n.name for n in model_proto.graph.node if pattern.search(n.name)]


def convert_fp16(fp32_path: Path, path: Path, keep_io_types: bool = True) -> Artifact:
    """FP16 weights and compute, FP32 inputs/outputs by default, the architecture's FP16-unsafe layers in FP32."""
    onnx = require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export")
    from onnxconverter_common import __version__ as occ_version

    t0 = time.perf_counter()
    proto = onnx.load(str(fp32_path))
    info = read_metadata(proto, str(fp32_path))
    keep = fp32_nodes(proto, info)
    try:
        with warnings.catch_warnings():  # "number will be truncated": expected for FP16 weights, measured below
            warnings.simplefilter("ignore", UserWarning)
            half = float16.convert_float_to_float16(proto, keep_io_types=keep_io_types, node_block_list=keep)
    except Exception as exc:
        raise ModelFileError(f"{fp32_path}: FP16 conversion failed ({first_line(exc)})") from None
    set_metadata(half, info.with_precision("fp16"))
    with atomic_path(path) as tmp:
        onnx.checker.check_model(half, full_check=True)
        onnx.save(half, str(tmp))
    checks = {"onnx_checker": True, "fp32_nodes": len(keep), "keep_io_types": keep_io_types,
              "onnxconverter_common_version": occ_version}
    return Artifact("onnx_fp16", Path(path), "fp16", checks, time.perf_counter() - t0)


def load_onnx_info(source: Path) -> ModelInfo:
    """Check an existing mdrn-edge FP32 ONNX and read what it carries (for building on a device without torch)."""
    onnx = require("onnx", "export")
    try:
        proto = onnx.load(str(source))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ModelFileError(f"{source}: not a valid ONNX model ({first_line(exc)})") from None
    info = read_metadata(proto, str(source))
    if info.precision != "fp32":
        raise ModelFileError(f"{source}: is a {info.precision} model; give the FP32 ONNX (the FP16 one is derived from it)")
    return info


def copy_onnx(source: Path, path: Path) -> Artifact:
    """Use an existing, checked FP32 ONNX as the export's FP32 model."""
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    checks = {"onnx_checker": True, "source": str(source),
              "torch_parity": "not re-run here (no PyTorch); it was checked when this ONNX was exported"}
    return Artifact("onnx", Path(path), "fp32", checks, time.perf_counter() - t0)
