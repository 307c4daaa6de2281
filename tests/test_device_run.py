"""training/device_run.py (issue 23): the data pack is written here and the device run's code path passes on the
CPU (--cpu-smoke) with pydicom and nibabel unimportable, as on the device image, writing what a GPU run writes."""

import json
import os
import subprocess
import sys

import pytest

from corpus import ROOT

SCRIPT = ROOT / "training" / "device_run.py"
SHARED_DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED_DATA / "siemens-flash-t1").is_dir(),
                                reason=f"{SHARED_DATA} (three scanners' MRI) is absent: nothing to pack")


def test_pack_then_cpu_smoke_writes_the_device_files_without_pydicom(tmp_path):
    pack = tmp_path / "pack" / "mri.npz"
    res = subprocess.run([sys.executable, str(SCRIPT), "--pack", "--pack-file", str(pack)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert pack.stat().st_size < 40e6, pack.stat().st_size  # travels with the working tree (64 MiB in all)

    blocked = tmp_path / "blocked"  # what the device image lacks: importing it fails, as it would there
    for name in ("pydicom", "nibabel"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the device image')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--pack-file", str(pack)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["device_run.json", *[f"mdrn-x{s}-device.{k}" for s in (2, 4, 8) for k in ("log.jsonl", "pt")]]
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files)
    summary = json.loads((out / "device_run.json").read_text())
    assert [r["scale"] for r in summary["runs"]] == [2, 4, 8] and all(r["iterations"] == 2 for r in summary["runs"])
    assert {row["model"] for row in summary["cuda_bench"]} == {"shipped mdrn-x4", "device mdrn-x4"}
    assert all("latency_ms" in row for row in summary["cuda_bench"])

    from mdrn_edge.models.checkpoint import load_model

    for scale in (2, 4, 8):
        model, ckpt, info = load_model(out / f"mdrn-x{scale}-device.pt")  # what training/ship.py reads
        assert info.scale == scale and ckpt["train_config"]["init_from"] == f"mdrn_edge/weights/mdrn-x{scale}.pt"
        assert ckpt["train_config"]["data"] == ["vs-seg-001-t1", "philips-mprage-t1", "siemens-flash-t1"]
        log = [json.loads(line) for line in (out / f"mdrn-x{scale}-device.log.jsonl").read_text().splitlines()]
        assert log[0]["iteration"] == 0 and log[-1]["iteration"] == 2 and "gain_db" in log[-1]


def test_the_device_run_without_a_pack_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path / "out"), "--pack-file",
                          str(tmp_path / "none.npz")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "--pack" in res.stderr
    assert not (tmp_path / "out").exists()
