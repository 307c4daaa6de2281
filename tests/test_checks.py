"""Every super-resolved slice checked against what the scanner acquired (issue #27): the figures, the flags, enforced
consistency and the self-ensemble, in --json and in the derived DICOM; the runtime's checks never import torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from corpus import ROOT, SHARED_SERIES, all_files, digest, make_series, noise_series, shared_files
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.data import read_volume
from mdrn_edge.metrics import psnr
from mdrn_edge.modelinfo import ModelInfo
from mdrn_edge.runtime.checks import (
    DEFAULT_THRESHOLDS, SliceCheck, Thresholds, consistency_db, dihedral, enforce_consistency, forward_model,
    grid_energy, judge, noise_grid_share, undo_dihedral,
)

SHARED = ROOT.parent / "shared" / "data"
SIEMENS_DEV = sorted((SHARED / "siemens-flash-t1").glob("003[1-5]_*.dcm"))
WEIGHTS = ROOT / "mdrn_edge" / "weights"
DCIODVFY = shutil.which("dciodvfy")
BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # importing torch now raises ImportError\n"
NEEDS_SHARED = pytest.mark.skipif(not SHARED_SERIES.is_dir(), reason="needs the real dev slices of ../shared/data")


def model_info(path: Path) -> ModelInfo:
    import onnx

    from mdrn_edge.export.artifact import read_metadata

    return read_metadata(onnx.load(str(path)), str(path))


def infer(*args):
    return CliRunner().invoke(infer_cli, [*map(str, args), "--no-progress"])


def infer_without_torch(*args) -> dict:
    """mdrn-infer --json in a fresh process where importing torch fails: the checks are part of the light runtime."""
    code = BLOCK_TORCH + "from mdrn_edge.cli.infer import command; command()"
    res = subprocess.run([sys.executable, "-c", code, *map(str, args), "--json", "--no-progress"], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def copy_files(files, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)
    return folder


# --- the figures, from their definitions ----------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_grid_energy_of_white_noise_is_its_band_share_and_of_a_grid_locked_pattern_near_one(scale):
    rng = np.random.default_rng(0)
    n = 64 * scale
    noise = rng.normal(size=(n, n)).astype(np.float32)
    assert grid_energy(noise, np.zeros_like(noise), scale) == pytest.approx(noise_grid_share(scale), rel=0.15)
    yy, xx = np.mgrid[:n, :n]
    envelope = 1 + 0.5 * np.sin(2 * np.pi * yy / n)  # a checkerboard of the LR grid, modulated as by anatomy
    pattern = (envelope * np.where((yy % scale < scale // 2) ^ (xx % scale < scale // 2), 1.0, -1.0)).astype(np.float32)
    assert grid_energy(pattern, np.zeros_like(pattern), scale) > 0.9


def test_the_eight_flips_and_rotations_are_undone():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    outs = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    for k in range(8):
        assert np.array_equal(undo_dihedral(dihedral(x, k), k), x)


@pytest.mark.parametrize("degradation", [{"method": "bicubic"}, {"method": "kspace", "apodization": "none"}])
@pytest.mark.parametrize("protocol", ["antialiased", "paper"])
def test_enforce_makes_the_degraded_output_equal_its_input_within_the_tolerance(degradation, protocol):
    info = ModelInfo(arch="mdrn", scale=4, degradation=degradation, protocol=protocol)
    rng = np.random.default_rng(1)
    hr = np.clip(rng.normal(0.5, 0.2, (96, 80)), 0, 1).astype(np.float32)
    lr = forward_model(info)(hr)
    sr = (0.85 * hr + 0.05 + rng.normal(0, 0.02, hr.shape)).astype(np.float32)  # an SR that disagrees with its LR
    before = consistency_db(sr, lr, forward_model(info))
    out = enforce_consistency(sr, lr, info, (0.0, 1.0), 50.0)
    assert before < 40 <= 50 <= consistency_db(out, lr, forward_model(info))
    assert out.min() >= 0 and out.max() <= 1
    assert psnr(out, hr) > psnr(sr, hr)  # the correction moves towards the truth, keeping the detail


def test_judge_names_every_figure_that_crossed_its_threshold():
    limits = Thresholds(40.0, 0.2, 0.01)
    ok = judge(SliceCheck(0, 45.0, 0.1, 0.005), limits)
    assert not ok.flagged and ok.reason == ""
    bad = judge(SliceCheck(0, 30.0, 0.5, 0.02), limits)
    assert bad.flagged and all(w in bad.reason for w in ("consistency 30.0 dB", "grid energy 0.50", "uncertainty 0.0200"))


def test_ill_formed_thresholds_in_a_model_file_are_one_line(tmp_path):
    import dataclasses

    import onnx

    from mdrn_edge.export.artifact import read_metadata, set_metadata

    proto = onnx.load(str(WEIGHTS / "mdrn-x4.onnx"))
    info = read_metadata(proto, "x")
    set_metadata(proto, dataclasses.replace(info, checks={"consistency_db": "high", "grid_energy": 0.1, "uncertainty": 0.1}))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", "--model", tmp_path / "bad.onnx")
    assert res.exit_code == 3, res.output
    assert "check thresholds are not valid" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_out_of_range_options_are_one_line(tmp_path):
    for args in (["--consistency-tolerance", "5"], ["--checks", "some"], ["--consistency", "fix"]):
        res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", *args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "out").exists()


# --- the shipped models on real slices ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mdrn-x2", "mdrn-x4", "mdrn-x4-paper", "mdrn-x8"])
def test_shipped_models_carry_calibrated_thresholds(name):
    info = model_info(WEIGHTS / f"{name}.onnx")
    limits = Thresholds.from_dict(info.checks)
    assert "held-apart real slices of 3 scanners" in limits.calibration
    assert limits.consistency_db > DEFAULT_THRESHOLDS.consistency_db - 5


@NEEDS_SHARED
def test_real_dev_slices_are_consistent_and_none_is_flagged_without_torch(tmp_path):
    """VS-SEG dev 1-101..1-120 (kept out of the calibration) at x4, and the Siemens dev slices at x2 and x8."""
    src = copy_files(shared_files(101, 120), tmp_path / "vs")
    before = digest(all_files(src))
    result = infer_without_torch(src, "--output", tmp_path / "out-x4")
    assert digest(all_files(src)) == before
    summary = result["checks"]
    assert summary["n_slices"] == 20 and summary["n_flagged"] == 0, summary
    assert summary["min_consistency_db"] > 45 and summary["thresholds"]["consistency_db"] < summary["min_consistency_db"]
    assert len(result["slices"]) == 20 and [s["index"] for s in result["slices"]] == list(range(20))
    assert set(result["slices"][0]) == {"series", "index", "consistency_db", "grid_energy", "uncertainty", "flagged",
                                        "reason", "enforced"}
    siemens = copy_files(SIEMENS_DEV, tmp_path / "siemens")
    for scale in (2, 8):
        result = infer_without_torch(siemens, "--output", tmp_path / f"out-x{scale}", "--scale", scale)
        assert result["checks"]["n_flagged"] == 0, result["checks"]


def with_blob(source: Path, target: Path, amplitude: float = 0.5, size: int = 128, sigma: float = 24.0) -> Path:
    """The shipped ONNX with a bright Gaussian blob added to the centre of every output: a model that hallucinates."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["sr_raw" if o == out else o for o in node.output]
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = (amplitude * np.exp(-(yy**2 + xx**2) / (2 * sigma**2))).astype(np.float32)[None, None]
    consts = {"blob": blob, "c2": np.array([2], np.int64), "c4": np.array([4], np.int64),
              "bsize": np.array([size, size], np.int64), "two": np.array([2, 2], np.int64),
              "zeros": np.array([0, 0], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    graph.node.extend([
        helper.make_node("Shape", ["sr_raw"], ["shape"]),
        helper.make_node("Slice", ["shape", "c2", "c4"], ["hw"]),
        helper.make_node("Sub", ["hw", "bsize"], ["free"]),
        helper.make_node("Div", ["free", "two"], ["before"]),
        helper.make_node("Sub", ["free", "before"], ["after"]),
        helper.make_node("Concat", ["zeros", "before", "zeros", "after"], ["pads"], axis=0),
        helper.make_node("Pad", ["blob", "pads"], ["blob_full"], mode="constant"),
        helper.make_node("Add", ["sr_raw", "blob_full"], [out]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def test_a_model_that_hallucinates_is_flagged_on_every_slice_by_consistency(tmp_path):
    src = copy_files(SIEMENS_DEV, tmp_path / "in") if SIEMENS_DEV else make_series(tmp_path / "in", 3)
    model = with_blob(WEIGHTS / "mdrn-x4.onnx", tmp_path / "blob.onnx")
    result = infer_without_torch(src, "--output", tmp_path / "out", "--model", model, "--backend", "onnxruntime")
    assert result["checks"]["n_flagged"] == result["n_slices"] > 0
    assert all(s["flagged"] and "consistency" in s["reason"] for s in result["slices"])
    honest = infer_without_torch(src, "--output", tmp_path / "out2", "--backend", "onnxruntime")
    assert honest["checks"]["n_flagged"] == 0


def test_pure_noise_is_flagged_by_uncertainty_and_a_ct_slice_by_its_modality(tmp_path):
    result = infer_without_torch(noise_series(tmp_path / "noise"), "--output", tmp_path / "out", "--checks", "full")
    assert result["checks"]["n_flagged"] == 2
    limit = result["checks"]["thresholds"]["uncertainty"]
    assert all("uncertainty" in s["reason"] and s["uncertainty"] > limit for s in result["slices"])
    real = infer_without_torch(make_series(tmp_path / "mr", 1), "--output", tmp_path / "out-mr", "--checks", "full")
    assert real["checks"]["n_flagged"] == 0 and real["slices"][0]["uncertainty"] < result["slices"][0]["uncertainty"] / 4
    ct = copy_files([get_testdata_file("CT_small.dcm")], tmp_path / "ct")
    result = infer_without_torch(ct, "--output", tmp_path / "out-ct")
    assert result["slices"][0]["flagged"] and "modality CT" in result["slices"][0]["reason"]


def test_a_ct_slice_without_a_modality_is_flagged_by_its_hounsfield_values(tmp_path):
    """A NIfTI or a header without Modality says nothing of CT; its values do (air at -1000 HU, never in magnitude
    MR). Real CT_small as NIfTI and as DICOM without Modality: flagged; real MR_small as NIfTI: not."""
    import nibabel as nib

    ct = read_volume([get_testdata_file("CT_small.dcm")]).data
    mr = read_volume([get_testdata_file("MR_small.dcm")]).data
    for name, data in {"ct": ct, "mr": mr}.items():
        nib.save(nib.Nifti1Image(np.repeat(np.moveaxis(data, 0, 2), 2, axis=2), np.eye(4)), tmp_path / f"{name}.nii.gz")
    before = digest([tmp_path / "ct.nii.gz"])
    result = infer_without_torch(tmp_path / "ct.nii.gz", "--output", tmp_path / "ct-out.nii.gz")
    assert digest([tmp_path / "ct.nii.gz"]) == before
    assert result["checks"]["n_flagged"] == 2
    assert all(s["reason"].startswith("37% of its values are negative (down to -896)") for s in result["slices"])
    assert infer_without_torch(tmp_path / "mr.nii.gz", "--output", tmp_path / "mr-out.nii.gz")["checks"]["n_flagged"] == 0
    folder = copy_files([get_testdata_file("CT_small.dcm")], tmp_path / "ct-dicom")
    ds = pydicom.dcmread(folder / "CT_small.dcm")
    del ds.Modality
    ds.save_as(folder / "CT_small.dcm")
    result = infer_without_torch(folder, "--output", tmp_path / "ct-dicom-out")
    assert result["slices"][0]["flagged"] and "modality" not in result["slices"][0]["reason"]
    assert "not a magnitude MR image" in result["slices"][0]["reason"]


def stored_lr_and_sr(src: Path, out: Path, info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """Input and written output, read back from disk, in the model's normalised units of the input."""
    def physical(folder: Path) -> np.ndarray:  # the reader skips our outputs: read them as a viewer would
        files = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
        return np.stack([d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                         for d in files]).astype(np.float32)

    lr, sr = read_volume(sorted(src.glob("*.dcm"))).data, physical(out)
    scaling = info.normalizer.fit(lr)
    return scaling.normalize(lr), scaling.normalize(sr)


def test_enforced_consistency_holds_for_the_written_files(tmp_path):
    info = model_info(WEIGHTS / "mdrn-x4.onnx")
    src = copy_files(SIEMENS_DEV[:2], tmp_path / "in") if SIEMENS_DEV else make_series(tmp_path / "in", 2)
    result = infer_without_torch(src, "--output", tmp_path / "out", "--consistency", "enforce",
                                 "--consistency-tolerance", "55")
    assert all(s["enforced"] and s["consistency_db"] >= 55 and not s["flagged"] for s in result["slices"])
    lr, sr = stored_lr_and_sr(src, tmp_path / "out", info)
    for k in range(len(lr)):  # stored as integers: within a dB of the tolerance
        assert consistency_db(sr[k], lr[k], forward_model(info)) > 54
    plain = infer_without_torch(src, "--output", tmp_path / "plain")
    assert all(e["consistency_db"] > p["consistency_db"] for e, p in zip(result["slices"], plain["slices"]))


def test_the_ensemble_is_written_with_its_spread_and_checks_off_reports_nothing(tmp_path):
    src = make_series(tmp_path / "in", 1)
    ens = infer_without_torch(src, "--output", tmp_path / "ens", "--ensemble", "--backend", "onnxruntime")
    plain = infer_without_torch(src, "--output", tmp_path / "plain", "--backend", "onnxruntime")
    assert ens["slices"][0]["uncertainty"] > 0 and plain["slices"][0]["uncertainty"] is None
    a = pydicom.dcmread(next((tmp_path / "ens").glob("*.dcm"))).pixel_array
    b = pydicom.dcmread(next((tmp_path / "plain").glob("*.dcm"))).pixel_array
    assert 0 < np.abs(a.astype(int) - b.astype(int)).mean() < 20
    off = infer_without_torch(src, "--output", tmp_path / "off", "--checks", "off", "--backend", "onnxruntime")
    assert off["slices"] == [] and off["checks"] == {}
    c = pydicom.dcmread(next((tmp_path / "off").glob("*.dcm")))
    assert np.array_equal(c.pixel_array, b)
    assert "mdrn-edge checks" not in str(c.get("ImageComments", "")) and (0x0077, 0x0010) not in c


# --- the derived DICOM ----------------------------------------------------------------------------------------------
def test_each_instance_carries_its_figures_and_the_ai_derived_marking(tmp_path):
    from mdrn_edge.data.writers import PRIVATE_CREATOR, PRIVATE_GROUP
    from mdrn_edge.fileio import file_sha256

    src = make_series(tmp_path / "in", 2)
    result = infer_without_torch(src, "--output", tmp_path / "out")
    for check, path in zip(result["slices"], sorted((tmp_path / "out").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        item = ds.ContributingEquipmentSequence[-1]
        assert item.Manufacturer == "mdrn-edge" and item.ManufacturerModelName == "mdrn-x4"
        assert file_sha256(WEIGHTS / "mdrn-x4.onnx") in item.ContributionDescription
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert ds.DerivationCodeSequence[0].CodeValue == "113085" and ds.BurnedInAnnotation == "NO"
        assert "SyntheticData" not in ds
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert float(block[0x10].value) == pytest.approx(check["consistency_db"], abs=1e-3)
        assert float(block[0x11].value) == pytest.approx(check["grid_energy"], abs=1e-4)
        assert block[0x13].value == "NO" and 0x12 not in block  # uncertainty not computed: absent, not 0
        assert "mdrn-edge checks: consistency" in ds.ImageComments


@pytest.mark.skipif(not DCIODVFY, reason="dciodvfy (Debian dicom3tools) is not installed; .ci/run installs it")
def test_a_flagged_series_and_its_uncertainty_series_pass_dciodvfy_with_no_error_their_input_lacks(tmp_path):
    def errors(path):
        res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        return {line.strip() for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")}

    src = noise_series(tmp_path / "in", 1)
    infer_without_torch(src, "--output", tmp_path / "out", "--checks", "full", "--uncertainty-series")
    out, spread = next((tmp_path / "out").glob("*.dcm")), next((tmp_path / "out" / "uncertainty").glob("*.dcm"))
    for path in (out, spread):
        assert pydicom.dcmread(path).private_block(0x0077, "MDRN-EDGE CHECKS 1")[0x13].value == "YES"
        assert not errors(path) - errors(next(src.glob("*.dcm")))


def test_the_ship_gate_refuses_a_model_whose_grid_energy_grew(monkeypatch):
    """training/ship.py: a model whose grid energy on the held-apart slices with LR noise grew over the model it
    replaces (or, replacing none, exceeds 4x white noise's share) is not shipped."""
    monkeypatch.syspath_prepend(str(ROOT / "training"))
    import ship

    def measured(grid: float) -> dict:
        return {"antialiased+noise": {"grid_energy": grid}}

    assert ship.grid_gate("mdrn-x4", measured(0.06), {"measured": measured(0.05)}) is None  # within 1.25x
    refused = ship.grid_gate("mdrn-x4", measured(0.07), {"measured": measured(0.05)})
    assert "grid energy 0.070" in refused and "1.25x the shipped model's 0.050" in refused and "not shipped" in refused
    assert ship.grid_gate("mdrn-x4", measured(0.2), None) is None  # 4 x 5.9 % = 0.234
    assert "4x white noise's share" in ship.grid_gate("mdrn-x4", measured(0.3), {"measured": {}})


def test_the_uncertainty_series_is_each_slices_spread_beside_its_sr_series_and_a_real_pacs_stores_both(tmp_path):
    """--uncertainty-series: a second derived series (in uncertainty/), one instance per slice, whose pixels are the
    self-ensemble's spread in the input's units; same geometry as the SR series, its own series; a real Orthanc
    stores both (dciodvfy: the test after next). NIfTI input is one line."""
    from helpers import start_orthanc
    from mdrn_edge.data.degradation import upscale
    from mdrn_edge.runtime import RuntimeConfig, create_runner
    from mdrn_edge.runtime.checks import kernel_of, self_ensemble, tissue_mask

    src = make_series(tmp_path / "in", 2)
    before = digest(all_files(src))
    server = start_orthanc(tmp_path / "orthanc")
    try:
        result = infer_without_torch(src, "--output", tmp_path / "out", "--uncertainty-series", "--backend",
                                     "onnxruntime", "--send", server.dest)
        stored = {sid: server.get(f"/series/{sid}") for sid in server.get("/series")}
    finally:
        server.stop()
    assert digest(all_files(src)) == before
    assert result["sent"] == 4 and result["series"][0]["uncertainty_files"] == 2
    maps = [pydicom.dcmread(f) for f in sorted((tmp_path / "out" / "uncertainty").glob("*.dcm"))]
    srs = [pydicom.dcmread(f) for f in sorted((tmp_path / "out").glob("*.dcm"))]
    assert len(maps) == len(srs) == 2
    info = model_info(WEIGHTS / "mdrn-x4.onnx")
    lr = read_volume(sorted(src.glob("*.dcm"))).data
    scaling = info.normalizer.fit(lr)
    x = scaling.normalize(lr)
    with create_runner(WEIGHTS / "mdrn-x4.onnx", RuntimeConfig(backend="onnxruntime")) as runner:
        def sr_of(one: np.ndarray) -> np.ndarray:
            return runner.infer(one[None, None])[0, 0]

        spread = self_ensemble(sr_of, x[0], sr_of(x[0]))[1]
    for k, (m, s) in enumerate(zip(maps, srs)):
        for keyword in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
                        "FrameOfReferenceUID", "StudyInstanceUID"):
            assert m.get(keyword) == s.get(keyword), keyword
        assert m.SeriesInstanceUID != s.SeriesInstanceUID and m.SeriesNumber != s.SeriesNumber
        assert m.SeriesDescription.endswith("UNCERTAINTY") and "standard deviation" in m.DerivationDescription
        assert m.ContributingEquipmentSequence[-1].Manufacturer == "mdrn-edge" and m.BurnedInAnnotation == "NO"
        values = m.pixel_array * float(m.RescaleSlope) / float(scaling.scale)  # the spread, normalised again
        tissue = tissue_mask(upscale(x[k], 4, kernel_of(info)))
        assert values[tissue].mean() == pytest.approx(result["slices"][k]["uncertainty"], rel=0.01)
    step = float(maps[0].RescaleSlope) / float(scaling.scale)  # the map's quantisation, normalised
    got = maps[0].pixel_array * float(maps[0].RescaleSlope) / float(scaling.scale)
    assert np.abs(got - spread).max() <= step / 2 + 1e-5 and spread.max() > 20 * step
    assert sorted(len(s["Instances"]) for s in stored.values()) == [2, 2]
    assert {s["MainDicomTags"]["SeriesInstanceUID"] for s in stored.values()} == {maps[0].SeriesInstanceUID,
                                                                                  srs[0].SeriesInstanceUID}
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.moveaxis(lr, 0, 2), np.eye(4)), tmp_path / "mr.nii.gz")
    res = infer(tmp_path / "mr.nii.gz", "--output", tmp_path / "mr-out.nii.gz", "--uncertainty-series")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "--uncertainty-series writes a DICOM series" in lines[0]
    assert not (tmp_path / "mr-out.nii.gz").exists()
