"""Every super-resolved slice checked against what the scanner acquired: data consistency, grid energy and the
self-ensemble's spread, and a flag with its reason (NumPy only).

A radiologist's first question about a super-resolved image is whether a detail is in the patient or made up by
the network. Three cheap, per-slice answers, none needing a ground truth:

- **Data consistency** (``consistency_db``): the SR slice degraded by the model's own forward model (the
  degradation stored in its :class:`~mdrn_edge.modelinfo.ModelInfo`) against the acquired LR slice, as a PSNR in
  the model's normalised range. A faithful SR reproduces its input; a low figure means the output disagrees with
  the acquisition (something was added or removed at the scale the scanner did measure).
- **Grid energy** (``grid_energy``): the share of the residual SR minus bicubic whose spectrum lies near the LR
  sampling frequencies (within 1/8 of them, excluding zero): the signature of a pattern locked to the LR pixel
  grid (a sub-pixel upsampler's checkerboard). White noise puts ``(s^2 - 1) / (16 s^2)`` there (4.7% at x2, 5.9%
  at x4, 6.2% at x8): :func:`noise_grid_share`.
- **Uncertainty** (``uncertainty``): the mean, over tissue, of the per-pixel standard deviation of the model's
  outputs over the 8 flips and rotations of the input (self-ensemble; Tanno et al., arXiv 1907.13418). It sees
  what consistency cannot, detail above the LR band, and grows on inputs unlike the training data. It costs 8
  inferences, so it is computed only when asked (``checks="full"``) or when the ensemble is the output.

A series that is not magnitude MR (Modality CT, a NIfTI in Hounsfield units: the models are trained on MR) is
flagged on every slice by :func:`~mdrn_edge.runtime.series.input_reason`: no figure here can tell, as the network
is as sure of a CT slice as of an MR one (``training/OOD_UNCERTAINTY.md``: uncertainty 0.0012-0.0025 on three CT
slices, 0.0012-0.0050 on held-apart MR). A slice is flagged when a figure
crosses the model's :class:`Thresholds` (stored in its ONNX metadata,
calibrated on held-apart real slices by ``training/calibrate_checks.py``; a model without them is checked against
:data:`DEFAULT_THRESHOLDS` and says so). ``enforce`` makes the SR consistent with its input: an exact projection
onto ``degrade(SR) = LR`` for bicubic-trained models (the minimum-norm correction, which keeps the detail the
degradation cannot see), iterative back-projection for k-space-trained ones, alternated with the series' value
bounds until the tolerance holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from mdrn_edge.data.degradation import degrade_with, resize_matrix, upscale
from mdrn_edge.data.normalize import Scaling
from mdrn_edge.errors import ModelFileError
from mdrn_edge.metrics import BACKGROUND_LEVEL, psnr
from mdrn_edge.modelinfo import PROTOCOL_KERNELS, ModelInfo

CHECK_MODES = ("off", "fast", "full")  # fast: consistency and grid energy; full: and the self-ensemble's spread
GRID_BAND = 1 / 8  # half-width, in LR sampling frequencies, of the band around each LR grid frequency
ENFORCE_TOLERANCE_DB = 50.0  # --consistency enforce: degrade(SR) within this PSNR of LR (RMS 0.3% of the range)
ENFORCE_ITERATIONS = 10

SliceSR = Callable[[np.ndarray], np.ndarray]  # one normalised H x W LR slice -> its normalised SR slice


@dataclass(frozen=True)
class Thresholds:
    """The limits a slice is flagged against, and how they were set (``calibration``, one line)."""

    consistency_db: float  # flagged below
    grid_energy: float  # flagged above
    uncertainty: float  # flagged above (when computed)
    calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Thresholds":
        """The inverse of :meth:`to_dict`; anything unknown or ill-typed raises ValueError (one line upstream)."""
        if not isinstance(data, dict):
            raise ValueError(f"check thresholds are a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown check threshold keys {sorted(unknown)}")
        for name in ("consistency_db", "grid_energy", "uncertainty"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"check threshold {name} must be a finite number, got {value!r}")
        return cls(**data)


# For a model whose file carries no calibrated thresholds: the loosest of the shipped models' calibrations (see
# mdrn_edge/weights/MODEL_CARD.md), so that an uncalibrated model is never held to a stricter bar than ours.
DEFAULT_THRESHOLDS = Thresholds(consistency_db=30.0, grid_energy=0.5, uncertainty=0.03,
                                calibration="defaults: this model file carries no calibrated thresholds")


def thresholds_of(info: ModelInfo) -> Thresholds:
    """The model's own calibrated thresholds, or :data:`DEFAULT_THRESHOLDS`; ill-formed ones are one line."""
    if not info.checks:
        return DEFAULT_THRESHOLDS
    try:
        return Thresholds.from_dict(info.checks)
    except ValueError as exc:
        raise ModelFileError(f"{info.name}: its model info's check thresholds are not valid ({exc}); recalibrate "
                             "them with training/calibrate_checks.py or re-export the model") from None


