"""The few Orthanc REST calls the node needs, over httpx: the changes feed, series and instances, upload, and
store jobs to a declared modality (C-STORE) or DICOMweb server (STOW-RS, Orthanc's DICOMweb plugin): Orthanc does
the networking and keeps each job's status."""

from __future__ import annotations

from typing import Any

from mdrn_edge.errors import PacsError, first_line, require

TIMEOUT_S = 30.0


class OrthancError(PacsError):
    """Orthanc could not be reached or answered with an error; one line naming the call."""


class Orthanc:
    """A REST client of one Orthanc (``url`` like ``http://127.0.0.1:8042``), optionally with HTTP basic auth."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None,
                 timeout: float = TIMEOUT_S) -> None:
        httpx = require("httpx", "node")
        self.url = url.rstrip("/")
        auth = (user, password or "") if user else None
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = require("httpx", "node")
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OrthancError(f"Orthanc {self.url}: {method} {path} failed ({first_line(exc) or type(exc).__name__}); "
                               "check that Orthanc runs and --orthanc is its HTTP address") from None
        if response.status_code in (401, 403):
            raise OrthancError(f"Orthanc {self.url}: {method} {path} refused ({response.status_code}); check --user and "
                               "--password")
        if response.status_code >= 400:
            raise OrthancError(f"Orthanc {self.url}: {method} {path} answered {response.status_code} "
                               f"({response.text.strip()[:120]})")
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params or None).json()

    def system(self) -> dict[str, Any]:
        return self.get("/system")

    def changes(self, since: int, limit: int = 100) -> dict[str, Any]:
        """``{"Changes": [...], "Done": bool, "Last": seq}`` after change ``since``."""
        return self.get("/changes", since=since, limit=limit)

    def last_change(self) -> int:
        """The sequence number of the newest change in the feed (where a new node starts)."""
        return int(self.get("/changes", last="").get("Last", 0))

    def unstable_series(self) -> list[str]:
        """Orthanc's ids of the series it holds that are not stable yet (still receiving, within its StableAge)."""
        return [s["ID"] for s in self.get("/series", expand="") if not s.get("IsStable", True)]

    def series_with_uid(self, uid: str) -> list[str]:
        """Orthanc's ids of the series whose SeriesInstanceUID is ``uid`` (none, or one)."""
        found = self._call("POST", "/tools/lookup", content=uid.encode()).json()
        return [r["ID"] for r in found if r.get("Type") == "Series"]

    def series(self, series_id: str) -> dict[str, Any]:
        return self.get(f"/series/{series_id}")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def instance_file(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file").content

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM file; Orthanc answers ``Success`` or ``AlreadyStored`` (uploading twice is harmless)."""
        return self._call("POST", "/instances", content=data,
                          headers={"Content-Type": "application/dicom"}).json()

    def modalities(self) -> list[str]:
        return list(self.get("/modalities"))

    def dicomweb_servers(self) -> list[str]:
        """The DICOMweb servers declared in Orthanc's ``DicomWeb.Servers`` (none without the DICOMweb plugin)."""
        try:
            return list(self.get("/dicom-web/servers"))
        except OrthancError as exc:
            if " 404 " in str(exc):  # no DICOMweb plugin: no servers
                return []
            raise

    def destinations(self) -> list[str]:
        """Where the node can forward: modalities (C-STORE) and DICOMweb servers (STOW-RS)."""
        return self.modalities() + self.dicomweb_servers()

    def store(self, destination: str, resource_id: str) -> str:
        """Start an asynchronous job sending a resource to a declared modality (C-STORE) or, where ``destination``
        is a DICOMweb server of Orthanc's, by STOW-RS; returns the job id."""
        if destination in self.dicomweb_servers():
            answer = self._call("POST", f"/dicom-web/servers/{destination}/stow",
                                json={"Resources": [resource_id], "Synchronous": False}).json()
        else:
            answer = self._call("POST", f"/modalities/{destination}/store",
                                json={"Resources": [resource_id], "Asynchronous": True}).json()
        return str(answer["ID"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def resubmit(self, job_id: str) -> None:
        self._call("POST", f"/jobs/{job_id}/resubmit", content=b"")
