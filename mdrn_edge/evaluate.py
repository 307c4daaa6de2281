"""Evaluation of a model against bicubic on HR slices degraded by the shared bicubic function.

Two protocols (spec sec. 4), the one used named in every report:
``antialiased`` - the model's own normaliser and MATLAB-style antialiased downsampling (the default);
``paper`` - per-slice min-max to [0, 1] and PyTorch-style bicubic without antialiasing (reproduces the
paper's bicubic row; use it for comparisons with the paper's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from mdrn_edge.data import Volume
from mdrn_edge.data.degradation import crop_to_multiple, degrade_with, rician_noise, upscale
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import InputError
from mdrn_edge.metrics import background_texture, paired_test, psnr, ssim
from mdrn_edge.modelinfo import PROTOCOL_KERNELS, PROTOCOLS
from mdrn_edge.runtime.base import Runner

KERNELS = PROTOCOL_KERNELS  # the degradation kernel of each protocol


@dataclass
class EvalPairs:
    lr: np.ndarray
    hr: np.ndarray
    kernel: str


def make_pairs(hr: np.ndarray, scale: int, kernel: str = "matlab", method: str = "bicubic", window: str = "none",
               lr_noise: float = 0.0, seed: int = 0) -> EvalPairs:
    """Pairs from normalised HR slices: HR cropped to a multiple of ``scale``, LR by the shared degradation
    (bicubic with ``kernel``, or k-space truncation), plus Rician noise of standard deviation ``lr_noise`` drawn
    from ``seed`` so that every model and bicubic see the very same noisy LR."""
    if min(hr.shape[-2:]) < 2 * scale:
        raise InputError(f"{hr.shape[-2]}x{hr.shape[-1]} slices are too small for x{scale}")
    hr = crop_to_multiple(np.asarray(hr, dtype=np.float32), scale)
    lr = rician_noise(degrade_with(hr, scale, method, kernel, window), lr_noise, np.random.default_rng(seed))
    return EvalPairs(lr, hr, kernel)


def protocol_normalizer(protocol: str, normalizer: Normalizer) -> Normalizer:
    """The normaliser a protocol scores with: per-slice min-max for ``paper``, the model's own otherwise."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return Normalizer.minmax() if protocol == "paper" else normalizer


def normalize_for(data: np.ndarray, protocol: str, normalizer: Normalizer) -> np.ndarray:
    """``(N, H, W)`` stored intensities in the protocol's [0, 1] units. Training and evaluation share it, so a
    model trained on a protocol sees exactly the inputs that protocol scores."""
    return protocol_normalizer(protocol, normalizer).fit(data).normalize(data)


def prepare_pairs(volume: Volume, scale: int, protocol: str, normalizer: Normalizer, method: str = "bicubic",
                  window: str = "none", lr_noise: float = 0.0, seed: int = 0) -> EvalPairs:
    """HR slices (cropped to a multiple of ``scale``) in [0, 1]-ish units and their degraded LR."""
    if min(volume.data.shape[-2:]) < 2 * scale:
        raise InputError(f"{volume.sources[0]}: {volume.data.shape[-2]}x{volume.data.shape[-1]} image is too small for x{scale}")
    return make_pairs(normalize_for(volume.data, protocol, normalizer), scale, KERNELS[protocol], method, window,
                      lr_noise, seed)