@dataclass
class SliceCheck:
    """The figures of one output slice (``index`` counts from 0 in the series' slice order)."""

    index: int
    consistency_db: float
    grid_energy: float
    uncertainty: float | None = None
    flagged: bool = False
    reason: str = ""
    enforced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CheckConfig:
    """What to check and do per slice: ``mode`` (:data:`CHECK_MODES`), ``enforce`` data consistency to
    ``tolerance_db``, ``ensemble``: the mean of the 8 self-ensemble outputs is the result (its spread is then the
    uncertainty, at no extra cost); ``uncertainty_map``: the spread, pixel by pixel, goes to the checker's
    ``report_map`` (mdrn-infer's ``--uncertainty-series``)."""

    mode: str = "fast"
    enforce: bool = False
    tolerance_db: float = ENFORCE_TOLERANCE_DB
    ensemble: bool = False
    uncertainty_map: bool = False

    def __post_init__(self) -> None:
        if self.mode not in CHECK_MODES:
            raise ValueError(f"checks must be one of {CHECK_MODES}, got {self.mode!r}")

    @property
    def active(self) -> bool:
        return self.mode != "off" or self.enforce or self.needs_ensemble

    @property
    def needs_ensemble(self) -> bool:
        return self.ensemble or self.mode == "full" or self.uncertainty_map


# --- the forward model ----------------------------------------------------------------------------------------------
def kernel_of(info: ModelInfo) -> str:
    """The bicubic kernel of the model's protocol (``paper``: PyTorch's; otherwise MATLAB's antialiased)."""
    return PROTOCOL_KERNELS[info.protocol]


def forward_model(info: ModelInfo) -> Callable[[np.ndarray], np.ndarray]:
    """SR -> LR as the model's training data was degraded (bicubic with its protocol's kernel, or k-space
    truncation with its apodisation window), noise left out."""
    method = str(info.degradation.get("method", "bicubic"))
    window = str(info.degradation.get("apodization", "none"))
    kernel = kernel_of(info)
    return lambda sr: degrade_with(sr, info.scale, method, kernel, window)


def consistency_db(sr: np.ndarray, lr: np.ndarray, degrade: Callable[[np.ndarray], np.ndarray]) -> float:
    """PSNR of ``degrade(sr)`` against ``lr`` (both normalised, peak 1), over the whole LR slice."""
    return min(psnr(degrade(sr), lr), 99.0)  # identical: 99 dB, so the figure stays a JSON number


def noise_grid_share(scale: int) -> float:
    """The share of white noise's energy that :func:`grid_energy` counts: its band's share of the spectrum."""
    return (scale * scale - 1) * (2 * GRID_BAND) ** 2 / (scale * scale)


