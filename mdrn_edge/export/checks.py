"""The checks that make an exported file trustworthy, on real MRI slices against a reference runner and the HR
ground truth. One gate serves every format: a candidate runner against a reference runner, by
:func:`mdrn_edge.evaluate.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import centre_crop
from mdrn_edge.errors import ExportCheckError
from mdrn_edge.evaluate import KERNELS, EvalPairs, compare, make_pairs
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.base import Runner

PARITY_TOLERANCE = 1e-4



def check_pairs(series: Sequence[Sequence[str | Path]], info: ModelInfo, max_slices: int = 4) -> list[EvalPairs]:
    """Real HR/LR pairs from each series (a list of files or one folder) at two sizes, the slices as they are and
    a centre crop of about 3/4 of them, in the model's own normalisation and its protocol's degradation."""
    pairs = []
    scale, kernel = info.scale, KERNELS[info.protocol]
    for inputs in series:
        volume = read_volume(list(inputs))
        step = max(1, volume.n_slices // max_slices)
        hr = info.normalizer.fit(volume.data).normalize(volume.data)[::step][:max_slices]
        h, w = hr.shape[-2:]
        ch, cw = max(2 * scale, (3 * h // 4) // scale * scale), max(2 * scale, (3 * w // 4) // scale * scale)
        pairs += [make_pairs(hr, scale, kernel), make_pairs(centre_crop(hr, ch, cw) + 0, scale, kernel)]
    return pairs


def within_profile(pairs: list[EvalPairs], min_hw: tuple[int, int], max_hw: tuple[int, int], scale: int,
                   what: str) -> list[EvalPairs]:
    """The check pairs an engine profile admits: LR slices smaller than its minimum are left out, larger ones
    centre-cropped to its maximum (with their HR); none left is one line, before the engine is asked to run
    shapes it cannot (the bundled 64x64 sample at x4 gives 16x16 and 12x12 LR, the default minimum is 16x16)."""
    kept = []
    for pair in pairs:
        h, w = pair.lr.shape[-2:]
        if h < min_hw[0] or w < min_hw[1]:
            continue
        ch, cw = min(h, max_hw[0]), min(w, max_hw[1])
        y, x = (h - ch) // 2, (w - cw) // 2
        kept.append(EvalPairs(pair.lr[:, y : y + ch, x : x + cw], pair.hr[:, y * scale : (y + ch) * scale,
                                                                           x * scale : (x + cw) * scale], pair.kernel))
    if not kept:
        sizes = ", ".join(f"{p.lr.shape[-2]}x{p.lr.shape[-1]}" for p in pairs)
        raise ExportCheckError(f"{what}: its profile (LR {min_hw[0]}x{min_hw[1]} .. {max_hw[0]}x{max_hw[1]}) admits none "
                               f"of the check slices (LR {sizes}); give --check-data with larger slices or a smaller "
                               "--min-shape")
    return kept


def gate(reference: Runner, candidate: Runner, pairs: list[EvalPairs], what: str, max_abs_err: float | None = None,
         max_psnr_drop: float | None = None, limit_option: str = "--max-psnr-drop") -> dict[str, Any]:
    """``candidate`` against ``reference`` (both active) on the same slices: the largest absolute difference and
    the PSNR lost against HR. Beyond either limit the export fails with one line naming the file."""
    ref, cand = compare([reference, candidate], pairs, candidate.scale)
    drop = ref["psnr"] - cand["psnr"]
    checks = {"reference": reference.describe(), "provider": cand["runner"].get("provider"),
              "max_abs_err": cand["max_abs_err"], "per_size_max_abs_err": cand["per_size_max_abs_err"],
              "lr_sizes": [list(p.lr.shape[-2:]) for p in pairs], "n_slices": int(len(pairs[0].lr)),
              "reference_psnr": ref["psnr"], "psnr": cand["psnr"], "psnr_drop_db": drop}
    if max_abs_err is not None:
        checks["tolerance"] = max_abs_err
        if cand["max_abs_err"] > max_abs_err:
            raise ExportCheckError(f"{candidate.path}: {what} differs from {reference.backend} by {cand['max_abs_err']:.2e} "
                                   f"(> {max_abs_err:g}) on real slices; report this with your library versions")
    if max_psnr_drop is not None:
        checks["max_psnr_drop"] = max_psnr_drop
        if drop > max_psnr_drop:
            raise ExportCheckError(f"{candidate.path}: {what} loses {drop:.3f} dB PSNR against {reference.backend} on real "
                                   f"slices (limit {max_psnr_drop} dB); use the FP32 model or raise {limit_option} if "
                                   "that is acceptable")
    return checks


def fp16_range_check(fp32_path: Path, pairs: list[EvalPairs], info: ModelInfo) -> dict[str, Any]:
    """The FP16 overflow bound: every layer that will run in FP16 keeps its largest activation on the real slices
    at least FP16_HEADROOM times below 65504, or the export fails naming the layer."""
    from mdrn_edge.export.fp16 import FP16_HEADROOM, FP16_MAX, fp16_activation_peak

    peak, node = fp16_activation_peak(fp32_path, [p.lr[0] for p in pairs], info)
    if peak * FP16_HEADROOM > FP16_MAX:
        raise ExportCheckError(f"{fp32_path}: layer {node} reaches {peak:.0f} on real slices, within {FP16_HEADROOM:g}x "
                               f"of FP16's largest value {FP16_MAX:.0f}: FP16 may overflow; use the FP32 model")
    return {"fp16_max_activation": peak, "fp16_max_activation_layer": node, "fp16_headroom": FP16_MAX / max(peak, 1e-30)}
