"""``mdrn-serve``: a real Triton Inference Server serving a shipped or exported model (nvidia-pytriton)."""

from __future__ import annotations

from pathlib import Path

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineCommand, fail, json_option, runtime_config, runtime_options, say, setup_logging, stop_on_signals,
    user_errors, version_option,
)
from mdrn_edge.errors import INTERRUPTED_EXIT
from mdrn_edge.fileio import strict_json

PORT = click.IntRange(1, 65535)


@click.command("serve", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.option("--model", help="An .onnx or .engine file, or a shipped name  [default: mdrn-x{scale}].")
@click.option("--scale", type=click.Choice(["2", "4", "8"]), help="Pick the shipped model for this scale  [default: 4].")
@click.option("--host", default="127.0.0.1", help="Address Triton listens on (HTTP, gRPC, metrics); 0.0.0.0 opens it to the network.")
@click.option("--http-port", type=PORT, default=8000, help="Triton's HTTP/REST port (KServe v2; health at /v2/health/ready).")
@click.option("--grpc-port", type=PORT, default=8001, help="Triton's gRPC port.")
@click.option("--metrics-port", type=PORT, default=8002, help="Triton's Prometheus metrics port (/metrics).")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, help="Largest batch Triton's dynamic batcher forms from concurrent requests.")
@click.option("--queue-delay", type=click.IntRange(0, 1_000_000), default=2000, help="Microseconds the batcher waits to fill a batch.")
@click.option("--instances", type=click.IntRange(1, 16), default=1, help="Model instances (runners) serving requests in parallel.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Triton's own log  [default: $TMPDIR/mdrn-serve-HTTPPORT.log].")
@runtime_options
@json_option
@user_errors
def command(model, scale, host, http_port, grpc_port, metrics_port, max_batch, queue_delay, instances, log_file, as_json,
            **runtime):
    """Serve MODEL with a real Triton Inference Server on this machine, until SIGTERM or Ctrl-C.

    Many nodes (one per scanner) then share it: mdrn-infer, mdrn-node and mdrn-bench take
    --model triton://HOST:HTTP_PORT/NAME (or grpc://HOST:GRPC_PORT/NAME); Triton batches their requests together.
    The model runs on the backend mdrn-infer would pick here (--backend, --precision as there), one runner per
    --instances. One line when it serves (--json: one object), with the addresses.
    """
    from mdrn_edge.serve import ServeConfig, serve

    setup_logging()
    stop_on_signals()

    def ready(info: dict) -> None:
        if as_json:  # one line, flushed: a supervisor reads it as the ready signal
            click.echo(strict_json(info, indent=None))
        else:
            say(f"serving {info['model']} ({info['backend']['backend']} {info['backend']['precision']}) at {info['http']} "
                f"and {info['grpc']}; metrics {info['metrics']}; Triton's log {info['log']}")

    try:
        serve(model, int(scale) if scale else None,
              ServeConfig(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          max_batch=max_batch, queue_delay_us=queue_delay, instances=instances,
                          log_file=Path(log_file) if log_file else None),
              runtime_config(runtime), ready)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: how a server is meant to end, said as such
        fail("Triton and its model instances were shut down", INTERRUPTED_EXIT, prefix="Stopped")


if __name__ == "__main__":
    command()
