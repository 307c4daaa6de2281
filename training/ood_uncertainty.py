"""Can the network itself tell a CT slice from MR? Every per-slice figure we could flag by, measured with the shipped
x4 on held-apart real MR, on pydicom's CT slices and on pure noise. From the repository root, ../shared beside it:

    python training/ood_uncertainty.py          # writes training/OOD_UNCERTAINTY.md

Issue #27 asked for "an input unlike any training data (a CT slice, pure noise)" to be flagged by uncertainty.
Candidates, each per slice, in the model's normalised units, as the scanner acquired it (no re-degradation):

- ``consistency_db``, ``grid_energy``, ``uncertainty``: mdrn-infer's own checks (mean self-ensemble spread over
  tissue, Tanno et al.);
- ``spread_p99``: the 99th percentile of that spread (a local failure the mean dilutes);
- ``spread_per_detail``: the spread over the SR detail, mean |SR - bicubic| (a smooth slice has little of both);
- ``models_disagree``: mean |mdrn-x4 - mdrn-x4-paper| over that detail (two trainings: a deep-ensemble's spread);
- ``cross_scale_gain_db``: the slice degraded once more by the model's forward model and super-resolved back,
  its PSNR gain over bicubic against the acquired slice (the model's measured skill on this very content);
- ``patch_novelty``: median Mahalanobis distance (per dimension) of the slice's 5x5 tissue patches from a Gaussian
  fitted to the training slices' patches (an input-space density: epistemic novelty);
- ``negative_share``: the share of values below -5% of the peak magnitude (what mdrn-infer flags a series by,
  with a Modality other than MR: ``mdrn_edge.runtime.series.input_reason``).

A figure separates when CT's range and MR's range do not overlap; the table says which do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = ROOT / "mdrn_edge" / "weights"
OUT = ROOT / "training" / "OOD_UNCERTAINTY.md"
PATCH = 5


def sets() -> dict[str, tuple[str, list[list[Path]]]]:
    """Name -> (kind, volumes as file lists): MR held apart from training (the checks' calibration slices and
    pydicom's MR of other scanners), pydicom's CT slices (three patients, three scanners)."""
    from pydicom.data import get_testdata_file

    def each(*names: str) -> list[list[Path]]:
        return [[Path(get_testdata_file(n))] for n in names]

    return {
        "VS-SEG 1-091..1-100 (every 3rd)": ("MR", [[DATA / "vs-seg-001-t1" / f"1-{i:03d}.dcm" for i in range(91, 101, 3)]]),
        "Philips 1301_0141..0150 (every 3rd)": ("MR", [[DATA / "philips-mprage-t1" / f"1301_{i:04d}.dcm"
                                                        for i in range(141, 151, 3)]]),
        "Siemens FLASH 0031..0035": ("MR", [sorted((DATA / "siemens-flash-t1").glob("003[1-5]_*.dcm"))]),
        "pydicom MR_small, MR-SIEMENS": ("MR", each("MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm")),
        "pydicom CT_small, 693_UNCR, explicit_VR-UN": ("CT", each("CT_small.dcm", "693_UNCR.dcm", "explicit_VR-UN.dcm")),
    }


def training_patches(info) -> tuple[np.ndarray, np.ndarray]:
    """Mean and inverse covariance of the 5x5 tissue patches of training slices of the three scanners."""
    from mdrn_edge.data import read_volume

    files = ([DATA / "vs-seg-001-t1" / f"1-{i:03d}.dcm" for i in range(1, 91, 6)]
             + [DATA / "philips-mprage-t1" / f"1301_{i:04d}.dcm" for i in range(21, 131, 8)]
             + sorted((DATA / "siemens-flash-t1").glob("00[0-2][0-9]_*.dcm"))[::2])
    x = np.concatenate([patches(s) for f in files for s in normalized(info, read_volume([f]))])
    return x.mean(0), np.linalg.inv(np.cov(x.T) + 1e-8 * np.eye(PATCH * PATCH))


def normalized(info, volume) -> np.ndarray:
    return info.normalizer.fit(volume.data).normalize(volume.data).astype(np.float32)


def patches(lr: np.ndarray) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    from mdrn_edge.metrics import BACKGROUND_LEVEL

    w = sliding_window_view(lr, (PATCH, PATCH))[::2, ::2].reshape(-1, PATCH * PATCH)
    keep = w[:, PATCH * PATCH // 2] > BACKGROUND_LEVEL
    return (w[keep] if keep.any() else w).astype(np.float64)


def figures(lr: np.ndarray, raw: np.ndarray, run, other, info, density) -> dict[str, float]:
    from mdrn_edge.data.degradation import upscale
    from mdrn_edge.runtime.checks import forward_model, kernel_of, measure, self_ensemble, tissue_mask
    from mdrn_edge.runtime.series import NEGATIVE_DEPTH

    sr = run(lr)
    _, spread = self_ensemble(run, lr, sr)
    bicubic = upscale(lr, info.scale, kernel_of(info))
    tissue = tissue_mask(bicubic)
    detail = float(np.abs(sr - bicubic)[tissue].mean())
    check = measure(0, sr, lr, info, spread)
    lower = forward_model(info)(lr)
    inner = tissue_mask(lr)
    rms = [float(np.sqrt(((up - lr) ** 2)[inner].mean())) for up in (run(lower), upscale(lower, info.scale, kernel_of(info)))]
    mean, inverse = density
    d = patches(lr) - mean
    return {"consistency_db": check.consistency_db, "grid_energy": check.grid_energy, "uncertainty": check.uncertainty,
            "spread_p99": float(np.percentile(spread[tissue], 99)), "spread_per_detail": check.uncertainty / detail,
            "models_disagree": float(np.abs(sr - other(lr))[tissue].mean()) / detail,
            "cross_scale_gain_db": 20 * float(np.log10(rms[1] / rms[0])),
            "patch_novelty": float(np.median(np.einsum("ij,jk,ik->i", d, inverse, d)) / PATCH**2),
            "negative_share": float((raw < -NEGATIVE_DEPTH * np.abs(raw).max()).mean())}


def main() -> None:
    from mdrn_edge.data import read_volume
    from mdrn_edge.runtime import RuntimeConfig, create_runner

    config = RuntimeConfig(backend="onnxruntime")
    rows: dict[str, tuple[str, list[dict]]] = {}
    with create_runner(WEIGHTS / "mdrn-x4.onnx", config) as runner, \
            create_runner(WEIGHTS / "mdrn-x4-paper.onnx", config) as paper:
        info = runner.info
        run = lambda lr: runner.infer(lr[None, None])[0, 0]  # noqa: E731
        other = lambda lr: paper.infer(lr[None, None])[0, 0]  # noqa: E731
        density = training_patches(info)
        for name, (kind, volumes) in sets().items():
            rows[name] = (kind, [])
            for files in volumes:
                volume = read_volume(files)
                for lr, raw in zip(normalized(info, volume), volume.data):
                    rows[name][1].append(figures(lr, raw, run, other, info, density))
                    print(name, {k: round(v, 4) for k, v in rows[name][1][-1].items()}, flush=True)
        noise = np.random.default_rng(3).integers(0, 2000, (2, 64, 64)).astype(np.float32)  # as the tests' noise series
        rows["pure noise, 64x64 uniform"] = ("noise", [figures(lr, raw, run, other, info, density)
                                                      for lr, raw in zip(info.normalizer.fit(noise).normalize(noise), noise)])
    OUT.write_text(report(rows))
    print(f"wrote {OUT.relative_to(ROOT)}")


def report(rows: dict[str, tuple[str, list[dict]]]) -> str:
    keys = list(next(iter(rows.values()))[1][0])
    span = lambda kind, k: [r[k] for n, (kd, rs) in rows.items() if kd == kind for r in rs]  # noqa: E731
    lines = ["# Can the network tell a CT slice from MR? (training/ood_uncertainty.py)", "",
             "mdrn-x4 (ONNX Runtime FP32), slices as acquired; each cell: min-max over the set's slices. A figure",
             "separates CT when the CT range and the MR range do not overlap.", "",
             "| set | kind | slices | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for name, (kind, rs) in rows.items():
        cells = [f"{min(r[k] for r in rs):.4g}-{max(r[k] for r in rs):.4g}" for k in keys]
        lines.append(f"| {name} | {kind} | {len(rs)} | " + " | ".join(cells) + " |")
    mr = {k: (min(span("MR", k)), max(span("MR", k))) for k in keys}
    ct = {k: (min(span("CT", k)), max(span("CT", k))) for k in keys}
    separates = [k for k in keys if ct[k][0] > mr[k][1] or ct[k][1] < mr[k][0]]
    lines += ["", "Separates CT from every MR slice: " + (", ".join(f"`{k}`" for k in separates) or "none") + ".",
              "Does not: " + ", ".join(f"`{k}`" for k in keys if k not in separates) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
