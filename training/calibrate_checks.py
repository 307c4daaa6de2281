"""Calibrate the per-slice check thresholds of ONNX models on held-apart real slices and store them in the files.
From the repository root, with ../shared beside it:

    python training/calibrate_checks.py                      # every shipped model (mdrn_edge/weights/*.onnx)
    python training/calibrate_checks.py my-model.onnx ...    # your own exports

How: each model super-resolves, as the scanner acquired them (native resolution, no re-degradation), the slices
no shipped model trained on from the three scanners of ../shared/data: VS-SEG 1-091..1-100 (the split's gap),
Philips 1301_0141..0150 and Siemens 0031..0035 (their dev slices); every slice gets its consistency, grid energy
and self-ensemble spread (8 inferences, ONNX Runtime FP32: the reference). The thresholds leave a margin past the
worst real slice: consistency 6 dB below the lowest (twice the RMS residual), grid energy and uncertainty twice the
highest. Then each model is verified, as mdrn-infer checks by default (consistency and grid energy), on slices kept
out of the calibration: VS-SEG dev 1-101..1-120 (the tests check that nothing is flagged there) and the other
scanners of pydicom and pydicom-data. A model's calibration figures, once in checks.json, are reused.
The figures go to mdrn_edge/weights/checks.json (the model card cites them); the thresholds into each file's
model info (``checks``), its other bytes unchanged, and into the checkpoint beside it (``NAME.pt``), so that every
file exported from it carries them (the ONNX's ``checkpoint_sha256`` follows the rewritten checkpoint).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CALIBRATION = {
    "vs-seg 1-091..1-100": [DATA / "vs-seg-001-t1" / f"1-{i:03d}.dcm" for i in range(91, 101)],
    "philips 1301_0141..0150": [DATA / "philips-mprage-t1" / f"1301_{i:04d}.dcm" for i in range(141, 151)],
    "siemens 0031..0035": sorted((DATA / "siemens-flash-t1").glob("003[1-5]_*.dcm")),
}
VERIFICATION = {  # (files, pydicom test file names)
    "vs-seg dev 1-101..1-120": ([DATA / "vs-seg-001-t1" / f"1-{i:03d}.dcm" for i in range(101, 121)], []),
    "other scanners (pydicom, pydicom-data)": ([], ["MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm"]),
}
CONSISTENCY_MARGIN_DB, SPREAD_FACTOR = 6.0, 2.0
RECORD = ROOT / "mdrn_edge" / "weights" / "checks.json"


def figures(path: Path) -> dict[str, list[dict]]:
    """Every calibration slice's figures for one model file."""
    from mdrn_edge.data import read_volume
    from mdrn_edge.runtime import RuntimeConfig, create_runner
    from mdrn_edge.runtime.checks import measure, self_ensemble

    out: dict[str, list[dict]] = {}
    with create_runner(path, RuntimeConfig(backend="onnxruntime")) as runner:
        def sr_of(lr: np.ndarray) -> np.ndarray:
            return runner.infer(lr[None, None])[0, 0]

        for name, files in CALIBRATION.items():
            volume = read_volume(files)
            x = runner.info.normalizer.fit(volume.data).normalize(volume.data)
            out[name] = []
            for i, lr in enumerate(x):
                sr = sr_of(lr)
                _, spread = self_ensemble(sr_of, lr, sr)
                out[name].append(measure(i, sr, lr, runner.info, spread).to_dict())
                print(f"{path.name} {name} {i}: {out[name][-1]}", flush=True)
    return out


def thresholds(per_set: dict[str, list[dict]]) -> dict:
    from mdrn_edge.runtime.checks import Thresholds

    rows = [row for rows in per_set.values() for row in rows]
    return Thresholds(
        consistency_db=round(min(r["consistency_db"] for r in rows) - CONSISTENCY_MARGIN_DB, 2),
        grid_energy=round(min(1.0, SPREAD_FACTOR * max(r["grid_energy"] for r in rows)), 4),
        uncertainty=round(SPREAD_FACTOR * max(r["uncertainty"] for r in rows), 5),
        calibration=f"{len(rows)} held-apart real slices of 3 scanners (training/calibrate_checks.py): consistency "
                    f"{CONSISTENCY_MARGIN_DB:g} dB below the lowest, grid energy and uncertainty {SPREAD_FACTOR:g}x the "
                    "highest").to_dict()


def verify(path: Path) -> dict[str, dict]:
    """mdrn-infer's default checks (the pipeline, tiled as it tiles) on the verification slices: each set's summary."""
    from pydicom.data import get_testdata_file

    from mdrn_edge.data import read_volume
    from mdrn_edge.runtime import RuntimeConfig, create_runner
    from mdrn_edge.runtime.checks import SliceChecker, summarize, thresholds_of
    from mdrn_edge.runtime.pipeline import super_resolve_volume

    out = {}
    with create_runner(path, RuntimeConfig(backend="onnxruntime")) as runner:
        for name, (files, test_files) in VERIFICATION.items():
            checks = []
            for volume in [read_volume(files)] if files else [read_volume([get_testdata_file(f)]) for f in test_files]:
                checker = SliceChecker(runner.info)
                for _ in super_resolve_volume(volume, runner, checker=checker):
                    pass
                checks += checker.checks
            out[name] = {k: v for k, v in summarize(checks, thresholds_of(runner.info)).items() if k != "thresholds"}
            print(f"{path.name} verified on {name}: {out[name]}", flush=True)
    return out


def store(path: Path, limits: dict) -> None:
    """Write ``limits`` into the ONNX file's model info (``checks``) and its checkpoint's, atomically; files that
    already hold them are left as they are."""
    import dataclasses

    import onnx

    from mdrn_edge.export.artifact import read_metadata, set_metadata
    from mdrn_edge.fileio import atomic_path, file_sha256

    proto = onnx.load(str(path))
    before = read_metadata(proto, str(path))
    info = dataclasses.replace(before, checks=limits)
    checkpoint = path.with_suffix(".pt")
    if checkpoint.exists():
        from mdrn_edge.models.checkpoint import atomic_save, load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        if ckpt["model_info"].get("checks") != limits:
            atomic_save({**ckpt, "model_info": {**ckpt["model_info"], "checks": limits}}, checkpoint)
        info = dataclasses.replace(info, checkpoint_sha256=file_sha256(checkpoint))
    if info == before:
        return
    set_metadata(proto, info)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def main(paths: list[str]) -> None:
    models = [Path(p) for p in paths] or sorted((ROOT / "mdrn_edge" / "weights").glob("*.onnx"))
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    for path in models:
        per_set = record.get(path.stem, {}).get("slices") if not paths else None
        per_set = per_set or figures(path)
        limits = thresholds(per_set)
        store(path, limits)
        record[path.stem] = {"thresholds": limits, "verification": verify(path), "slices": per_set}
        print(f"{path.name}: {limits}", flush=True)
    if not paths:
        RECORD.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