def score(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[float, float]:
    """PSNR and SSIM of one slice on [0, 1] (both clipped there), ``border`` pixels shaved."""
    sr, hr = np.clip(sr, 0, 1), np.clip(hr, 0, 1)
    return psnr(sr, hr, border), ssim(sr, hr, border)


def predict(runner: Runner, lr: np.ndarray) -> np.ndarray:
    """SR of ``(N, H, W)`` LR slices, one call per slice (every runner's profile admits batch 1)."""
    return np.concatenate([runner.infer(lr[i : i + 1, None])[:, 0] for i in range(len(lr))])


def has_signal(hr: np.ndarray, border: int) -> bool:
    """A slice with structure to score: not constant (blank slices of skull-stripped volumes make PSNR infinite)."""
    inner = hr[border:-border, border:-border] if border else hr
    return bool(inner.size) and float(inner.max() - inner.min()) > 1e-6


def evaluate(runner: Runner | None, pairs: EvalPairs | list[EvalPairs], scale: int,
             progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Per-slice scores of an active ``runner`` (None: bicubic itself) and of bicubic, with the paired test
    between them, and the texture measure; ``pairs`` may hold several volumes (slices of different sizes).

    Slices without signal are dropped and counted (``n_dropped_blank``). Texture: the band-pass energy (detail
    of a few HR pixels) in the ground truth's background (air) of the model's and bicubic's output, each
    relative to the ground truth's own (``bg_hf_ratio``, ``bicubic_bg_hf_ratio``): above 1, the output has
    texture that is not in the patient; below 1, it smooths noise. With a runner, the runtime's per-slice checks
    (:mod:`~mdrn_edge.runtime.checks`: consistency with the LR it was given, grid energy) are summarised beside
    them."""
    from mdrn_edge.runtime.checks import measure

    model_scores, bicubic_scores, dropped, checks = [], [], 0, []
    hf: dict[str, float] = {"model": 0.0, "bicubic": 0.0, "hr": 0.0}
    bg_pixels = 0
    for group in pairs if isinstance(pairs, list) else [pairs]:
        for lr, hr in zip(group.lr, group.hr):
            if progress:
                progress()
            if not has_signal(hr, scale):
                dropped += 1
                continue
            bic = upscale(lr, scale, group.kernel)
            sr = predict(runner, lr[None])[0] if runner else bic
            bicubic_scores.append(score(bic, hr, scale))
            model_scores.append(score(sr, hr, scale))
            if runner:
                checks.append(measure(len(checks), sr, lr, runner.info))
            sums, n = background_texture({"model": sr, "bicubic": bic}, hr, scale, scale)
            hf = {k: hf[k] + sums[k] for k in hf}
            bg_pixels += n
    if not model_scores:
        raise InputError(f"all {dropped} slices are blank (no signal to score); give slices with anatomy")
    m, b = np.asarray(model_scores), np.asarray(bicubic_scores)
    test = paired_test(m[:, 0], b[:, 0]) if len(m) > 1 else None
    texture = {"bg_hf_ratio": hf["model"] / hf["hr"] if hf["hr"] > 0 else None,
               "bicubic_bg_hf_ratio": hf["bicubic"] / hf["hr"] if hf["hr"] > 0 else None,
               "hr_bg_hf_energy": hf["hr"] / bg_pixels if bg_pixels else None, "bg_pixels": bg_pixels}
    return {
        "n_slices": int(len(m)),
        "n_dropped_blank": dropped,
        "psnr": float(m[:, 0].mean()),
        "ssim": float(m[:, 1].mean()),
        "bicubic_psnr": float(b[:, 0].mean()),
        "bicubic_ssim": float(b[:, 1].mean()),
        "gain_db": float(m[:, 0].mean() - b[:, 0].mean()),
        "p_value": test.wilcoxon_p if test else None,
        "ttest_p": test.ttest_p if test else None,
        "border": scale,
        **texture,
        **check_figures(checks),
        "per_slice_psnr": [float(v) for v in m[:, 0]],
        "per_slice_bicubic_psnr": [float(v) for v in b[:, 0]],
    }


def check_figures(checks: list) -> dict[str, Any]:
    """Mean and worst of the per-slice checks (:class:`~mdrn_edge.runtime.checks.SliceCheck`), or nothing."""
    if not checks:
        return {}
    spreads = [c.uncertainty for c in checks if c.uncertainty is not None]
    return {"consistency_db": float(np.mean([c.consistency_db for c in checks])),
            "min_consistency_db": float(min(c.consistency_db for c in checks)),
            "grid_energy": float(np.mean([c.grid_energy for c in checks])),
            "max_grid_energy": float(max(c.grid_energy for c in checks)),
            **({"uncertainty": float(np.mean(spreads)), "max_uncertainty": float(max(spreads))} if spreads else {}),
            "n_flagged": sum(c.flagged for c in checks)}


def evaluate_native(runner: Runner, volume: Volume, uncertainty: bool = False,
                    progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """The runtime's checks on slices as the scanner acquired them (no ground truth, no re-degradation: what a
    deployed model sees), flagged against the model's thresholds; ``uncertainty`` adds the self-ensemble's spread
    (8 inferences a slice)."""
    from mdrn_edge.runtime.checks import judge, measure, self_ensemble, thresholds_of

    limits = thresholds_of(runner.info)
    x = runner.info.normalizer.fit(volume.data).normalize(volume.data)
    checks = []
    for i, lr in enumerate(x):
        sr = predict(runner, lr[None])[0]
        spread = self_ensemble(lambda a: predict(runner, a[None])[0], lr, sr)[1] if uncertainty else None
        checks.append(judge(measure(i, sr, lr, runner.info, spread), limits))
        if progress:
            progress()
    return {"n_slices": len(checks), **check_figures(checks), "thresholds": limits.to_dict(),
            "per_slice_checks": [c.to_dict() for c in checks]}


def compare(runners: Sequence[Runner], pairs: list[EvalPairs], scale: int) -> list[dict[str, Any]]:
    """Run active runners in turn on the same LR slices (after Polygraphy's comparator). For each: mean PSNR
    against HR, and the largest absolute difference from the first runner (the reference), per pair group (one
    group per slice size) and overall."""
    outputs = [[predict(r, p.lr) for p in pairs] for r in runners]
    results = []
    for runner, outs in zip(runners, outputs):
        psnrs = [float(np.mean([score(o, h, scale)[0] for o, h in zip(out, p.hr)])) for out, p in zip(outs, pairs)]
        errors = [float(np.abs(out - ref).max()) for out, ref in zip(outs, outputs[0])]
        results.append({"runner": runner.describe(), "psnr": float(np.mean(psnrs)), "per_size_psnr": psnrs,
                        "max_abs_err": max(errors), "per_size_max_abs_err": errors})
    return results
