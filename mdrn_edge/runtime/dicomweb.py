"""DICOMweb beside DIMSE: a series in by WADO-RS, a derived series out by STOW-RS, for archives and clouds that
speak only HTTP (dcm4chee, Orthanc's DICOMweb plugin, Google Cloud Healthcare, Azure, AWS HealthImaging).

The field's client does the protocol (``dicomweb-client``: multipart encoding and parsing, QIDO/WADO/STOW URLs);
this module adds what a node beside a scanner needs, with the same guarantees as the C-STORE path
(:mod:`.pacs`): the server is asked before any inference (a QIDO search), every request has a bounded timeout,
connection errors and 5xx answers are retried with doubling waits (never a 4xx: a refusal does not change), a
413 splits the STOW into smaller requests, each instance's result of a STOW is reported (stored, warning, failed
with its reason), and a failure keeps the local output and names the command that sends it again.

Credentials never travel on the command line nor appear in a line we print: they are read from the environment
variable :data:`AUTH_ENV` or a file (``--auth-file``), holding ``Bearer TOKEN`` or ``Basic USER:PASSWORD``. TLS is
verified by default (``--ca-bundle`` for a private CA); ``--insecure`` turns it off and says so.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mdrn_edge.errors import InputError, PacsError, printable, require

AUTH_ENV = "MDRN_DICOMWEB_AUTH"
TIMEOUT_S = 30.0  # connect and read, each request
RETRIES = 4  # further tries of a request that met a connection error, a timeout or a 5xx
BACKOFF_S = 1.0  # first wait between tries, doubled each time (a Retry-After header is honoured)
STOW_BATCH_BYTES = 64 * 2**20  # instances per STOW request up to this size; a 413 halves it
URL = re.compile(r"https?://", re.IGNORECASE)

log = logging.getLogger(__name__)


def is_url(text: str | Path) -> bool:
    """Whether an input or destination is a DICOMweb URL rather than a path or ``AET@HOST:PORT``."""
    return bool(URL.match(str(text)))


@dataclass(frozen=True)
class WebConfig:
    """How we talk to a DICOMweb server: where the credentials are, how TLS is verified, the per-request timeout."""

    auth_file: str | None = None
    ca_bundle: str | None = None
    insecure: bool = False
    timeout: float = TIMEOUT_S
    retries: int = RETRIES
    backoff: float = BACKOFF_S

    def authorization(self) -> str | None:
        """The Authorization header's value, from the file or :data:`AUTH_ENV`; ill-formed is one line that never
        shows the secret."""
        if self.auth_file:
            try:
                text = Path(self.auth_file).read_text().strip()
            except OSError as exc:
                raise InputError(f"--auth-file {printable(self.auth_file)}: cannot read it ({exc.strerror}); give a "
                                 "readable file holding 'Bearer TOKEN' or 'Basic USER:PASSWORD'") from None
            where = f"--auth-file {printable(self.auth_file)}"
        elif os.environ.get(AUTH_ENV):
            text, where = os.environ[AUTH_ENV].strip(), AUTH_ENV
        else:
            return None
        kind, _, secret = text.partition(" ")
        if kind.lower() == "bearer" and secret.strip():
            return f"Bearer {secret.strip()}"
        if kind.lower() == "basic" and ":" in secret:
            return "Basic " + base64.b64encode(secret.strip().encode()).decode("ascii")
        raise InputError(f"{where}: holds neither 'Bearer TOKEN' nor 'Basic USER:PASSWORD' (its content is not shown); "
                         "write one of them")


@dataclass(frozen=True)
class WebResource:
    """A DICOMweb service root and, for an input, the study (and series) under it."""

    base: str
    study: str | None = None
    series: str | None = None

    @classmethod
    def parse(cls, url: str, option: str = "input") -> "WebResource":
        """``https://HOST/dicom-web``, ``.../studies/S`` or ``.../studies/S/series/R``; credentials in the URL are
        refused (they would end up in shell history and process lists)."""
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise InputError(f"{option} {printable(_without_userinfo(url))}: credentials in the URL are refused; give "
                             f"them in {AUTH_ENV} or --auth-file")
        if not parts.hostname:
            raise InputError(f"{option} {printable(url)}: not a URL with a host, e.g. https://pacs.example/dicom-web")
        m = re.fullmatch(r"(.*?)/studies/([0-9.]+)(?:/series/([0-9.]+))?/?", parts.path)
        path = m.group(1) if m else parts.path.rstrip("/")
        base = f"{parts.scheme}://{parts.netloc}{path}"
        return cls(base, m.group(2) if m else None, m.group(3) if m else None)

    def __str__(self) -> str:
        tail = (f"/studies/{self.study}" if self.study else "") + (f"/series/{self.series}" if self.series else "")
        return self.base + tail


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@functools.lru_cache(maxsize=1)
def warn_insecure() -> None:
    """Say once per process that TLS is not verified (urllib3's own warning, one per request, is silenced)."""
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    log.warning("TLS certificates are not verified (--insecure): anyone on the network path can read and alter the "
                "images; use --ca-bundle with your CA instead")


def session(config: WebConfig):
    """A requests session: retries with backoff on connection errors, timeouts and 5xx (POST included: a STOW of the
    same instances again stores the same SOP instances), the Authorization header, TLS as configured."""
    require("dicomweb_client", "dicomweb")
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=config.retries, connect=config.retries, read=config.retries, status=config.retries,
                  backoff_factor=config.backoff, status_forcelist=list(range(500, 600)),
                  allowed_methods=["GET", "POST", "HEAD"], raise_on_status=False, respect_retry_after_header=True)
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    auth = config.authorization()
    if auth:
        s.headers["Authorization"] = auth
    if config.insecure:
        warn_insecure()
        s.verify = False
    elif config.ca_bundle:
        if not Path(config.ca_bundle).is_file():
            raise InputError(f"--ca-bundle {printable(config.ca_bundle)}: no such file; give the PEM file of your CA")
        s.verify = config.ca_bundle
    return s


