"""A model served by Triton Inference Server, as a :class:`~mdrn_edge.runtime.base.Runner` (tritonclient over HTTP
or gRPC; torch-free): ``triton://HOST:PORT/NAME`` (HTTP) or ``grpc://HOST:PORT/NAME``.

The model's contract (scale, normaliser, check thresholds) is read from the server, from the ``parameters`` of the
model's configuration (written by ``mdrn-export --triton`` or ``mdrn-serve``); batches are split to the model's
``max_batch_size``. A server or model that is missing or not ready is one line at activation; a connection that
fails is retried with doubling waits, and a server that stops mid-series is one line (the series' output is then
not published: nothing partial).
"""

from __future__ import annotations

import http.client
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdrn_edge.errors import InferenceServerError, InputError, MdrnError, first_line, printable, require
from mdrn_edge.runtime.base import Runner, check_graph

SCHEMES = {"triton": "http", "grpc": "grpc"}
TIMEOUT_S = 60.0  # each request (a large tile batch on a busy server takes seconds)
RETRIES = 3  # further tries of a request whose connection failed, waits doubling from 1 s
LARGEST = 1 << 20  # H and W: Triton's dims are -1, the server's memory is the limit; tiles keep requests modest


def is_triton(model: object) -> bool:
    """Whether ``--model`` names a Triton-served model (``triton://`` or ``grpc://``) rather than a file."""
    return bool(re.match(r"(triton|grpc)://", str(model or ""), re.IGNORECASE))


@dataclass(frozen=True)
class TritonAddress:
    protocol: str  # http | grpc
    host: str
    port: int
    model: str

    @classmethod
    def parse(cls, text: str) -> "TritonAddress":
        m = re.fullmatch(r"(triton|grpc)://([^/:\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/([A-Za-z0-9_.-]+)/?", text.strip())
        if not m or not 0 < int(m.group(3)) < 65536:
            raise InputError(f"--model {printable(text)}: write a Triton-served model as triton://HOST:PORT/NAME (HTTP) "
                             "or grpc://HOST:PORT/NAME, e.g. triton://127.0.0.1:8000/mdrn-x4")
        return cls(SCHEMES[m.group(1).lower()], m.group(2), int(m.group(3)), m.group(4))

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'triton' if self.protocol == 'http' else 'grpc'}://{self.url}/{self.model}"


class TritonRunner(Runner):
    """Inference on a Triton server; ``N x 1 x H x W`` float32 in and out like every runner."""

    backend = "triton"

    def __init__(self, address: str | TritonAddress, timeout: float = TIMEOUT_S, retries: int = RETRIES) -> None:
        super().__init__(".")
        self.address = address if isinstance(address, TritonAddress) else TritonAddress.parse(address)
        self.path = self.address  # what every message names
        self.timeout, self.retries = timeout, retries
        self.client: Any = None
        self.module: Any = None  # tritonclient.http or .grpc, imported at activation
        self.max_batch = 0
        self.sha256 = ""
        self.served_by = ""  # what the server's runners compute in (mdrn-serve says; an NGC Triton does not)

    def _call(self, what: str, call, *args: Any, **kwargs: Any) -> Any:
        """One request, retried on connection failures with doubling waits; a refusal by the server is one line."""
        from tritonclient.utils import InferenceServerException

        wait = 1.0
        for attempt in range(self.retries + 1):
            try:
                return call(*args, **kwargs)
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                if not any(code in status.upper() for code in ("UNAVAILABLE", "503", "DEADLINE")):
                    raise InferenceServerError(f"{self.address}: {what} refused by the server "
                                               f"({printable(first_line(exc))})") from None
                failure: Exception = exc  # gRPC's unreachable server: retried like a refused connection
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed mid-answer, timed out:
                failure = exc                                    # the server is gone or overloaded
            if attempt < self.retries:
                time.sleep(wait)
                wait *= 2
                continue
            raise InferenceServerError(f"{self.address}: {what} failed after {self.retries + 1} tries "
                                       f"({printable(first_line(failure) or type(failure).__name__)}); check that the "
                                       "Triton server runs and the address") from None
        raise AssertionError("unreachable")

    def activate_impl(self) -> None:
        from mdrn_edge.export.triton import SERVED_KEY, SHA_KEY, info_of

        module = self.module = require(f"tritonclient.{self.address.protocol}", "triton")
        if self.address.protocol == "http":
            self.client = module.InferenceServerClient(self.address.url, connection_timeout=self.timeout,
                                                       network_timeout=self.timeout)
        else:
            self.client = module.InferenceServerClient(self.address.url)
        try:
            if not self._call("the liveness check", self.client.is_server_live):
                raise InferenceServerError(f"{self.address}: the Triton server is not live yet; wait for it and run again")
            name = self.address.model
            if not self._call("the model check", self.client.is_model_ready, name):
                served = [m.get("name") for m in self._index()]
                raise InferenceServerError(f"{self.address}: model {name!r} is not ready on the server (it serves "
                                           f"{served}); load it, or give one of those")
            config = self._call("reading the model's configuration", self.client.get_model_config, name,
                                **({"as_json": True} if self.address.protocol == "grpc" else {}))
            config = config.get("config", config)
            self.info = info_of(config, str(self.address))
            self.max_batch = int(config.get("max_batch_size") or 0)
            params = config.get("parameters", {})
            self.sha256 = str(params.get(SHA_KEY, {}).get("string_value", ""))
            self.served_by = str(params.get(SERVED_KEY, {}).get("string_value", ""))
            dims = lambda t: [None, *[int(d) if int(d) >= 0 else None for d in t.get("dims", [])]]  # noqa: E731
            check_graph(self.path, self.info, [(t["name"], dims(t)) for t in config.get("input", [])],
                        [t["name"] for t in config.get("output", [])])
        except MdrnError:
            self.deactivate_impl()
            raise

    def _index(self) -> list[dict]:
        try:
            index = self.client.get_model_repository_index(**({"as_json": True} if self.address.protocol == "grpc" else {}))
            return index.get("models", []) if isinstance(index, dict) else list(index)
        except Exception:  # noqa: BLE001  (a restricted repository API: the message then names none)
            return []

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        module, name = self.module, self.address.model
        step = self.max_batch or len(batch)
        outs = []
        for k in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[k : k + step])
            inp = module.InferInput(self.info.input_name, list(chunk.shape), "FP32")
            want = module.InferRequestedOutput(self.info.output_name, **({"binary_data": True}
                                                                          if self.address.protocol == "http" else {}))
            if self.address.protocol == "http":
                inp.set_data_from_numpy(chunk, binary_data=True)
                result = self._call("an inference", self.client.infer, name, [inp], outputs=[want])
            else:
                inp.set_data_from_numpy(chunk)
                result = self._call("an inference", self.client.infer, name, [inp], outputs=[want],
                                    client_timeout=self.timeout)
            outs.append(result.as_numpy(self.info.output_name))
        return np.concatenate(outs).astype(np.float32, copy=False)

    def deactivate_impl(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None

    def input_limits(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Batches within the model's ``max_batch_size``; H and W free (tiles keep each request modest)."""
        return ((1, 1, 1, 1), (self.max_batch, 1, LARGEST, LARGEST)) if self.max_batch else None

    def model_sha256(self) -> str:
        return self.sha256

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "provider": f"Triton {self.address.protocol.upper()} {self.address.url}"}
        if self.served_by:
            described["precision_reason"] = f"served by {self.served_by}"
        return described
