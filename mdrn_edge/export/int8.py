"""INT8 by explicit quantisation: a Q/DQ ONNX from the FP32 one, calibrated on real MRI (onnx + onnxruntime, no
torch).

TensorRT 10 deprecates implicit INT8 calibrators; it builds INT8 engines from Q/DQ graphs, fusing a
DequantizeLinear on a convolution's input and weights into an INT8 kernel. ONNX Runtime's static quantiser writes
exactly that (symmetric INT8, per-channel weights, biases left in float for TensorRT to fold) and runs the same
graph on the CPU, so the accuracy gate measures the very file the engine is built from. CCA's statistics stay in
float, as do the convolutions the architecture declares INT8-sensitive (measured: quantising one of them alone
costs more than the whole budget).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import centre_crop
from mdrn_edge.errors import InputError, ModelFileError, first_line, require
from mdrn_edge.evaluate import KERNELS, EvalPairs, make_pairs
from mdrn_edge.export.artifact import Artifact, read_metadata, set_metadata
from mdrn_edge.export.fp16 import fp32_nodes
from mdrn_edge.fileio import atomic_path
from mdrn_edge.modelinfo import ModelInfo

# Convolutions kept in float, per architecture (regex on ONNX node names): the image's first convolution (its
# input is the image itself), those feeding the upsampler, and, for MDRN, the two 1x1 convolutions that read each
# block's input (distill.0 and refine.0's pointwise: the residual trunk's wide range). Measured on 20 held-apart
# VS-SEG slices at x4, quantising one group at a time (min-max): each of those two groups alone lost 0.20 dB,
# every other group at most 0.02 dB. CCA stays in float whole (its 1x1 convolutions act on a pooled vector).
FLOAT_CONVS = {
    "mdrn": r"conv_first|conv_after_body|upsample|distill\.0/|refine\.0/conv/conv\.0/|/attn/",
}
DEFAULT_FLOAT_CONVS = r"conv_first|conv_after_body|upsample|tail"
HELD_APART, GAP = 6, 12  # the last sixth of a calibration series gates the INT8 model; a twelfth before it is unused
MAX_CALIBRATION_INPUTS = 32
CALIBRATION_CROP = 128  # LR pixels; statistics of 128 x 128 crops match whole slices at a fraction of the memory
CALIBRATION_CHUNK = 4  # calibration inputs run at a time (the calibrator's memory grows with it)


def calibration_split(series: Sequence[str | Path], info: ModelInfo) -> tuple[np.ndarray, list[EvalPairs]]:
    """``(LR calibration inputs, held-apart HR/LR pairs)`` from real series in the model's normalisation and
    degradation. Each series is split by slice position like the data's own train/dev split: the first part
    calibrates, the last sixth is held apart for the gate (series shorter than 6 slices only calibrate)."""
    inputs, held = [], []
    for source in series:
        volume = read_volume([source])
        hr = info.normalizer.fit(volume.data).normalize(volume.data).astype(np.float32)
        n = len(hr)
        n_held = n // HELD_APART
        calibrate = hr[: n - n_held - (n // GAP if n_held else 0)]
        kernel = KERNELS[info.protocol]
        if min(hr.shape[-2:]) < 2 * info.scale:
            raise InputError(f"{source}: {hr.shape[-2]}x{hr.shape[-1]} slices are too small to calibrate x{info.scale}")
        lr = make_pairs(calibrate[:: max(1, len(calibrate) // MAX_CALIBRATION_INPUTS)], info.scale, kernel).lr
        inputs.extend(centre_crop(lr, CALIBRATION_CROP, CALIBRATION_CROP))
        if n_held:
            held.append(make_pairs(hr[n - n_held :], info.scale, kernel))
    return np.stack(inputs[:MAX_CALIBRATION_INPUTS * len(series)]), held


def float_convs(model_proto, info: ModelInfo) -> list[str]:
    """The convolutions to keep in float: the architecture's INT8-sensitive ones plus CCA's FP32 layers."""
    pattern = re.compile(FLOAT_CONVS.get(info.arch, DEFAULT_FLOAT_CONVS))
    sensitive = [n.name for n in model_proto.graph.node if n.op_type == "Conv" and pattern.search(n.name)]
    return sorted(set(sensitive) | set(fp32_nodes(model_proto, info)))


def quantize_int8(fp32_path: Path, path: Path, calibration: np.ndarray, work: Path) -> Artifact:
    """Q/DQ INT8 ONNX of ``fp32_path``: convolutions in INT8 (symmetric activations, per-channel weights) except
    the float ones, ranges from the calibration inputs (99.999th percentile, robust to a few bright pixels)."""
    onnx = require("onnx", "export")
    quant = require("onnxruntime.quantization", "runtime")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    proto = onnx.load(str(fp32_path))
    info = read_metadata(proto, str(fp32_path))
    keep = float_convs(proto, info)
    pre = work / f".{path.stem}.pre.onnx"
    name = proto.graph.input[0].name

    class Reader(quant.CalibrationDataReader):
        """The calibration inputs in chunks: ONNX Runtime's percentile calibrator keeps every layer's output of
        every input it is given at once (17-19 GB for 32 crops of 128 x 128); fed :data:`CALIBRATION_CHUNK` at a
        time (its CalibStridedMinMax), it folds each chunk into its histograms and lets the outputs go."""

        def __init__(self) -> None:
            self.set_range(0, len(calibration))

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter([{name: x[None, None]} for x in calibration[start_index:end_index]])

        def get_next(self):
            return next(self.items, None)

    chunk = max(k for k in range(1, CALIBRATION_CHUNK + 1) if len(calibration) % k == 0)  # it must divide the count

    try:  # the calibrator prints its progress to stdout: keep stdout for --json
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            with atomic_path(path) as tmp:
                quant.quantize_static(
                    str(pre), str(tmp), Reader(), quant_format=quant.QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=keep, calibrate_method=quant.CalibrationMethod.Percentile,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "CalibPercentile": 99.999, "CalibStridedMinMax": chunk})
                qdq = onnx.load(str(tmp))
                set_metadata(qdq, info.with_precision("int8"))
                onnx.checker.check_model(qdq, full_check=True)
                onnx.save(qdq, str(tmp))
    except (OSError, InputError):
        raise
    except Exception as exc:
        raise ModelFileError(f"{fp32_path}: INT8 quantisation failed ({first_line(exc)})") from None
    finally:
        pre.unlink(missing_ok=True)
    n_convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    checks = {"quantizer": "onnxruntime.quantization (static, QDQ)", "calibration_inputs": int(len(calibration)),
              "calibration_method": "percentile 99.999", "int8_convs": n_convs - len([k for k in keep if "Conv" in k]),
              "float_convs": [k for k in keep if k.endswith("Conv")], "onnx_checker": True}
    return Artifact("onnx_int8", Path(path), "int8", checks, time.perf_counter() - t0)