def client(base: str, config: WebConfig):
    """A ``DICOMwebClient`` for ``base`` over :func:`session` (its own retry logic off: the session's covers more)."""
    from dicomweb_client.api import DICOMwebClient

    c = DICOMwebClient(url=base, session=session(config), timeout=config.timeout)
    c.set_http_retry_params(retry=False)
    return c


def explain(exc: Exception, where: str, config: WebConfig) -> PacsError:
    """One line for what a request met: refused credentials, not found, too large, a server error after the
    retries, no answer, a TLS failure, nothing listening. Never the Authorization header, never a body."""
    import requests

    tries = f"after {config.retries + 1} tries"
    response = getattr(exc, "response", None)
    cause = getattr(exc.args[0], "reason", None) if exc.args else None  # what the retries ended on
    timed_out = isinstance(exc, requests.exceptions.Timeout) or "timeout" in type(cause).__name__.lower()
    if isinstance(exc, requests.exceptions.SSLError):
        why = ("its TLS certificate could not be verified; give --ca-bundle with the CA that signed it (or, on a test "
               "network only, --insecure)")
    elif timed_out:
        why = f"no answer within {config.timeout:g} s ({tries}); check that the server runs and is not overloaded"
    elif isinstance(exc, requests.exceptions.ConnectionError) and response is None:
        why = f"unreachable ({tries}); check the URL, that the server runs and the network"
    elif response is not None:
        code = response.status_code
        why = {401: f"refused our credentials (401 Unauthorized); give valid ones in {AUTH_ENV} or --auth-file",
               403: "refused the request (403 Forbidden): these credentials may not do this",
               404: "answered 404 Not Found; check the URL (the service root, e.g. https://HOST/dicom-web, and the UIDs)",
               413: "refused a request as too large (413) even with one instance in it; raise the server's limit"
               }.get(code, f"answered {code} {printable(response.reason or '')}"
                     + (f" {tries}" if code >= 500 else "; a refusal that retrying cannot change"))
    else:
        why = f"failed ({printable(type(exc).__name__)})"
    return PacsError(f"{where}: {why}")


def check_server(base: str, config: WebConfig) -> None:
    """The server answers a QIDO search (with our credentials) before any inference is spent on a series it could
    not take."""
    import requests

    try:
        client(base, config).search_for_studies(limit=1)
    except requests.exceptions.RequestException as exc:
        raise explain(exc, base, config) from None


def retrieve(resource: WebResource, folder: Path, config: WebConfig) -> int:
    """WADO-RS: the study or series into ``folder`` (one file per instance); returns how many."""
    import requests

    if not resource.study:
        raise InputError(f"{printable(resource)}: give a study or series URL, .../studies/STUDY_UID[/series/SERIES_UID]")
    c = client(resource.base, config)
    try:
        instances = (c.retrieve_series(resource.study, resource.series) if resource.series
                     else c.retrieve_study(resource.study))
    except requests.exceptions.RequestException as exc:
        raise explain(exc, str(resource), config) from None
    if not instances:
        raise InputError(f"{printable(resource)}: the server returned no instances; check the UIDs")
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(instances):
        ds.save_as(folder / f"{k:05d}.dcm", enforce_file_format=True)
    return len(instances)


# STOW-RS response attributes (PS3.18 10.5.3): each referenced instance, and why one failed or was warned about
FAILED, REFERENCED, FAILURE_REASON, WARNING_REASON = "00081198", "00081199", "00081197", "00081196"
UID = "00081155"


