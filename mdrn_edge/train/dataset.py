"""HR patches for training, drawn from normalised slices cached as ``.npy`` so an epoch never re-parses DICOM.

Each item is a deterministic function of (seed, epoch, index): a resumed run, or another DDP rank, draws exactly
the patches an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mdrn_edge.data.degradation import degrade_with, rician_noise
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import InputError
from mdrn_edge.evaluate import normalize_for
from mdrn_edge.fileio import atomic_path

FOREGROUND_LEVEL = 0.05  # normalised intensity above which a pixel counts as tissue
MIN_FOREGROUND = 0.25  # a patch with less tissue than this is "almost all background" and redrawn
MAX_REDRAWS = 10


def read_volumes(inputs: Sequence[str]) -> list:
    """Every volume in the inputs: each NIfTI file, and each DICOM series found in the other paths."""
    from mdrn_edge.data.dicom import read_dicom_study
    from mdrn_edge.data.nifti import is_nifti, read_nifti

    nifti = [read_nifti(p) for p in inputs if is_nifti(p)]
    dicom = [p for p in inputs if not is_nifti(p)]
    return nifti + (read_dicom_study(dicom) if dicom else [])


def load_volumes(inputs: Sequence[str], normalizer: Normalizer, cache_dir: Path | None = None,
                 protocol: str = "antialiased") -> list[np.ndarray]:
    """Normalised float32 ``(N, H, W)`` arrays, one per series or volume (each normalised on its own, as the
    protocol prescribes), cached as ``.npy`` by input list, normaliser and protocol so that later epochs and
    resumed runs never re-parse DICOM."""
    key = hashlib.sha256(json.dumps([sorted(map(str, inputs)), normalizer.to_dict(), protocol]).encode()).hexdigest()[:16]
    index = cache_dir / f"volumes-{key}.json" if cache_dir else None
    if index and index.exists():
        return [np.load(cache_dir / name, mmap_mode="r") for name in json.loads(index.read_text())]
    arrays = [normalize_for(v.data, protocol, normalizer) for v in read_volumes(inputs)]
    if index:
        cache_dir.mkdir(parents=True, exist_ok=True)
        names = [f"volume-{key}-{k}.npy" for k in range(len(arrays))]
        for name, arr in zip(names, arrays):
            with atomic_path(cache_dir / name) as tmp:
                np.save(tmp, arr)
        with atomic_path(index) as tmp:
            tmp.write_text(json.dumps(names))
    return arrays


class PatchDataset(Dataset):
    """Random HR crops with flips and 90-degree rotations; LR made by the shared degradation (bicubic with
    ``kernel`` - ``matlab`` antialiased or the paper protocol's ``torch`` - or k-space truncation with an
    apodisation ``window``), then, for a share ``noise_share`` of the patches, Rician noise whose standard deviation
    is drawn per patch from [0, ``lr_noise``]: the model meets every SNR from clean to noisy and learns not to
    amplify noise, while the clean share keeps what it gains on clean input (CCA's per-channel std over the
    whole input lets it tell the two apart)."""

    def __init__(self, volumes: Sequence[np.ndarray], scale: int, patch: int = 192, repeat: int = 16, seed: int = 0,
                 kernel: str = "matlab", method: str = "bicubic", window: str = "none", lr_noise: float = 0.0,
                 noise_share: float = 0.5) -> None:
        if patch % scale:
            raise InputError(f"HR patch {patch} is not a multiple of scale {scale}; choose e.g. --patch {patch - patch % scale}")
        slices = [sl for vol in volumes for sl in vol]
        if not slices:
            raise InputError("no training slices found in --data; give DICOM series folders/files or NIfTI volumes")
        small = min(min(sl.shape) for sl in slices)
        if small < patch:
            raise InputError(f"some slices are only {small} pixels wide, smaller than the HR patch {patch}; lower --patch")
        self.slices, self.scale, self.patch, self.repeat, self.seed = slices, scale, patch, repeat, seed
        self.kernel, self.method, self.window = kernel, method, window
        self.lr_noise, self.noise_share = lr_noise, noise_share
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slices) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _crop(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        h, w = img.shape
        for _ in range(MAX_REDRAWS):
            y, x = rng.integers(0, h - self.patch + 1), rng.integers(0, w - self.patch + 1)
            crop = img[y : y + self.patch, x : x + self.patch]
            if (crop > FOREGROUND_LEVEL).mean() >= MIN_FOREGROUND:
                break
        return crop

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        hr = self._crop(rng, self.slices[index % len(self.slices)])
        hr = np.rot90(hr, k=int(rng.integers(4)))
        if rng.integers(2):
            hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr, dtype=np.float32)
        lr = degrade_with(hr, self.scale, self.method, self.kernel, self.window)
        if self.lr_noise > 0 and rng.random() < self.noise_share:
            lr = rician_noise(lr, float(rng.uniform(0, self.lr_noise)), rng)
        return torch.from_numpy(lr)[None], torch.from_numpy(hr)[None]

