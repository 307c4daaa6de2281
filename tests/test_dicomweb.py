"""DICOMweb in and out (issue #28) against real Orthancs with Debian's DICOMweb plugin on loopback: WADO-RS input and
STOW-RS output give the series a folder and C-STORE give; refusals, outages, a server that never answers and a
partial STOW failure are one line or the retried success, with the output kept and the credentials never shown.

The failure cases put a small HTTP relay (this file's :class:`Relay`) between mdrn-infer and a real Orthanc: it
answers what a misbehaving server would (401, 413, 503, silence, a STOW reply failing one instance) and passes
everything else through to Orthanc, which stores the instances for real."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from corpus import make_series, real_series
from helpers import free_port, one_error_line, start_dicomweb_orthanc, start_orthanc
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.cli.main import main as mdrn_cli
from mdrn_edge.runtime.dicomweb import AUTH_ENV, WebResource, stow_outcomes
from mdrn_edge.runtime.pacs import Destination, send_files

TOKEN = "s3cret-token-never-shown"


def infer(*args, env=None):
    return CliRunner().invoke(infer_cli, [*map(str, args), "--no-progress", "--backend", "onnxruntime"], env=env)


def uids(folder: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def files_by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in folder.rglob("*.dcm"))}


@pytest.fixture
def web(tmp_path):
    server = start_dicomweb_orthanc(tmp_path / "web", "WEB")
    yield server
    server.stop()


class Relay:
    """An HTTP server on loopback in front of a real Orthanc: ``behave(handler) -> True`` when it answered itself."""

    def __init__(self, target: str, behave) -> None:
        self.target, self.behave, self.requests = target, behave, []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                relay.requests.append((self.command, self.path, dict(self.headers), len(body)))
                if relay.behave(self, body):
                    return
                status, headers, data = relay.forward(self.command, self.path, self.headers, body)
                self.reply(status, data, headers.get("Content-Type", "application/octet-stream"))

            def reply(self, status: int, data: bytes = b"", kind: str = "text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/dicom-web"

    def forward(self, method, path, headers, body):
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        request = urllib.request.Request(self.target + path, data=body or None, method=method, headers=keep)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay(web):
    made = []

    def make(behave):
        made.append(Relay(web.url, behave))
        return made[-1]

    yield make
    for r in made:
        r.close()


# --- the happy paths, against the real server -----------------------------------------------------------------------
def test_wado_rs_in_and_stow_rs_out_match_a_folder_in_and_c_store_out(tmp_path, web):
    src = real_series(tmp_path / "scanner")
    dimse = start_orthanc(tmp_path / "dimse", "DIMSE")
    try:
        send_files(sorted(src.glob("*.dcm")), Destination.parse(web.dest))  # the scanner's series in the archive
        res = infer(src, "--output", tmp_path / "by-folder", "--send", dimse.dest, "--json")
        assert res.exit_code == 0, res.output
        study, series = uids(src)
        url = f"{web.url}/dicom-web/studies/{study}/series/{series}"
        res = infer(url, "--output", tmp_path / "by-web", "--send", f"{web.url}/dicom-web", "--json")
        assert res.exit_code == 0, res.output
        result = json.loads(res.stdout)
        assert result["send"]["protocol"] == "STOW-RS" and result["sent"] == 3
        assert all(i["status"] == "stored" for i in result["send"]["instances"])
        a, b = files_by_uid(tmp_path / "by-folder"), files_by_uid(tmp_path / "by-web")
        assert set(a) == set(b) and len(a) == 3  # the same UIDs policy: the same derived UIDs
        for uid in a:
            assert np.array_equal(a[uid].pixel_array, b[uid].pixel_array)
            assert a[uid].SeriesInstanceUID == b[uid].SeriesInstanceUID
        # read back by QIDO-RS: the same UIDs and values as written, and as the C-STORE copy holds
        from dicomweb_client.api import DICOMwebClient

        qido = DICOMwebClient(f"{web.url}/dicom-web")
        derived = next(iter(a.values()))
        found = qido.search_for_instances(search_filters={"SeriesInstanceUID": str(derived.SeriesInstanceUID)})
        assert {f["00080018"]["Value"][0] for f in found} == set(a)
        assert all(f["00200013"]["Value"][0] == int(a[f["00080018"]["Value"][0]].InstanceNumber) for f in found)
        assert len(dimse.get("/instances")) == 3
        assert not list(tmp_path.glob(".mdrn-wado-*")), "the WADO-RS download is removed"
    finally:
        dimse.stop()


def test_mdrn_send_stores_an_output_by_stow_with_a_bearer_token_from_the_environment(tmp_path, relay):
    def needs_token(handler, body):
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            handler.reply(401)
            return True
        return False

    server = relay(needs_token)
    out = tmp_path / "out"
    assert infer(make_series(tmp_path / "in", 2), "--output", out).exit_code == 0
    res = CliRunner().invoke(mdrn_cli, ["send", str(out), "--to", server.url, "--json"], env={AUTH_ENV: f"Bearer {TOKEN}"})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sent"] == 2
    res = CliRunner().invoke(mdrn_cli, ["send", str(out), "--to", server.url], env={AUTH_ENV: "Bearer wrong"})
    line = one_error_line(res, 8)
    assert "401" in line and AUTH_ENV in line and "wrong" not in res.output and TOKEN not in res.output


def test_basic_credentials_from_a_file_and_never_in_the_url(tmp_path, relay):
    seen = []
    server = relay(lambda handler, body: seen.append(handler.headers.get("Authorization")) or False)
    auth = tmp_path / "auth"
    auth.write_text("Basic alice:wonder\n")
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", "--send", server.url, "--auth-file", auth)
    assert res.exit_code == 0, res.output
    assert seen and all(a == "Basic YWxpY2U6d29uZGVy" for a in seen)
    res = infer(make_series(tmp_path / "in2", 1), "--output", tmp_path / "out2", "--send",
                server.url.replace("http://", "http://alice:wonder@"))
    line = one_error_line(res, 2)
    assert "credentials in the URL are refused" in line and "wonder" not in res.output
    auth.write_text("alice wonder")
    res = infer(make_series(tmp_path / "in3", 1), "--output", tmp_path / "out3", "--send", server.url, "--auth-file", auth)
    line = one_error_line(res, 2)
    assert "neither 'Bearer TOKEN' nor 'Basic USER:PASSWORD'" in line and "wonder" not in res.output
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


# --- what goes wrong ------------------------------------------------------------------------------------------------
def test_a_refusal_before_inference_writes_nothing(tmp_path, relay):
    server = relay(lambda handler, body: handler.reply(401) or True)
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", "--send", server.url)
    assert "refused our credentials (401" in one_error_line(res, 8)
    assert not (tmp_path / "out").exists() and len(server.requests) == 1  # a 4xx is never retried


def test_503_twice_then_success_is_retried(tmp_path, relay):
    count = {"n": 0}

    def flaky(handler, body):
        count["n"] += 1
        if count["n"] <= 2:
            handler.reply(503)
            return True
        return False

    server = relay(flaky)
    res = infer(make_series(tmp_path / "in", 2), "--output", tmp_path / "out", "--send", server.url, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sent"] == 2 and count["n"] >= 4


def test_413_splits_the_stow_into_smaller_requests(tmp_path, relay):
    sizes = []

    def small_only(handler, body):
        if handler.command == "POST":
            sizes.append(len(body))
            if len(body) > 200_000:  # one x4 instance of the bundled slice is about 130 kB
                handler.reply(413)
                return True
        return False

    server = relay(small_only)
    res = infer(make_series(tmp_path / "in", 3), "--output", tmp_path / "out", "--send", server.url, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["sent"] == 3 and [i["status"] for i in result["send"]["instances"]] == ["stored"] * 3
    assert max(sizes) > 200_000 and sizes[-1] <= 200_000


def test_a_server_that_never_answers_is_one_line_within_the_timeout(tmp_path, relay):
    server = relay(lambda handler, body: time.sleep(5) or True)
    t0 = time.monotonic()
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", "--send", server.url,
                "--http-timeout", "0.5", "--http-retries", "1")
    assert "no answer within 0.5 s (after 2 tries)" in one_error_line(res, 8)
    assert time.monotonic() - t0 < 15 and not (tmp_path / "out").exists()


def test_a_dead_server_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out", "--send", url, "--http-retries", "0")
    assert "unreachable (after 1 tries)" in one_error_line(res, 8)
    res = infer(f"{url}/studies/1.2.3/series/4.5.6", "--output", tmp_path / "out", "--http-retries", "0")
    assert "unreachable" in one_error_line(res, 8) and not (tmp_path / "out").exists()


def test_a_partial_stow_failure_keeps_the_output_and_reports_each_instance(tmp_path, relay, web):
    """The relay passes the STOW to Orthanc, which stores every instance, then reports the first as failed (0xA700,
    out of resources), as an archive that ran out of space mid-request would."""
    def fail_first(handler, body):
        if handler.command != "POST":
            return False
        status, headers, data = server.forward("POST", handler.path, handler.headers, body)
        answer = json.loads(data)
        items = answer["00081199"]["Value"]
        failed = {**items[0], "00081197": {"vr": "US", "Value": [0xA700]}}
        answer["00081199"]["Value"] = items[1:]
        answer["00081198"] = {"vr": "SQ", "Value": [failed]}
        handler.reply(202, json.dumps(answer).encode(), "application/dicom+json")
        return True

    server = relay(fail_first)
    res = infer(make_series(tmp_path / "in", 3), "--output", tmp_path / "out", "--send", server.url, "--json")
    line = one_error_line(res, 8)
    assert "1 of 3 instances not stored (failure 0xA700)" in line and f"mdrn send {tmp_path / 'out'} --to" in line
    result = json.loads(res.stdout)
    assert [i["status"] for i in result["send"]["instances"]] == ["failed", "stored", "stored"]
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 3, "the output is kept"
    res = CliRunner().invoke(mdrn_cli, ["send", str(tmp_path / "out"), "--to", f"{web.url}/dicom-web"])
    assert res.exit_code == 0 and "stored 3 files" in res.output  # the line's command, to a server that takes it


def test_urls_that_are_not_a_series_or_a_service_root_are_one_line(tmp_path):
    res = infer("https://pacs.example/dicom-web", "--output", tmp_path / "out")
    assert "give a study or series URL" in one_error_line(res, 2)
    res = infer(make_series(tmp_path / "in", 1), "--output", tmp_path / "out",
                "--send", "https://pacs.example/dicom-web/studies/1.2.3")
    assert "give the service root" in one_error_line(res, 2)
    res = infer(make_series(tmp_path / "in2", 1), "--output", tmp_path / "out", "--send", "https://pacs.example/dicom-web",
                "--calling-aet", "ME")
    assert "--calling-aet is a DIMSE AE title" in one_error_line(res, 2)
    assert WebResource.parse("https://h/dicom-web/studies/1.2/series/3.4/").series == "3.4"


def test_stow_outcomes_read_every_instance_of_a_reply():
    reply = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.1"]}},
                                                 {"00081155": {"vr": "UI", "Value": ["1.2"]},
                                                  "00081196": {"vr": "US", "Value": [0xB000]}}]},
             "00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.3"]},
                                                  "00081197": {"vr": "US", "Value": [0x0110]}}]}}
    assert stow_outcomes(reply, ["1.1", "1.2", "1.3", "1.4"]) == [
        {"sop_instance_uid": "1.1", "status": "stored"},
        {"sop_instance_uid": "1.2", "status": "warning", "reason": "warning 0xB000"},
        {"sop_instance_uid": "1.3", "status": "failed", "reason": "failure 0x0110"},
        {"sop_instance_uid": "1.4", "status": "unconfirmed"}]


def test_the_node_forwards_by_stow_through_orthancs_dicomweb_client(tmp_path):
    """mdrn-node --forward NAME where NAME is a server of Orthanc's DicomWeb.Servers: Orthanc's STOW-RS job."""
    from test_node import node, wait_stable

    pacs = start_dicomweb_orthanc(tmp_path / "pacs", "PACS")
    scanner = start_dicomweb_orthanc(tmp_path / "orthanc-a", "ORTHANC",
                                     servers={"ARCHIVE": [f"{pacs.url}/dicom-web/"]})
    try:
        send_files(sorted(real_series(tmp_path / "scanner").glob("*.dcm")), Destination.parse(scanner.dest))
        wait_stable(scanner, 1)
        res, events = node(scanner, tmp_path / "state", "--forward", "ARCHIVE", "--forward-wait", "30")
        assert res.exit_code == 0, res.output
        assert any(e["outcome"] == "forwarded" for e in events), events
        received = [pacs.get(f"/series/{s}") for s in pacs.get("/series")]
        assert len(received) == 1 and received[0]["MainDicomTags"]["SeriesDescription"].endswith("SR x4 MDRN")
        assert len(received[0]["Instances"]) == 3
        res, _ = node(scanner, tmp_path / "state2", "--forward", "NOWHERE")
        assert res.exit_code == 2 and "neither a modality nor a DICOMweb server" in res.output
    finally:
        scanner.stop()
        pacs.stop()


def test_insecure_is_said_once_and_a_missing_ca_bundle_is_one_line(tmp_path, relay):
    import subprocess
    import sys

    from corpus import ROOT

    server = relay(lambda handler, body: False)
    src = make_series(tmp_path / "in", 1)
    res = subprocess.run([sys.executable, "-m", "mdrn_edge.cli.infer", str(src), "--output", str(tmp_path / "out"),
                          "--send", server.url, "--insecure", "--no-progress", "--backend", "onnxruntime"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("TLS certificates are not verified (--insecure)") == 1
    res = infer(src, "--output", tmp_path / "out2", "--send", server.url, "--ca-bundle", tmp_path / "none.pem")
    assert "--ca-bundle" in one_error_line(res, 2) and not (tmp_path / "out2").exists()
