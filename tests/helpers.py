"""Small real artefacts for tests: a checkpoint trained for a few iterations by the real trainer, and real Orthanc
servers (Debian's orthanc) on loopback ports."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from click.testing import CliRunner

from corpus import make_series, mr_small


def train_tiny(out: Path, scale: int = 4, iterations: int = 2, *extra: str) -> Path:
    """last.pt of a real (very short) MDRN training run on the bundled slice."""
    from mdrn_edge.cli.train import command

    data = make_series(out.parent / f"{out.name}-data", 2)
    args = ["--data", str(data), "--val", str(mr_small()), "--output", str(out), "--scale", str(scale), "--patch",
            str(8 * scale), "--batch-size", "2", "--iterations", str(iterations), "--val-every", str(iterations),
            "--no-progress", "--threads", "1", *extra]
    res = CliRunner().invoke(command, args)
    assert res.exit_code == 0, res.output
    return out / "last.pt"


def one_error_line(res, code: int) -> str:
    """A CliRunner result that failed with ``code`` and said so in exactly one ``Error:`` line on stderr."""
    assert res.exit_code == code, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.stderr
    return lines[0]


ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    """A real Orthanc on loopback: ``aet``, ``dicom_port``, ``url`` (REST), started by :func:`start_orthanc`."""

    folder: Path
    aet: str
    dicom_port: int
    http_port: int
    modalities: dict
    proc: subprocess.Popen | None = None
    config: dict | None = None  # more Orthanc settings (e.g. {"DicomAlwaysAllowEcho": False})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dest(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> "OrthancServer":
        config = {"Name": self.aet, "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
                  "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
                  "Plugins": [], "HttpServerEnabled": True, "StableAge": 1, "DicomModalities": self.modalities,
                  "DicomScuTimeout": 5, **(self.config or {})}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(150):
            try:
                urllib.request.urlopen(f"{self.url}/system", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Orthanc {self.aet} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.loads(r.read())


def start_orthanc(folder: Path, aet: str = "ORTHANC", modalities: dict | None = None,
                  config: dict | None = None) -> OrthancServer:
    if not Path(ORTHANC).exists():
        pytest.skip(f"{ORTHANC} (Debian orthanc) is not installed; .ci/run installs it")
    return OrthancServer(folder, aet, free_port(), free_port(), modalities or {}, config=config).start()


def start_dicomweb_orthanc(folder: Path, aet: str = "WEB", servers: dict | None = None, **kwargs) -> OrthancServer:
    """A real Orthanc with Debian's DICOMweb plugin (``/dicom-web/``), optionally with DICOMweb servers to STOW to."""
    if not Path(DICOMWEB_PLUGIN).exists():
        pytest.skip(f"{DICOMWEB_PLUGIN} (Debian orthanc-dicomweb) is not installed; .ci/run installs it")
    config = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}}}
    return start_orthanc(folder, aet, config=config, **kwargs)
