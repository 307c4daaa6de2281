"""CPU runtimes when other work shares the cores: ``python benchmarks/busy_cpu.py [--out DIR]``.

A node beside the scanner decodes, writes and sends DICOM while it infers, so the CPU is rarely quiet. This
measures, in one run on one machine, ONNX Runtime FP32 with its intra-op threads spinning (its default) and not
(``session.intra_op.allow_spinning=0``), with 1 thread and with all cores, and OpenVINO FP32 and (where the CPU has
it) BF16, each on a quiet machine and beside one busy process per other core (a Python loop, as DICOM encoding
is). Calls alternate between the ways and each keeps its fastest of the rounds (this VM's speed drifts);
results are ratios to ONNX Runtime's default in the same condition. Writes ``busy_cpu.json`` and ``busy_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _spin(stop) -> None:  # one core's worth of Python work (what a writer thread's encoding looks like)
    x = 0
    while not stop.is_set():
        for i in range(10000):
            x += i * i


def ways(model: Path) -> dict:
    """Name -> infer(batch) of every way measured."""
    import onnxruntime as ort

    from mdrn_edge.runtime import RuntimeConfig, create_runner
    from mdrn_edge.runtime.openvino import device_precisions, import_openvino

    cores = os.cpu_count() or 1
    out = {}
    for threads in sorted({1, cores}):
        for spinning in ("1", "0"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            out[f"onnxruntime-fp32 t{threads} spin{spinning}"] = lambda x, s=session: s.run(None, {"lr": x})[0]
    precisions = ["fp32"] + (["bf16"] if "BF16" in device_precisions(import_openvino().Core()) else [])
    for precision in precisions:
        for threads in sorted({1, cores}):
            runner = create_runner(model, RuntimeConfig("openvino", "cpu", precision, threads=threads, cache_dir="off"))
            out[f"openvino-{precision} t{threads}"] = runner.activate().infer
    return out


def measure(fns: dict, x: np.ndarray, rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn(x)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: round(t * 1e3, 1) for name, t in best.items()}


def main() -> None:
    from mdrn_edge.bench.runner import machine
    from mdrn_edge.hardware import cpu_busy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "busy-cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    busy_before = cpu_busy()
    model = ROOT / "mdrn_edge" / "weights" / "mdrn-x4.onnx"
    x = np.random.default_rng(0).random((1, 1, args.size, args.size), dtype=np.float32)
    fns = ways(model)
    results = {"quiet": measure(fns, x, args.rounds)}
    stop = mp.Event()
    load = [mp.Process(target=_spin, args=(stop,)) for _ in range(max(1, (os.cpu_count() or 1) - 1))]
    for p in load:
        p.start()
    try:
        results["busy"] = measure(fns, x, args.rounds)
    finally:
        stop.set()
        for p in load:
            p.join()
    base = next(n for n in fns if n.endswith(f"t{os.cpu_count()} spin1"))
    ratios = {cond: {n: round(r[base] / ms, 2) for n, ms in r.items()} for cond, r in results.items()}
    report = {"machine": {**machine(), "cpu_busy_before_run": busy_before}, "lr_size": args.size,
              "rounds": args.rounds, "model": "mdrn-x4 (shipped ONNX)", "busy_processes": len(load),
              "p_best_ms": results, "speedup_vs_onnxruntime_default": ratios, "baseline": base}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "busy_cpu.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    lines = [f"# CPU runtimes beside other work (mdrn-x4, {args.size}x{args.size} LR)", "",
             f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores; features {', '.join(m['cpu_features'])}; "
             f"{busy_before:.0%} busy before the run. Busy: {len(load)} Python process(es) spinning beside the call. "
             f"Best of {args.rounds} alternating calls; speed-up against `{base}` (ONNX Runtime's default) in the "
             "same condition.", "", "| way | quiet ms | busy ms | quiet speed-up | busy speed-up | busy / quiet |",
             "|---|---|---|---|---|---|"]
    for name in fns:
        q, b = results["quiet"][name], results["busy"][name]
        lines.append(f"| {name} | {q} | {b} | {ratios['quiet'][name]:.2f}x | {ratios['busy'][name]:.2f}x | {b / q:.2f}x |")
    (args.out / "busy_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
