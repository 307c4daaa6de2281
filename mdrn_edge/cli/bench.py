"""``mdrn-bench``: latency, throughput, memory and accuracy of every backend, side by side, in one report."""

from __future__ import annotations

from pathlib import Path

import click

from mdrn_edge.cli.common import (
    SETTINGS, OneLineCommand, emit_json, json_option, progress_bar, user_errors, version_option,
)
from mdrn_edge.errors import InputError, require


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r}: give comma-separated whole numbers, e.g. 64,128,256") from None
    if not values or min(values) < 1:
        raise InputError(f"{option} {text!r}: give positive whole numbers")
    return values


@click.command("bench", cls=OneLineCommand, context_settings=SETTINGS)
@version_option
@click.option("--model", default="mdrn-x4", help="Checkpoint or shipped model name.")
@click.option("--backends", default="all", help="Comma-separated backends or 'all' (unavailable ones are reported as skipped).")
@click.option("--sizes", default="64,128,256", help="LR input sizes (square).")
@click.option("--batch", "batches", default="1", help="Batch sizes, comma-separated.")
@click.option("--data", multiple=True, help="Real MRI (DICOM/NIfTI) for inputs and accuracy  [default: the bundled sample].")
@click.option("--min-time", type=float, default=1.0, help="Seconds of timed runs per measurement (after warm-up).")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of every backend per input, taking turns in fresh processes; each keeps its fastest (the "
                   "machine's speed drifts, so one run after another can swap backends' places).")
@click.option("--no-table3", is_flag=True, help="Skip the MDRN/EDSR/RFDN efficiency comparison.")
@click.option("--table3-size", type=int, default=256, help="LR size of the efficiency comparison (the paper's FLOPs are at 256).")
@click.option("--series", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A real DICOM series folder for the end-to-end rows: mdrn-infer's wall time, slices/s and peak RSS "
                   "against plain whole-slice calls, tiled and whole (repeatable).")
@click.option("--series-scales", default="2,4", show_default=True, help="Scales of the end-to-end rows.")
@click.option("--triton", metavar="URL", help="Also measure a model served by Triton (the 'triton' row): triton://HOST:PORT/NAME or grpc://HOST:PORT/NAME, on the same slices and against the same reference.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for report.json, report.md and plots.")
@json_option
@user_errors
def command(model, backends, sizes, batches, data, min_time, rounds, no_table3, table3_size, series, series_scales, triton,
            output, as_json):
    """Benchmark PyTorch, ONNX Runtime and TensorRT on real MRI slices; each backend runs in its own process."""
    require("torch", "bench")
    from mdrn_edge.bench.report import write_report
    from mdrn_edge.bench.runner import BACKENDS, BenchConfig, bench_steps, run_bench

    names = list(BACKENDS) if backends == "all" else [b.strip() for b in backends.split(",")]
    if triton:
        from mdrn_edge.runtime.triton import TritonAddress

        TritonAddress.parse(triton)  # a malformed address is one line before any work
        names += [] if "triton" in names else ["triton"]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)}; valid: {', '.join(BACKENDS)}")
    scales = _ints(series_scales, "--series-scales")
    if not set(scales) <= {2, 4, 8}:
        raise InputError(f"--series-scales {series_scales!r}: the shipped models are x2, x4 and x8")
    cfg = BenchConfig(model=model, backends=names, sizes=_ints(sizes, "--sizes"), batches=_ints(batches, "--batch"),
                      data=data, min_time=min_time, rounds=rounds, table3=not no_table3, table3_size=table3_size,
                      series=series, series_scales=scales, triton=triton)
    with progress_bar(bench_steps(cfg), "bench", not as_json) as bar:
        def tick(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        report = run_bench(cfg, tick)
    files = write_report(report, Path(output))
    if as_json:
        emit_json(report)
    else:
        click.echo(f"wrote {', '.join(str(f) for f in files)}")


if __name__ == "__main__":
    command()