def _items(response: dict, key: str) -> list[dict]:
    return (response.get(key) or {}).get("Value") or []


def _value(item: dict, key: str) -> Any:
    values = (item.get(key) or {}).get("Value") or [None]
    return values[0]


def stow_outcomes(response: dict | None, sent: list[str]) -> list[dict[str, Any]]:
    """Each sent instance's outcome from a STOW-RS response (DICOM JSON): ``stored``, ``warning`` (with the
    reason code) or ``failed`` (with the failure reason); one the response does not mention is ``unconfirmed``."""
    out: dict[str, dict[str, Any]] = {}
    for item in _items(response or {}, REFERENCED):
        warning = _value(item, WARNING_REASON)
        out[str(_value(item, UID))] = ({"status": "warning", "reason": f"warning 0x{int(warning):04X}"} if warning
                                       else {"status": "stored"})
    for item in _items(response or {}, FAILED):
        out[str(_value(item, UID))] = {"status": "failed", "reason": f"failure 0x{int(_value(item, FAILURE_REASON) or 0):04X}"}
    return [{"sop_instance_uid": uid, **out.get(uid, {"status": "unconfirmed"})} for uid in sent]


@dataclass
class StowResult:
    """What a STOW of a folder did, per instance."""

    url: str
    instances: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(i["status"] in ("stored", "warning") for i in self.instances)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": "STOW-RS", "url": self.url, "stored": self.stored, "instances": self.instances}


def _post(c, datasets: list) -> dict | None:
    """One STOW request; a 409 (every instance failed) carries the same per-instance body as a 200/202."""
    import requests

    try:
        answer = c.store_instances(datasets)
        return answer.to_json_dict() if answer is not None else None
    except requests.exceptions.HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 409:
            try:
                return exc.response.json()
            except ValueError:
                return None
        raise


def stow(folder: Path, base: str, config: WebConfig, batch_bytes: int = STOW_BATCH_BYTES) -> StowResult:
    """STOW-RS every DICOM file of an output folder to ``base``'s studies endpoint, in requests of at most
    ``batch_bytes`` (a 413 halves them, down to one instance)."""
    import pydicom
    import requests

    files = sorted(p for p in Path(folder).rglob("*.dcm") if p.is_file())
    if not files:
        raise InputError(f"nothing to send to {base}: no DICOM files in {folder}")
    c, result, k = client(base, config), StowResult(base), 0
    while k < len(files):
        group, size = [], 0
        while k + len(group) < len(files) and (not group or size + files[k + len(group)].stat().st_size <= batch_bytes):
            size += files[k + len(group)].stat().st_size
            group.append(files[k + len(group)])
        datasets = [pydicom.dcmread(f) for f in group]
        try:
            answer = _post(c, datasets)
        except requests.exceptions.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 413 and len(group) > 1:
                batch_bytes = max(1, size // 2)
                log.info("%s: 413 for %d instances; sending smaller requests", base, len(group))
                continue
            raise explain(exc, base, config) from None
        except requests.exceptions.RequestException as exc:
            raise explain(exc, base, config) from None
        result.instances += stow_outcomes(answer, [str(ds.SOPInstanceUID) for ds in datasets])
        k += len(group)
    return result


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb server to store results in (STOW-RS): the counterpart of :class:`.pacs.Destination`."""

    resource: WebResource
    config: WebConfig = WebConfig()

    @classmethod
    def parse(cls, url: str, config: WebConfig = WebConfig(), option: str = "--send") -> "WebDestination":
        resource = WebResource.parse(url, option)
        if resource.study:
            raise InputError(f"{option} {printable(url)}: give the service root (e.g. https://HOST/dicom-web); STOW-RS "
                             "stores into the study each instance names")
        return cls(resource, config)

    def __str__(self) -> str:
        return self.resource.base

    def check(self) -> None:
        check_server(self.resource.base, self.config)

    def send(self, folder: Path) -> dict[str, Any]:
        """STOW the folder (its per-instance result); any instance not stored is one line naming how many and why,
        the output kept."""
        hint = f"the result is kept in {folder}: send it again with {self.retry_hint(folder)}"
        try:
            result = stow(folder, self.resource.base, self.config)
        except PacsError as exc:
            raise PacsError(f"{exc}; {hint}") from None
        bad = [i for i in result.instances if i["status"] not in ("stored", "warning")]
        if bad:
            reasons = ", ".join(sorted({i.get("reason", i["status"]) for i in bad}))
            error = PacsError(f"{self}: {len(bad)} of {len(result.instances)} instances not stored ({reasons}); {hint}")
            error.details = {"send": result.to_dict()}
            raise error
        return result.to_dict()

    def retry_hint(self, folder: Path) -> str:
        return f"mdrn send {folder} --to {self}"
