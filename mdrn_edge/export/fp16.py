"""FP16 ONNX from an FP32 one, with CCA's statistics kept in FP32 (onnx + onnxconverter-common, no torch)."""

from __future__ import annotations

import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from mdrn_edge.data.degradation import centre_crop
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


FP16_MAX = 65504.0
FP16_HEADROOM = 2.0  # the largest activation must stay this many times below FP16's largest value
ACTIVATION_CROP = 96  # LR pixels: activation ranges of a 96 x 96 crop track the whole slice (CCA is global)
CPU_SCOPE = ("ONNX Runtime on the CPU upcasts FP16 convolutions to FP32: the PSNR gate here measures FP16 weight "
             "rounding, not FP16 arithmetic. Overflow is bounded by the activation check (the largest FP32 "
             "activation of every layer that will run in FP16, against FP16's 65504); FP16 arithmetic itself is "
             "measured by the engine gate, on the GPU that builds the engine.")


def fp16_activation_peak(fp32_path: Path, lr_slices: list[np.ndarray], info: ModelInfo) -> tuple[float, str]:
    """The largest absolute activation over the layers an FP16 model computes in FP16 (all but the FP32-pinned
    ones), on real LR slices, and the node producing it: what the CPU can say about FP16 overflow."""
    onnx = require("onnx", "export")
    import onnxruntime as ort

    proto = onnx.load(str(fp32_path))
    keep = set(fp32_nodes(proto, info))
    floats = {v.name for v in onnx.shape_inference.infer_shapes(proto).graph.value_info
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producers = {o: n.name for n in proto.graph.node if n.name not in keep and n.op_type != "Constant" for o in n.output}
    watched = [name for name in producers if name in floats]
    del proto.graph.output[:]
    proto.graph.output.extend([onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in watched])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    peak, where = 0.0, ""
    for lr in lr_slices:
        crop = np.ascontiguousarray(centre_crop(lr, ACTIVATION_CROP, ACTIVATION_CROP)[None, None], dtype=np.float32)
        for name, value in zip(watched, session.run(watched, {session.get_inputs()[0].name: crop})):
            if value.size and float(np.abs(value).max()) > peak:
                peak, where = float(np.abs(value).max()), producers[name]
    return peak, where


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
