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

from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import degrade
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import InputError

FOREGROUND_LEVEL = 0.05  # normalised intensity above which a pixel counts as tissue
MIN_FOREGROUND = 0.25  # a patch with less tissue than this is "almost all background" and redrawn
MAX_REDRAWS = 10


def load_slices(inputs: Sequence[str], normalizer: Normalizer, cache_dir: Path | None = None) -> np.ndarray:
    """Normalised float32 ``(N, H, W)`` slices of one series (or NIfTI volume), cached by input and normaliser."""
    key = hashlib.sha256(json.dumps([sorted(map(str, inputs)), normalizer.to_dict()]).encode()).hexdigest()[:16]
    cached = cache_dir / f"slices-{key}.npy" if cache_dir else None
    if cached and cached.exists():
        return np.load(cached, mmap_mode="r")
    volume = read_volume(inputs)
    slices = normalizer.fit(volume.data).normalize(volume.data)
    if cached:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, slices)
        tmp.replace(cached)
    return slices


class PatchDataset(Dataset):
    """Random HR crops with flips and 90-degree rotations; LR made by the shared bicubic degradation."""

    def __init__(self, slices: np.ndarray, scale: int, patch: int = 192, repeat: int = 16, seed: int = 0) -> None:
        if patch % scale:
            raise InputError(f"HR patch {patch} is not a multiple of scale {scale}; choose e.g. --patch {patch - patch % scale}")
        if min(slices.shape[-2:]) < patch:
            raise InputError(
                f"slices of {slices.shape[-2]}x{slices.shape[-1]} are smaller than the HR patch {patch}; lower --patch"
            )
        self.slices, self.scale, self.patch, self.repeat, self.seed = slices, scale, patch, repeat, seed
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
        lr = degrade(hr, self.scale)
        return torch.from_numpy(lr)[None], torch.from_numpy(hr)[None]