@lru_cache(maxsize=16)
def _grid_mask(h: int, w: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The rfft2 bins within :data:`GRID_BAND` of an LR grid frequency (not zero), and each bin's weight (the
    half-spectrum's bins stand for two)."""
    fy = np.fft.fftfreq(h) * scale  # in LR sampling frequencies: the grid frequencies are the integers
    fx = np.fft.rfftfreq(w) * scale
    near_y, near_x = np.abs(fy - np.rint(fy)) < GRID_BAND, np.abs(fx - np.rint(fx)) < GRID_BAND
    mask = near_y[:, None] & near_x[None, :] & ~((np.rint(fy) == 0)[:, None] & (np.rint(fx) == 0)[None, :])
    weight = np.full(len(fx), 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    return mask, weight


def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def grid_energy(sr: np.ndarray, bicubic: np.ndarray, scale: int) -> float:
    """The share of the energy of ``sr - bicubic`` (Hann-windowed, so the slice's borders do not leak) near the LR
    grid frequencies; 0 for a residual of nothing."""
    h, w = sr.shape
    residual = (sr - bicubic) * _hann(h)[:, None] * _hann(w)[None, :]
    power = np.abs(np.fft.rfft2(residual)) ** 2
    mask, weight = _grid_mask(h, w, scale)
    total = float((power * weight).sum())
    return float((power * weight)[mask].sum() / total) if total > 0 else 0.0


def tissue_mask(bicubic: np.ndarray) -> np.ndarray:
    """Pixels with signal (normalised bicubic above :data:`~mdrn_edge.metrics.BACKGROUND_LEVEL`), or every pixel of
    a slice that has none (so the mean is defined)."""
    mask = bicubic > BACKGROUND_LEVEL
    return mask if mask.any() else np.ones_like(mask)


# --- the self-ensemble ----------------------------------------------------------------------------------------------
def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th of the 8 flips/rotations of the last two axes (0 is the identity)."""
    x = np.rot90(x, k % 4, axes=(-2, -1))
    return np.flip(x, -1) if k >= 4 else x


def undo_dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`dihedral`."""
    x = np.flip(x, -1) if k >= 4 else x
    return np.rot90(x, -(k % 4), axes=(-2, -1))


def self_ensemble(sr_of: SliceSR, lr: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-pixel standard deviation of the 8 outputs (``first`` is the identity's, already computed),
    accumulated in place (Welford), so memory holds three slices whatever the count."""
    mean = first.astype(np.float64)
    m2 = np.zeros_like(mean)
    for n, k in enumerate(range(1, 8), start=2):
        out = undo_dihedral(sr_of(np.ascontiguousarray(dihedral(lr, k))), k)
        delta = out - mean
        mean += delta / n
        m2 += delta * (out - mean)
    return mean.astype(np.float32), np.sqrt(m2 / 8).astype(np.float32)


# --- enforcing consistency ------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _pseudo_inverse(in_len: int, out_len: int, kernel: str) -> np.ndarray:
    """``R^T (R R^T)^-1`` of the 1-D downsampling matrix ``R`` (``out_len`` x ``in_len``): the minimum-norm
    correction along one axis."""
    r = resize_matrix(in_len, out_len, True, kernel)
    return (r.T @ np.linalg.inv(r @ r.T)).astype(np.float32)


def back_projector(info: ModelInfo, hr_shape: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """LR residual -> HR correction: exact for the (linear, separable) bicubic degradation, so one step makes
    ``degrade(SR) = LR``; zero-filled k-space (the adjoint of truncation) for k-space models, iterated."""
    s, (h, w) = info.scale, hr_shape
    if str(info.degradation.get("method", "bicubic")) == "bicubic":
        kernel = kernel_of(info)
        rows, cols = _pseudo_inverse(h, h // s, kernel), _pseudo_inverse(w, w // s, kernel)
        return lambda e: rows @ e @ cols.T
    return lambda e: upscale_kspace(e, s)


def upscale_kspace(lr: np.ndarray, scale: int) -> np.ndarray:
    """Zero-filled k-space interpolation, the adjoint of :func:`~mdrn_edge.data.degradation.kspace_degrade`'s
    truncation (its geometry: the same half-pixel phase)."""
    lh, lw = lr.shape
    h, w = lh * scale, lw * scale
    k = np.zeros((h, w), np.complex128)
    y0, x0 = h // 2 - lh // 2, w // 2 - lw // 2
    k[y0 : y0 + lh, x0 : x0 + lw] = np.fft.fftshift(np.fft.fft2(lr))
    d = (scale - 1) / 2
    phase = np.outer(np.exp(-2j * np.pi * np.fft.fftfreq(h) * d), np.exp(-2j * np.pi * np.fft.fftfreq(w) * d))
    return np.real(np.fft.ifft2(np.fft.ifftshift(k) * phase) * (scale * scale)).astype(np.float32)


def enforce_consistency(sr: np.ndarray, lr: np.ndarray, info: ModelInfo, bounds: tuple[float, float] | None,
                        tolerance_db: float = ENFORCE_TOLERANCE_DB) -> np.ndarray:
    """``sr`` corrected until ``degrade(sr)`` is within ``tolerance_db`` of ``lr``, alternating with ``bounds``
    (the series' value range, normalised), at most :data:`ENFORCE_ITERATIONS` rounds; the caller reports the
    consistency reached (a slice that cannot reach the tolerance is flagged, never passed as enforced)."""
    degrade, project = forward_model(info), back_projector(info, sr.shape)
    out = sr.astype(np.float32, copy=True)
    for _ in range(ENFORCE_ITERATIONS):
        out += project(lr - degrade(out))
        if bounds:
            np.clip(out, *bounds, out=out)
        if consistency_db(out, lr, degrade) >= tolerance_db:
            break
    return out


# --- one slice ------------------------------------------------------------------------------------------------------
def measure(index: int, sr: np.ndarray, lr: np.ndarray, info: ModelInfo, spread: np.ndarray | None = None,
            degrade: Callable[[np.ndarray], np.ndarray] | None = None) -> SliceCheck:
    """The figures of one normalised SR slice against its normalised LR slice (and the self-ensemble's spread)."""
    bicubic = upscale(lr, info.scale, kernel_of(info))
    uncertainty = float(spread[tissue_mask(bicubic)].mean()) if spread is not None else None
    return SliceCheck(index, consistency_db(sr, lr, degrade or forward_model(info)),
                      grid_energy(sr, bicubic, info.scale), uncertainty)


def judge(check: SliceCheck, limits: Thresholds, enforce_db: float | None = None, series_reason: str = "") -> SliceCheck:
    """Set ``flagged`` and ``reason`` from ``limits`` (every figure that crossed one, in one line) and what is
    known of the whole series (``series_reason``: an input the model was not made for)."""
    reasons = [series_reason] if series_reason else []
    if enforce_db is not None and check.consistency_db < enforce_db:
        reasons.append(f"consistency {check.consistency_db:.1f} dB could not be enforced to {enforce_db:.1f} dB")
    elif check.consistency_db < limits.consistency_db:
        reasons.append(f"consistency {check.consistency_db:.1f} dB below {limits.consistency_db:.1f} dB: the output "
                       "disagrees with the acquired slice")
    if check.grid_energy > limits.grid_energy:
        reasons.append(f"grid energy {check.grid_energy:.2f} above {limits.grid_energy:.2f}: a pattern locked to the "
                       "LR pixel grid")
    if check.uncertainty is not None and check.uncertainty > limits.uncertainty:
        reasons.append(f"uncertainty {check.uncertainty:.4f} above {limits.uncertainty:.4f}: unlike the slices the "
                       "model was calibrated on")
    check.flagged, check.reason = bool(reasons), "; ".join(reasons)
    return check


def summarize(checks: list[SliceCheck], limits: Thresholds) -> dict[str, Any]:
    """A series' summary: how many slices were flagged (and which), the worst of each figure, the thresholds."""
    if not checks:
        return {}
    flagged = [c.index for c in checks if c.flagged]
    spreads = [c.uncertainty for c in checks if c.uncertainty is not None]
    return {"n_slices": len(checks), "n_flagged": len(flagged), "flagged_slices": flagged,
            "first_reason": next((c.reason for c in checks if c.flagged), ""),
            "min_consistency_db": round(min(c.consistency_db for c in checks), 3),
            "max_grid_energy": round(max(c.grid_energy for c in checks), 5),
            "max_uncertainty": round(max(spreads), 6) if spreads else None,
            "enforced": any(c.enforced for c in checks), "thresholds": limits.to_dict()}


@dataclass
class SliceChecker:
    """Checks (and, when asked, enforces and ensembles) each slice the pipeline produces; what it measured is in
    ``checks`` in slice order, and ``report(check)`` (the DICOM writer) is told of each before its slice is
    written; ``report_map(check, spread)`` gets the self-ensemble's per-pixel spread, in physical units (through
    ``scaling``, the run's normalisation, which the pipeline sets), where the config asks for the map."""

    info: ModelInfo
    config: CheckConfig = field(default_factory=CheckConfig)
    report: Callable[[SliceCheck], None] | None = None
    report_map: Callable[[SliceCheck, np.ndarray], None] | None = None
    scaling: Scaling | None = None
    series_reason: str = ""  # flags every slice: the series is not what the model was made for (input_reason)
    checks: list[SliceCheck] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limits = thresholds_of(self.info)
        self.degrade = forward_model(self.info)

    def process(self, index: int, lr: np.ndarray, sr: np.ndarray, sr_of: SliceSR,
                bounds: tuple[float, float] | None) -> np.ndarray:
        """The slice to write (``sr``, or the ensemble's mean, made consistent when asked), its figures recorded.
        ``bounds`` are the series' value bounds in this slice's normalised units (None: unbounded)."""
        spread = None
        if self.config.needs_ensemble:
            mean, spread = self_ensemble(sr_of, lr, sr)
            sr = mean if self.config.ensemble else sr
        if bounds:
            sr = np.clip(sr, *bounds)
        if self.config.enforce:
            sr = enforce_consistency(sr, lr, self.info, bounds, self.config.tolerance_db)
        check = measure(index, sr, lr, self.info, spread, self.degrade)
        check.enforced = self.config.enforce
        judge(check, self.limits, self.config.tolerance_db if self.config.enforce else None, self.series_reason)
        self.checks.append(check)
        if self.report_map and self.scaling and spread is not None and self.config.uncertainty_map:
            self.report_map(check, self.scaling.denormalize_spread(spread[None], index)[0])
        if self.report:
            self.report(check)
        return sr

    def summary(self) -> dict[str, Any]:
        return summarize(self.checks, self.limits)
