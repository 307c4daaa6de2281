"""``mdrn-serve``: a real Triton Inference Server on this machine, serving a shipped or exported model to many
clients (nodes of several scanners), for a site without NGC's Triton containers.

``nvidia-pytriton`` bundles Triton (HTTP, gRPC, Prometheus metrics, dynamic batching) and runs our own runner
(ONNX Runtime, OpenVINO or TensorRT, as :func:`~mdrn_edge.runtime.create_runner` picks) in Triton's Python backend,
one runner per ``--instances``. The model's contract is published in its configuration's ``parameters``, as
``mdrn-export --triton`` writes it, so :class:`~mdrn_edge.runtime.triton.TritonRunner` (``--model
triton://HOST:PORT/NAME``) reads the scale, normaliser and check thresholds from the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mdrn_edge.errors import InferenceServerError, InputError, MissingDependencyError, require
from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Where Triton listens and how it batches: ``host`` (loopback by default: open it on purpose), the three
    ports, the largest batch, how long the batcher waits to fill one, and runner instances."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    queue_delay_us: int = 2000
    instances: int = 1
    log_file: Path | None = None  # Triton's own log (default: a file beside the workspace, named at start)


def _python_backend_env() -> None:
    """Triton's Python backend stub loads ``libpython`` by name: it must be the one of this interpreter (a system
    libpython of the same minor version but another patch release fails inside multiprocessing)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))


def _publish_info(triton, name: str, parameters: dict[str, str]) -> None:
    """Put the model info into the served configuration's ``parameters``. pytriton has no public way to add
    configuration parameters, so this sets its model's backend parameters (what it writes as ``parameters``) and
    writes the model's configuration into the model store again, before Triton loads it; a pytriton whose
    internals differ is one line naming the versions that work (the tests read the parameters back)."""
    try:
        manager = triton._model_manager
        model = next(m for m in manager.models if m.model_name == name)
        model._get_triton_model_config().backend_parameters.update(parameters)
        if manager._model_store_path is not None:  # a local store was written at bind: write it again
            model.generate_model(manager._model_store_path)  # (else the config is sent when Triton loads it)
    except (AttributeError, StopIteration, TypeError):
        raise MissingDependencyError("this nvidia-pytriton does not let mdrn-serve publish the model info; install "
                                     "nvidia-pytriton>=0.5,<0.8 (the [triton] extra)") from None


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 point at ``path`` while the block runs (a child process started in it keeps them),
    so that stdout holds only our own lines (``--json``)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def check_port(host: str, port: int, option: str) -> None:
    """A port Triton could not bind is one line before anything starts (Triton's own words are a page of gRPC)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror}); choose a free port or "
                             "stop what uses it") from None


def serve(model: str | None, scale: int | None, config: ServeConfig = ServeConfig(),
          runtime: RuntimeConfig = RuntimeConfig(), ready: Callable[[dict], None] | None = None) -> None:
    """Serve ``model`` until interrupted (SIGTERM/Ctrl-C): every instance's runner is opened first, so a model
    that cannot run here is one line before Triton starts; ``ready(info)`` is told the addresses once it serves."""
    require("pytriton", "triton")
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from mdrn_edge.export.triton import INFO_KEY, SERVED_KEY, SHA_KEY

    for option, port in (("--http-port", config.http_port), ("--grpc-port", config.grpc_port),
                         ("--metrics-port", config.metrics_port)):
        check_port(config.host, port, option)
    path = resolve_model_file(model, scale)
    runners = [create_runner(path, runtime).activate() for _ in range(config.instances)]
    info = runners[0].info

    def infer_with(runner):
        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {info.output_name: runner.infer(inputs[info.input_name])}

        return infer

    _python_backend_env()
    logging.getLogger("pytriton").setLevel(logging.ERROR)
    log_file = config.log_file or Path(os.environ.get("TMPDIR", "/tmp")) / f"mdrn-serve-{config.http_port}.log"
    triton_config = TritonConfig(http_address=config.host, http_port=config.http_port, grpc_address=config.host,
                                 grpc_port=config.grpc_port, metrics_address=config.host, metrics_port=config.metrics_port,
                                 allow_gpu_metrics=False, log_file=log_file, exit_on_error=True)
    triton = Triton(config=triton_config)  # not as a context manager: that starts Triton, and bind() would load
    try:                                    # the model before its parameters are set
        triton.bind(model_name=info.name, infer_func=[infer_with(r) for r in runners],
                    inputs=[Tensor(name=info.input_name, dtype=np.float32, shape=(1, -1, -1))],
                    outputs=[Tensor(name=info.output_name, dtype=np.float32, shape=(1, -1, -1))],
                    config=ModelConfig(max_batch_size=config.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=config.queue_delay_us)))
        backend = runners[0].describe()
        _publish_info(triton, info.name, {INFO_KEY: info.to_json(), SHA_KEY: runners[0].model_sha256(),
                                          SERVED_KEY: f"{backend['backend']} {backend['precision']}"})
        with output_to(log_file):  # Triton's process writes its own lines to our stdout/stderr: into its log instead
            triton.run()
        if ready:
            ready({"model": info.name, "backend": backend, "log": str(log_file),
                   "http": f"triton://{config.host}:{config.http_port}/{info.name}",
                   "grpc": f"grpc://{config.host}:{config.grpc_port}/{info.name}",
                   "metrics": f"http://{config.host}:{config.metrics_port}/metrics",
                   "health": f"http://{config.host}:{config.http_port}/v2/health/ready"})
        while triton.is_alive():  # until SIGTERM/Ctrl-C (KeyboardInterrupt) stops it, or Triton dies
            time.sleep(1.0)
        raise InferenceServerError(f"Triton stopped serving {info.name} on its own; its log says why: {log_file}")
    finally:
        triton.stop()
        for runner in runners:
            runner.deactivate()
