"""The checks that make an exported file trustworthy, on real MRI slices against PyTorch and the HR ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mdrn_edge.data import read_volume
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import MdrnError
from mdrn_edge.evaluate import EvalPairs, make_pairs, score
from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner

PARITY_TOLERANCE = 1e-4


class ExportCheckError(MdrnError):
    """An exported file failed a numerical check; it is not written under its final name."""

    exit_code = 6


def check_pairs(inputs: Sequence[str | Path], scale: int, normalizer: Normalizer, max_slices: int = 4) -> list[EvalPairs]:
    """Real HR/LR pairs at two sizes: the slices as they are, and a centre crop of about 3/4 of them."""
    volume = read_volume(inputs)
    step = max(1, volume.n_slices // max_slices)
    hr = normalizer.fit(volume.data).normalize(volume.data[::step][:max_slices])
    h, w = hr.shape[-2:]
    ch, cw = max(2 * scale, (3 * h // 4) // scale * scale), max(2 * scale, (3 * w // 4) // scale * scale)
    y, x = (h - ch) // 2, (w - cw) // 2
    return [make_pairs(hr, scale), make_pairs(hr[:, y : y + ch, x : x + cw] + 0, scale)]


def torch_parity(model, onnx_path: Path, pairs: list[EvalPairs], provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """Max abs difference between ONNX Runtime and PyTorch FP32 on the LR slices of every size."""
    import torch

    model = model.float().eval()
    errors, sizes = [], []
    with OnnxRuntimeRunner(onnx_path, providers=[provider]) as runner:
        for p in pairs:
            batch = p.lr[:, None]
            with torch.no_grad():
                ref = model(torch.from_numpy(batch)).numpy()
            errors.append(float(np.abs(runner.infer(batch) - ref).max()))
            sizes.append(list(batch.shape[-2:]))
    worst = max(errors)
    result = {"max_abs_err": worst, "per_size_max_abs_err": errors, "lr_sizes": sizes, "n_slices": int(len(pairs[0].lr)),
              "tolerance": PARITY_TOLERANCE, "provider": provider}
    if worst > PARITY_TOLERANCE:
        raise ExportCheckError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE:g}) "
                               "on real slices; report this with your torch/onnx versions")
    return result


def mean_psnr(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    return float(np.mean([score(s, h, scale)[0] for s, h in zip(sr, hr)]))


def fp16_psnr_drop(fp32_path: Path, fp16_path: Path, pairs: list[EvalPairs], scale: int, max_drop: float,
                   providers: list[str] | None = None) -> dict[str, Any]:
    """PSNR (against HR) of the FP32 graph minus that of the FP16 graph, both run by ONNX Runtime."""
    p32, p16, errs = [], [], []
    with OnnxRuntimeRunner(fp32_path, providers=providers) as r32, OnnxRuntimeRunner(fp16_path, providers=providers) as r16:
        for p in pairs:
            batch = p.lr[:, None]
            out32, out16 = r32.infer(batch), r16.infer(batch)
            p32.append(mean_psnr(out32[:, 0], p.hr, scale))
            p16.append(mean_psnr(out16[:, 0], p.hr, scale))
            errs.append(float(np.abs(out16 - out32).max()))
        provider = r16.provider
    drop = float(np.mean(p32) - np.mean(p16))
    result = {"fp16_psnr_drop_db": drop, "fp32_psnr": float(np.mean(p32)), "fp16_psnr": float(np.mean(p16)),
              "fp16_max_abs_err_vs_fp32": max(errs), "max_psnr_drop": max_drop, "provider": provider}
    if drop > max_drop:
        raise ExportCheckError(f"{fp16_path}: FP16 loses {drop:.3f} dB PSNR against FP32 on real slices (limit "
                               f"{max_drop} dB); use the FP32 model or raise --max-psnr-drop if that is acceptable")
    return result


def engine_check(fp32_onnx: Path, engine: Path, pairs: list[EvalPairs], scale: int, max_drop: float) -> dict[str, Any]:
    """A built engine against ONNX Runtime FP32 on the same real slices: max abs error and PSNR drop."""
    from mdrn_edge.runtime.tensorrt import TensorRTRunner

    p32, pe, errs = [], [], []
    with TensorRTRunner(engine) as runner, OnnxRuntimeRunner(fp32_onnx) as onnx_runner:
        for p in pairs:
            batch = p.lr[:, None]
            ref = onnx_runner.infer(batch)
            out = np.concatenate([runner.infer(batch[i : i + 1]) for i in range(len(batch))])
            errs.append(float(np.abs(out - ref).max()))
            p32.append(mean_psnr(ref[:, 0], p.hr, scale))
            pe.append(mean_psnr(out[:, 0], p.hr, scale))
    drop = float(np.mean(p32) - np.mean(pe))
    if drop > max_drop:
        raise ExportCheckError(f"{engine}: loses {drop:.3f} dB PSNR against ONNX Runtime FP32 (limit {max_drop} dB)")
    return {"max_abs_err_vs_onnx_fp32": max(errs), "psnr_drop_db": drop, "engine_psnr": float(np.mean(pe))}
