"""mdrn-node against real Orthanc processes on loopback: A receives from "the scanner" by C-STORE, B is "the PACS"
declared in A's modalities. Nothing is mocked: Orthanc decides when a series is stable and runs the store jobs."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from corpus import SHARED_SERIES, make_series, mr_small, noise_series, shared_files
from helpers import OrthancServer, free_port, start_orthanc
from mdrn_edge.cli.node import command as node_cli
from mdrn_edge.runtime.pacs import Destination, send_files

DCIODVFY = shutil.which("dciodvfy")


def scanner_series(folder: Path) -> list[Path]:
    """3 real VS-SEG slices where ../shared is present, else 3 slices of the bundled real MR slice."""
    if SHARED_SERIES.is_dir():
        return shared_files(60, 62)
    return sorted(make_series(folder, 3).glob("*.dcm"))


def copies(files, folder: Path, edit=None) -> list[Path]:
    """The files as a new series (new UIDs), optionally edited."""
    folder.mkdir(parents=True)
    uid, out = generate_uid(), []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if edit:
            edit(ds, k)
        out.append(folder / f"{k}.dcm")
        ds.save_as(out[-1])
    return out


def wait_stable(server: OrthancServer, n: int, timeout: float = 30) -> None:
    """Until Orthanc has declared ``n`` series stable (StableAge 1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        changes = server.get("/changes?limit=1000")["Changes"]
        if sum(c["ChangeType"] == "StableSeries" for c in changes) >= n:
            return
        time.sleep(0.5)
    pytest.fail(f"Orthanc {server.aet} did not declare {n} series stable")


def node(server, state, *extra, from_start=True):
    """One ``--once`` run; by default over Orthanc's whole feed (the series were sent before the node started)."""
    res = CliRunner().invoke(node_cli, ["--orthanc", server.url, "--state", str(state), "--once", "--json",
                                        *(["--from-start"] if from_start else []), *extra])
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return res, events


def delivered_once(scanner, pacs, state, *extra) -> None:
    """A ``--once`` run with the PACS up forwards the series, and the PACS holds it once."""
    res, events = node(scanner, state, "--forward", "PACS", "--forward-wait", "30", *extra)
    assert res.exit_code == 0, res.output
    assert any(e["outcome"] == "forwarded" for e in events), events
    assert len(pacs.get("/series")) == 1


def derived_series(server):
    return [s for s in (server.get(f"/series/{sid}") for sid in server.get("/series"))
            if s["MainDicomTags"].get("SeriesDescription", "").endswith("SR x4 MDRN")]


def dciodvfy_errors(data: bytes, tmp: Path) -> set[str]:
    path = tmp / f"check-{len(list(tmp.glob('check-*')))}.dcm"
    path.write_bytes(data)
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return {line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")}


@pytest.fixture
def pacs_and_scanner(tmp_path):
    pacs = start_orthanc(tmp_path / "pacs", "PACS")
    scanner = start_orthanc(tmp_path / "a", "ORTHANC", {"PACS": ["PACS", "127.0.0.1", pacs.dicom_port]})
    yield pacs, scanner
    scanner.stop()
    pacs.stop()


def test_node_super_resolves_forwards_and_never_twice(tmp_path, pacs_and_scanner):
    pacs, scanner = pacs_and_scanner
    mr = scanner_series(tmp_path / "mr")
    ct = copies([get_testdata_file("CT_small.dcm")], tmp_path / "ct")
    jpeg = copies([get_testdata_file("MR_small_jpeg_ls_lossless.dcm")], tmp_path / "jpeg")  # MR no decoder reads here
    ours = tmp_path / "ours"
    assert subprocess.run([sys.executable, "-m", "mdrn_edge.cli.infer", str(mr_small()), "--output", str(ours),
                           "--no-progress"], capture_output=True).returncode == 0
    for files in (mr, ct, jpeg, sorted(ours.glob("*.dcm"))):
        send_files(list(files), Destination.parse(scanner.dest))
    wait_stable(scanner, 4)
    res, events = node(scanner, tmp_path / "state", "--forward", "PACS")
    assert res.exit_code == 0, res.output
    forwarding = [e for e in events if e["outcome"] == "forwarding"]
    assert len(forwarding) == 1 and forwarding[0]["slices"] == 3 and forwarding[0]["model"] == "mdrn-x4"
    assert forwarding[0]["checks"]["n_slices"] == 3 and forwarding[0]["checks"]["n_flagged"] == 0
    reasons = [e.get("reason", "") for e in events if e["outcome"] == "skipped"]
    assert any("modality CT" in r for r in reasons) and any("derived by mdrn-edge" in r for r in reasons)
    failed = [e for e in events if e["outcome"] == "failed"]
    assert len(failed) == 1 and "cannot decode pixel data" in failed[0]["reason"]
    assert any(e["outcome"] == "forwarded" for e in events)

    mr_desc = pydicom.dcmread(mr[0]).SeriesDescription
    made = [s for s in derived_series(scanner) if s["MainDicomTags"]["SeriesDescription"].startswith(mr_desc[:20])]
    assert len(made) == 1 and len(made[0]["Instances"]) == 3
    uid = made[0]["MainDicomTags"]["SeriesInstanceUID"]
    received = [pacs.get(f"/series/{sid}") for sid in pacs.get("/series")]
    assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in received] == [uid] and len(received[0]["Instances"]) == 3
    tags = pacs.get(f"/instances/{received[0]['Instances'][0]}/simplified-tags")
    assert int(tags["Rows"]) == 4 * int(pydicom.dcmread(mr[0]).Rows) and uid != pydicom.dcmread(mr[0]).SeriesInstanceUID
    if DCIODVFY:
        import urllib.request

        with urllib.request.urlopen(f"{pacs.url}/instances/{received[0]['Instances'][0]}/file") as r:
            assert dciodvfy_errors(r.read(), tmp_path) <= dciodvfy_errors(mr[0].read_bytes(), tmp_path)

    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    assert {json.loads(line)["outcome"] for line in audit} >= {"forwarding", "forwarded", "skipped", "failed"}
    assert all("model" in json.loads(line) for line in audit if json.loads(line)["outcome"] == "forwarding")

    # run again: the derived series the node uploaded is seen (skipped as ours), nothing processed or forwarded twice
    res, events = node(scanner, tmp_path / "state", "--forward", "PACS")
    assert res.exit_code == 0, res.output
    assert all(e["outcome"] == "skipped" for e in events)
    assert len(derived_series(scanner)) == 2 and len(pacs.get("/series")) == 1  # ours from before + the node's


def test_pacs_down_the_forward_is_retried_and_recorded(tmp_path):
    pacs = OrthancServer(tmp_path / "pacs", "PACS", free_port(), free_port(), {})  # declared, not started yet
    scanner = start_orthanc(tmp_path / "a", "ORTHANC", {"PACS": ["PACS", "127.0.0.1", pacs.dicom_port]})
    try:
        send_files(copies([mr_small()], tmp_path / "mr"), Destination.parse(scanner.dest))
        wait_stable(scanner, 1)
        res, events = node(scanner, tmp_path / "state", "--forward", "PACS", "--forward-wait", "8")
        assert res.exit_code == 0, res.output  # the node does not crash
        retried = [e for e in events if e["outcome"] == "forward_retried"]
        assert retried and "the PACS PACS did not take the series" in retried[0]["reason"]
        row = sqlite3.connect(tmp_path / "state" / "node.sqlite").execute(
            "SELECT state, attempts, reason FROM series WHERE state = 'forwarding'").fetchone()
        assert row and row[1] >= 1 and "did not take" in row[2]

        pacs.start()  # the PACS is back: the next run resubmits Orthanc's job
        time.sleep(2)
        delivered_once(scanner, pacs, tmp_path / "state")
    finally:
        scanner.stop()
        pacs.stop()


def test_a_node_killed_mid_series_finishes_it_once_on_restart(tmp_path, pacs_and_scanner):
    pacs, scanner = pacs_and_scanner
    big = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm")).pixel_array

    def enlarge(ds, k):  # 1024 x 1024 real slices: seconds of inference each at x2, time to be killed
        ds.PixelData = np.ascontiguousarray(np.roll(big, k, axis=0)).tobytes()
        ds.Rows = ds.Columns = 1024
        ds.SeriesDescription = "big"

    send_files(copies([mr_small()] * 2, tmp_path / "mr", enlarge), Destination.parse(scanner.dest))
    wait_stable(scanner, 1)
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "mdrn_edge.cli.node", "--orthanc", scanner.url, "--state", str(state), "--once",
           "--scale", "2", "--forward", "PACS", "--from-start"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db = state / "node.sqlite"
        if db.exists() and sqlite3.connect(db).execute("SELECT 1 FROM series WHERE state = 'processing'").fetchone():
            break
        time.sleep(0.1)
    time.sleep(1.5)  # into the download or the inference
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = [r[0] for r in sqlite3.connect(state / "node.sqlite").execute("SELECT state FROM series")]
    assert states == ["processing"]  # killed mid-series, really
    res = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    made = [s for s in (scanner.get(f"/series/{sid}") for sid in scanner.get("/series"))
            if s["MainDicomTags"].get("SeriesDescription", "").endswith("SR x2 MDRN")]
    assert len(made) == 1 and len(made[0]["Instances"]) == 2
    assert len(pacs.get("/series")) == 1 and len(pacs.get(f"/series/{pacs.get('/series')[0]}")["Instances"]) == 2
    assert not any((state / "work").iterdir())  # nothing left behind


@pytest.mark.parametrize("rules,expected", [('{"colour": 1}', "unknown rule"), ('{"max_matrix": -1}', "positive"),
                                            ("[1]", "JSON object"), ('{"series_description": "("}', "regular expression")])
def test_bad_rules_are_one_line(tmp_path, rules, expected):
    (tmp_path / "rules.json").write_text(rules)
    res = CliRunner().invoke(node_cli, ["--orthanc", "http://127.0.0.1:9", "--rules", str(tmp_path / "rules.json"),
                                        "--state", str(tmp_path / "state"), "--once"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and expected in lines[0], res.output


@pytest.mark.parametrize("args,expected", [(["--precision", "int8"], "INT8 Q/DQ model"),
                                           (["--backend", "tensorrt"], "runs engines")])
def test_a_runtime_that_cannot_run_is_one_line_before_orthanc_is_asked(tmp_path, args, expected):
    res = CliRunner().invoke(node_cli, ["--orthanc", f"http://127.0.0.1:{free_port()}", "--state", str(tmp_path / "s"),
                                        "--once", *args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and expected in lines[0], res.output
    assert not (tmp_path / "s").exists()


def test_an_unreachable_orthanc_is_one_line(tmp_path):
    res = CliRunner().invoke(node_cli, ["--orthanc", f"http://127.0.0.1:{free_port()}", "--state", str(tmp_path / "s"),
                                        "--once"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 8 and len(lines) == 1 and "check that Orthanc runs" in lines[0], res.output


def test_an_unknown_forward_modality_and_a_shared_state_folder_are_one_line(tmp_path):
    server = start_orthanc(tmp_path / "a")
    try:
        res = CliRunner().invoke(node_cli, ["--orthanc", server.url, "--forward", "NOPE", "--state", str(tmp_path / "s"),
                                            "--once"])
        assert res.exit_code == 2 and "neither a modality nor a DICOMweb server" in res.output
        from mdrn_edge.node import NodeState

        held = NodeState(tmp_path / "s")
        try:
            res = CliRunner().invoke(node_cli, ["--orthanc", server.url, "--state", str(tmp_path / "s"), "--once"])
            assert res.exit_code == 2 and "another mdrn-node" in res.output
        finally:
            held.close()
    finally:
        server.stop()


# --- as an operator meets it (#26) -----------------------------------------------------------------------------------

def test_a_pacs_down_past_the_retry_window_is_forward_failed_then_delivered_by_retry_failed(tmp_path):
    pacs = OrthancServer(tmp_path / "pacs", "PACS", free_port(), free_port(), {})  # declared, down
    scanner = start_orthanc(tmp_path / "a", "ORTHANC", {"PACS": ["PACS", "127.0.0.1", pacs.dicom_port]})
    try:
        send_files(copies([mr_small()], tmp_path / "mr"), Destination.parse(scanner.dest))
        wait_stable(scanner, 1)
        res, events = node(scanner, tmp_path / "state", "--forward", "PACS", "--forward-wait", "20",
                           "--retry-window", "0.001")  # 3.6 s: a maintenance window of hours, shortened
        assert res.exit_code == 0, res.output
        failed = [e for e in events if e["outcome"] == "forward_failed"]
        assert failed and "--retry-failed" in failed[0]["reason"] and "description" in failed[0]
        res, events = node(scanner, tmp_path / "state", "--forward", "PACS", "--forward-wait", "5")
        assert not any(e["outcome"] == "forwarded" for e in events)  # stays failed until asked
        pacs.start()
        delivered_once(scanner, pacs, tmp_path / "state", "--retry-failed")
    finally:
        scanner.stop()
        pacs.stop()


def test_a_node_started_before_orthanc_waits_for_it(tmp_path):
    scanner = OrthancServer(tmp_path / "a", "ORTHANC", free_port(), free_port(), {})
    if not Path("/usr/sbin/Orthanc").exists():
        pytest.skip("/usr/sbin/Orthanc (Debian orthanc) is not installed; .ci/run installs it")
    proc = subprocess.Popen([sys.executable, "-m", "mdrn_edge.cli.node", "--orthanc", scanner.url, "--state",
                             str(tmp_path / "state"), "--interval", "0.5", "--json", "--from-start"],  # no race with
                            stdout=subprocess.PIPE,  # the series sent just after Orthanc is up
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None  # still there, waiting, not exit 8
        scanner.start()
        send_files(copies([mr_small()], tmp_path / "mr"), Destination.parse(scanner.dest))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not derived_series(scanner):
            time.sleep(0.5)
        assert derived_series(scanner), "the node did not process the series sent once Orthanc was up"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        scanner.stop()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    outcomes = [e.get("outcome") for e in events]
    assert outcomes[0] == "waiting" and outcomes.count("waiting") == 1, outcomes  # said once, not every poll
    assert events[-1] == {"error": "interrupted; nothing partial was left under the output's name", "exit_code": 130}
    assert proc.returncode == 130 and err.strip().startswith("Stopped:")


def test_a_new_state_folder_neither_replays_the_archive_nor_duplicates_a_derived_series(tmp_path, pacs_and_scanner):
    pacs, scanner = pacs_and_scanner
    send_files(copies([mr_small()] * 2, tmp_path / "first"), Destination.parse(scanner.dest))
    wait_stable(scanner, 1)
    res, events = node(scanner, tmp_path / "state1", "--forward", "PACS", "--forward-wait", "30")
    assert any(e["outcome"] == "forwarded" for e in events), events
    assert len(pacs.get("/series")) == 1 and len(derived_series(scanner)) == 1
    wait_stable(scanner, 2)  # the derived series too, so that --once has nothing arriving to report

    res, events = node(scanner, tmp_path / "lost", "--forward", "PACS", from_start=False)  # the state was lost
    assert res.exit_code == 0 and [e["outcome"] for e in events] == ["starting"], events
    res, events = node(scanner, tmp_path / "other", "--forward", "PACS", "--forward-wait", "5")  # asked for history
    held = [e for e in events if e["outcome"] == "skipped" and "already holds its derived series" in e.get("reason", "")]
    assert len(held) == 1, events
    assert len(pacs.get("/series")) == 1 and len(derived_series(scanner)) == 1  # no duplicate anywhere

    send_files(copies([mr_small()], tmp_path / "later"), Destination.parse(scanner.dest))  # new after the start
    wait_stable(scanner, 3)  # the first series, its derived series, the new one
    res, events = node(scanner, tmp_path / "lost", "--forward", "PACS", "--forward-wait", "30", from_start=False)
    assert any(e["outcome"] == "forwarded" for e in events), events
    assert len(pacs.get("/series")) == 2


def test_once_before_a_series_is_stable_says_so(tmp_path):
    scanner = start_orthanc(tmp_path / "a", "ORTHANC")
    try:
        scanner.stop()
        scanner.config = {"StableAge": 60}
        scanner.start()
        send_files(copies([mr_small()], tmp_path / "mr"), Destination.parse(scanner.dest))
        res, events = node(scanner, tmp_path / "state")
        assert res.exit_code == 0 and [e["outcome"] for e in events] == ["not yet stable"], events
        assert "1 series still arriving" in events[0]["reason"]
    finally:
        scanner.stop()


def test_a_flagged_series_is_held_in_orthanc_until_released_and_the_audit_says_why(tmp_path, pacs_and_scanner):
    pacs, scanner = pacs_and_scanner
    send_files(sorted(noise_series(tmp_path / "noise", 2).glob("*.dcm")), Destination.parse(scanner.dest))
    wait_stable(scanner, 1)
    res, events = node(scanner, tmp_path / "state", "--forward", "PACS", "--checks", "full")
    assert res.exit_code == 0, res.output
    held = [e for e in events if e["outcome"] == "held"]
    assert len(held) == 1 and held[0]["checks"]["n_flagged"] == 2, events
    assert "uncertainty" in held[0]["reason"] and "--release-held" in held[0]["reason"]
    assert pacs.get("/series") == [] and len(derived_series(scanner)) == 1  # in Orthanc for review, not in the PACS
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert any(a["outcome"] == "held" and a["checks"]["flagged_slices"] == [0, 1] for a in audit)

    res, events = node(scanner, tmp_path / "state", "--forward", "PACS", "--forward-wait", "30", "--release-held")
    assert res.exit_code == 0, res.output
    assert any(e["outcome"] == "forwarded" for e in events), events
    assert len(pacs.get("/series")) == 1


def test_rules_may_forward_a_flagged_series_with_its_flags(tmp_path, pacs_and_scanner):
    pacs, scanner = pacs_and_scanner
    send_files(sorted(noise_series(tmp_path / "noise", 1).glob("*.dcm")), Destination.parse(scanner.dest))
    wait_stable(scanner, 1)
    rules = tmp_path / "rules.json"
    rules.write_text('{"flagged": "forward"}')
    delivered_once(scanner, pacs, tmp_path / "state", "--checks", "full", "--rules", str(rules))
    bad = tmp_path / "bad.json"
    bad.write_text('{"flagged": "maybe"}')
    res, _ = node(scanner, tmp_path / "state2", "--rules", str(bad))
    assert res.exit_code == 2 and "flagged must be one of" in res.output
