"""Many clients sharing one Triton server: ``python benchmarks/triton_clients.py [--out DIR]``.

Starts ``mdrn-serve`` (a real Triton from nvidia-pytriton, ONNX Runtime FP32 runners) on loopback ports and measures,
in one run, the throughput of 1 client and of 4 concurrent clients (each a :class:`TritonRunner` sending one
N x 1 x H x W slice per request, as nodes beside four scanners would), for ``--seconds`` each, alternating for
``--rounds`` rounds and keeping each way's best; with Triton's own counts of requests and executions (how many
requests its dynamic batcher put in one execution). Writes ``triton_clients.json`` and ``triton_clients.md`` with
the machine (CPU model and features). On a CPU the batcher cannot make the arithmetic cheaper: what it shows is that
several nodes share one server, not a GPU's batching gain.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counts(metrics_port: int) -> tuple[int, int]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()

    def value(name: str) -> int:
        return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")))

    return value("nv_inference_count"), value("nv_inference_exec_count")


def throughput(url: str, clients: int, seconds: float, size: int) -> float:
    """Slices per second of ``clients`` concurrent clients, each sending slices for ``seconds``."""
    from mdrn_edge.runtime.triton import TritonRunner

    x = np.random.default_rng(0).random((1, 1, size, size)).astype(np.float32)
    done = [0] * clients

    def client(k: int) -> None:
        with TritonRunner(url) as runner:
            runner.infer(x)  # connected and warm before the clock starts
            barrier.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                runner.infer(x)
                done[k] += 1

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "triton"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="LR slice size (64: the bundled sample's)")
    args = parser.parse_args()

    from mdrn_edge.hardware import cpu_features, cpu_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "mdrn_edge.cli.serve", "--backend", "onnxruntime", "--http-port",
                               str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", "8",
                               "--json"], stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
                              env={**os.environ, "TMPDIR": str(out)})
    try:
        ready = json.loads(server.stdout.readline())
        best, batched = {1: 0.0, 4: 0.0}, {}
        for _ in range(args.rounds):
            for clients in (1, 4):
                before = counts(metrics)
                rate = throughput(ready["http"], clients, args.seconds, args.size)
                after = counts(metrics)
                best[clients] = max(best[clients], rate)
                requests, executions = after[0] - before[0], after[1] - before[1]
                batched[clients] = round(requests / executions, 2) if executions else None
                print(f"{clients} client(s): {rate:.1f} slices/s, {batched[clients]} requests per execution", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    result = {"machine": {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": os.cpu_count()},
              "server": ready["backend"], "lr_size": args.size, "seconds": args.seconds, "rounds": args.rounds,
              "slices_per_s": {str(k): round(v, 2) for k, v in best.items()},
              "four_clients_vs_one": round(best[4] / best[1], 2), "requests_per_execution": batched}
    (out / "triton_clients.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "triton_clients.md").write_text(
        f"# Triton: 4 concurrent clients against 1 ({result['machine']['cpu']}, {os.cpu_count()} cores)\n\n"
        f"mdrn-serve (nvidia-pytriton's Triton, {ready['backend']['backend']} {ready['backend']['precision']}), "
        f"{args.size}x{args.size} LR slices, best of {args.rounds} rounds of {args.seconds:g} s:\n\n"
        "| clients | slices/s | requests per Triton execution |\n|---|---|---|\n"
        + "".join(f"| {k} | {best[k]:.1f} | {batched[k]} |\n" for k in (1, 4))
        + f"\n4 clients / 1 client: {result['four_clients_vs_one']:.2f}x. CPU features: "
        + ", ".join(result["machine"]["cpu_features"]) + "\n")
    for log in out.glob("mdrn-serve-*.log"):  # Triton's own log of the run: not a result
        log.unlink()


if __name__ == "__main__":
    main()
