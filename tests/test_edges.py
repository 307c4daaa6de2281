"""Issue 11's classes of tricky input, each asserting the exit code, one line, inputs byte-identical and nothing
under OUT: output paths, races, signals, reading real archives, arguments, JSON, PACS failures."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from corpus import all_files, digest, make_series, mr_small
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.cli.main import main as mdrn_cli
from mdrn_edge.errors import OutputConflict
from mdrn_edge.fileio import OUTPUT_MARKER, publish_dir


def infer(*args):
    return CliRunner().invoke(infer_cli, [str(a) for a in args])


def one_line(res, code=None):
    lines = [line for line in res.output.splitlines() if line.strip() and not line.startswith("model ")]
    ok = len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output
    return ok and (res.exit_code == code if code is not None else res.exit_code != 0)


# --- output paths ------------------------------------------------------------------------------------------------

def test_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path):
    src = make_series(tmp_path / "study" / "series", 2)
    before = digest(all_files(tmp_path / "study"))
    res = infer(src, "--output", src, "--overwrite")
    assert one_line(res, 2) and "is the input" in res.output
    assert digest(all_files(tmp_path / "study")) == before


def test_output_above_the_input_is_refused_and_the_study_survives(tmp_path):
    src = make_series(tmp_path / "study" / "series", 2)
    make_series(tmp_path / "study" / "other", 1)
    (tmp_path / "study" / "report.txt").write_text("radiology report")
    before = digest(all_files(tmp_path / "study"))
    res = infer(src, "--output", tmp_path / "study", "--overwrite")
    assert one_line(res, 2) and "contains the input" in res.output
    assert digest(all_files(tmp_path / "study")) == before


def test_an_output_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    res = infer(mr_small(), "--output", tmp_path / "link", "--overwrite")
    assert one_line(res, 2) and "symbolic link" in res.output and not list((tmp_path / "elsewhere").iterdir())


def test_nifti_output_name_for_dicom_input_is_refused(tmp_path):
    res = infer(mr_small(), "--output", tmp_path / "x.nii.gz")
    assert one_line(res, 2) and "NIfTI file name" in res.output and not (tmp_path / "x.nii.gz").exists()


# --- races at publish time ----------------------------------------------------------------------------------------

def _stage(tmp_path: Path) -> Path:
    stage = tmp_path / ".stage"
    stage.mkdir()
    (stage / "0001.dcm").write_bytes(b"new")
    return stage


def test_a_folder_the_user_creates_during_the_run_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user's work")
    for overwrite in (False, True):
        with pytest.raises(OutputConflict, match="appeared while this run was working"):
            publish_dir(_stage(tmp_path), out, overwrite, {})
        shutil.rmtree(tmp_path / ".stage")
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_a_concurrent_runs_result_is_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "out"
    publish_dir(_stage(tmp_path), out, False, {"run": 1})  # the first run publishes
    with pytest.raises(OutputConflict):
        publish_dir(_stage(tmp_path), out, False, {"run": 2})  # the second finds it there at publish time
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"run": 1}


def test_overwrite_replaces_an_earlier_result_atomically(tmp_path):
    out = tmp_path / "out"
    publish_dir(_stage(tmp_path), out, False, {"run": 1})
    publish_dir(_stage(tmp_path), out, True, {"run": 2})
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stage or set-aside copy left


# --- signals ----------------------------------------------------------------------------------------------------------

def test_sigterm_stops_mdrn_infer_cleanly_with_nothing_partial(tmp_path):
    src = make_series(tmp_path / "in", 40)
    before = digest(all_files(src))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mdrn_edge.cli.infer", str(src), "--output", str(out), "--tile", "24",
                             "--overlap", "4", "--no-progress", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.*")):
        time.sleep(0.05)  # wait until it is writing into its stage folder
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*")) and digest(all_files(src)) == before


# --- reading real archives --------------------------------------------------------------------------------------------

def test_text_files_and_earlier_outputs_in_a_series_folder_are_skipped_with_one_line(tmp_path):
    src = make_series(tmp_path / "in", 2)
    (src / "README").write_text("scanner export notes")
    (src / "LICENSE").write_text("CC BY 4.0")
    res = infer(src, "--output", src / "sr-earlier")  # writing inside the input folder is refused...
    assert one_line(res, 2) and "lies inside the input folder" in res.output and not (src / "sr-earlier").exists()
    assert infer(src, "--output", tmp_path / "earlier").exit_code == 0  # ...but an earlier result copied in is skipped
    shutil.move(tmp_path / "earlier", src / "sr-earlier")
    before = digest(all_files(src))
    res = infer(src, "--output", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_slices"] == 2  # neither the text nor the old result
    assert "skipped" in res.output and digest(all_files(src)) == before


def test_a_duplicated_instance_is_refused_before_any_work(tmp_path):
    src = make_series(tmp_path / "in", 2)
    shutil.copy(sorted(src.glob("*.dcm"))[0], src / "copy.dcm")
    before = digest(all_files(src))
    res = infer(src, "--output", tmp_path / "out")
    assert one_line(res, 2) and "duplicates instance" in res.output
    assert not (tmp_path / "out").exists() and digest(all_files(src)) == before


# --- arguments ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--batch", "-1"], "--batch"), (["--batch", "0"], "--batch"), (["--overlap", "-1", "--tile", "64"], "--overlap"),
    (["--threads", "100000"], "--threads"), (["--tile", "0"], "--tile"),
])
def test_impossible_arguments_are_refused_before_any_work(tmp_path, args, expected):
    res = infer(mr_small(), "--output", tmp_path / "out", *args)
    assert one_line(res, 2) and expected in res.output and not (tmp_path / "out").exists()


def test_export_refuses_an_opset_it_cannot_use(tmp_path):
    from mdrn_edge.cli.export import command as export_cli

    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(tmp_path / "o"), "--opset", "5"])
    assert one_line(res, 2) and "--opset" in res.output and not (tmp_path / "o").exists()


# --- JSON and evaluation ------------------------------------------------------------------------------------------------

def test_json_failure_prints_a_json_error(tmp_path):
    res = CliRunner().invoke(infer_cli, [str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--json"])
    payload = json.loads(res.stdout)
    assert res.exit_code == 2 and payload["exit_code"] == 2 and "no such file" in payload["error"]


def test_eval_drops_blank_slices_and_prints_strict_json(tmp_path):
    import nibabel as nib

    vol = pydicom.dcmread(mr_small()).pixel_array.astype(np.float32)
    data = np.stack([vol.T, np.zeros_like(vol.T), vol.T[::-1]], axis=2)  # a brain-extracted volume's blank slice
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    res = CliRunner().invoke(mdrn_cli, ["eval", str(tmp_path / "v.nii.gz"), "--scale", "4", "--model", "bicubic",
                                        "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert out["n_slices"] == 2 and out["n_dropped_blank"] == 1 and out["gain_db"] == 0


# --- PACS ----------------------------------------------------------------------------------------------------------------

def test_a_host_that_does_not_resolve_is_one_line_and_keeps_nothing(tmp_path):
    res = infer(mr_small(), "--output", tmp_path / "out", "--send", "PACS@no-such-host.invalid:104")
    assert one_line(res, 8) and "does not resolve" in res.output and not (tmp_path / "out").exists()


def test_mdrn_send_refuses_a_dead_pacs_and_says_what_to_do(tmp_path):
    assert infer(mr_small(), "--output", tmp_path / "out").exit_code == 0
    before = digest(all_files(tmp_path / "out"))
    res = CliRunner().invoke(mdrn_cli, ["send", str(tmp_path / "out"), "--to", "PACS@127.0.0.1:9"])
    assert one_line(res, 8) and "unreachable" in res.output
    assert digest(all_files(tmp_path / "out")) == before


def test_mdrn_export_never_overwrites_silently(tmp_path):
    from mdrn_edge.cli.export import command as export_cli

    out = tmp_path / "o"
    assert CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(out), "--no-engine"]).exit_code == 0
    first = digest(all_files(out))
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(out), "--no-engine"])
    assert one_line(res, 2) and "already exists" in res.output and digest(all_files(out)) == first
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(out), "--no-engine", "--overwrite"])
    assert res.exit_code == 0, res.output  # an earlier export of ours: replaced
    (out / "mdrn-x4.onnx").write_bytes(b"the user's own file")
    res = CliRunner().invoke(export_cli, ["mdrn-x4", "--output", str(out), "--no-engine", "--overwrite"])
    assert one_line(res, 2) and "not written by mdrn-export" in res.output
    assert (out / "mdrn-x4.onnx").read_bytes() == b"the user's own file"


def test_a_damaged_slice_inside_a_series_folder_is_an_error_not_a_skipped_file(tmp_path):
    """Skipping a truncated image would silently drop a slice from the series."""
    src = make_series(tmp_path / "in", 3)
    victim = sorted(src.glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:-1000])  # cut inside the pixel data
    before = digest(all_files(src))
    res = infer(src, "--output", tmp_path / "out")
    assert one_line(res, 2) and victim.name in res.output and not (tmp_path / "out").exists()
    assert digest(all_files(src)) == before
