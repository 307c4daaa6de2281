"""report.json (schema ``mdrn-edge-bench/1``), report.md and PNG plots from one benchmark run.

report.json: ``machine``, ``versions``, ``model``, ``data``, ``settings``, ``matmul_gflops`` (the measured dense
matmul capability per device), ``results`` (one entry per backend, precision, LR size and batch: ``backend``,
``precision``, ``device``, ``lr_size``, ``batch`` and either ``skipped`` (the reason) or ``latency_ms``
{p50, p90, p99, runs} of the fastest of ``rounds`` alternating runs, ``throughput`` (slices/s), ``first_result_s``
(fresh process: import + load + one slice; the soonest of the rounds), ``peak_rss_mb``, ``peak_gpu_mb`` (CUDA only), ``max_abs_err`` and ``psnr_vs_torch_fp32`` (against
PyTorch FP32 CPU on the same input), ``psnr``/``ssim`` (against the HR ground truth), ``achieved_gflops`` and
``share_of_matmul_peak``), ``models`` (Table 3: ``arch``, ``params``, ``flops``, ``latency_ms``,
``peak_mem_mb`` with the paper's figures beside) and ``ratios``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdrn_edge.bench.runner import BACKENDS, MAX_GATED_DROP_DB, NOT_A_SPEED_PATH
from mdrn_edge.fileio import atomic_path, write_json


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


BUSY_LIMIT = 0.1  # share of the CPUs other processes may use before the run without a warning in the report


def busy_note(machine: dict[str, Any]) -> str:
    """What the machine was doing before the run: a benchmark taken beside other work measures that work too."""
    busy = machine.get("cpu_busy_before_run")
    if busy is None:
        return ""
    if busy > BUSY_LIMIT:
        return (f" **Warning: {busy:.0%} of the CPUs were busy with other work when the run began; its times and "
                "ratios are not those of a quiet machine.**")
    return f" CPUs busy with other work when the run began: {busy:.0%}."


def markdown(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        f"# mdrn-bench: {report['model']['name']}",
        "",
        f"Machine: {m.get('cpu_model', m['cpu'])}, {m['cpu_cores']} cores, {m.get('memory_gb', '?')} GB"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; {m['platform']}." + busy_note(m),
        "CPU features: " + (", ".join(m.get("cpu_features") or []) or "not read") + ".",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Data: {', '.join(report['data'])}. Accuracy on [0, 1] with {report['settings']['border_shaved']} pixels shaved.",
        f"Each backend: the fastest of {report['settings'].get('rounds', 1)} runs (fresh processes, the backends taking "
        f"turns), each at least {report['settings']['min_time_s']} s of timed calls after warm-up.",
        "Dense matmul capability measured in this run: "
        + ", ".join(f"{k} {val:.1f} GFLOP/s" for k, val in report["matmul_gflops"].items()) + ".",
        "",
        "| backend | LR size | batch | p50 ms | p90 ms | p99 ms | slices/s | first result s | peak RSS MB | peak GPU MB "
        "| max abs err vs torch | PSNR dB | SSIM | GFLOP/s | share of matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    skipped: dict[str, str] = {}
    for r in report["results"]:
        head = f"| {r['name']} | {r['lr_size']} | {r['batch']} |"
        if "skipped" in r:
            skipped.setdefault(r["name"], r["skipped"])
            continue
        lat = r["latency_ms"]
        lines.append(
            f"{head} {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {r['throughput']:.2f} | "
            f"{r['first_result_s']:.2f} | {r['peak_rss_mb']:.0f} | {_f(r.get('peak_gpu_mb'), '.0f')} | "
            f"{_f(r.get('max_abs_err'), '.1e')} | {_f(r['psnr'], '.2f')} | {_f(r['ssim'], '.4f')} | {r['achieved_gflops']:.1f} | "
            f"{_f(r.get('share_of_matmul_peak'), '.0%')} |")
    if any(r.get("psnr") is None for r in report["results"] if "skipped" not in r):
        lines += ["", "PSNR/SSIM are left out (-) where the data's slices are smaller than the HR the input size needs "
                      "(they would be scored against a bicubic enlargement, not a ground truth): give --data with "
                      "larger real slices (at x4, 1024 x 1024 for --sizes 256)."]
    if skipped:
        lines += ["", "Skipped here (every size):", ""] + [f"- {name}: {why}" for name, why in skipped.items()]
    if report["models"]:
        lines += ["", "## Model efficiency (the paper's Table 3, our numbers)", "",
                  "| model | params | GFLOPs (256x256 LR) | latency ms | peak memory MB | paper memory MB | paper time ms |",
                  "|---|---|---|---|---|---|---|"]
        for row in report["models"]:
            lines.append(f"| {row['arch']} | {row['params']:,} | {row['flops'] / 1e9:.1f} | {_f(row['latency_ms'], '.1f')} | "
                         f"{_f(row['peak_mem_mb'], '.0f')} | {row['paper_peak_mem_mb']} | {row['paper_time_ms']} |")
        row = report["models"][0]
        lines += ["", f"Ours: {row['device']}, LR {row['lr_size']}x{row['lr_size']}, batch 1, PyTorch FP32 eager; memory is "
                  f"{row['peak_mem_kind']}. The paper: {row['paper_device']}. Weights: {row['weights']} (MDRN)."]
    if report.get("series"):
        lines += ["", "## End to end: mdrn-infer on a real series", "",
                  "A fresh `mdrn-infer` process per row (start, read, infer, write DICOM), against plain whole-slice "
                  "ONNX Runtime calls of the same model on the same slices in one warm session.", "",
                  "| series | scale | LR size | slices | tile | wall s | slices/s | GFLOP/s | share of matmul | peak RSS MB "
                  "| vs plain whole-slice calls | tiled vs whole per call |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["series"]:
            lines.append(f"| {r['series']} | x{r['scale']} | {r['lr_size']} | {r['slices']} | {r['tile']} | {r['wall_s']:.1f} | "
                         f"{r['slices_per_s']:.2f} | {r['achieved_gflops']:.1f} | {r['share_of_matmul_peak']:.0%} | "
                         f"{r['peak_rss_mb']:.0f} | {r['speedup_vs_plain_calls']:.2f}x | {r['tiled_vs_whole_per_call']:.2f}x |")
    ratios = report["ratios"]
    if ratios.get("onnxruntime_cpu_speedup"):
        lines += ["", "## Ratios", "", "| LR size / batch | ONNX Runtime CPU vs PyTorch eager CPU | first result, light runtime vs torch |",
                  "|---|---|---|"]
        for key, speed in ratios["onnxruntime_cpu_speedup"].items():
            lines.append(f"| {key} | {speed:.2f}x faster | {ratios['first_result_speedup'][key]:.2f}x sooner |")
    if ratios.get("cpu_speedup_vs_onnxruntime_fp32"):
        lines += ["", "## CPU backends against ONNX Runtime FP32", "",
                  "| LR size / batch | backend | p50 speed-up | PSNR loss dB | |", "|---|---|---|---|---|"]
        for key, rows in ratios["cpu_speedup_vs_onnxruntime_fp32"].items():
            for name, speed in sorted(rows.items(), key=lambda kv: -kv[1]):
                note = ("**fastest gated**" if ratios["fastest_gated_cpu_backend"].get(key) == name else
                        "not a speed path" if BACKENDS.get(name, {}).get("speed_path") is False else "")
                lines.append(f"| {key} | {name} | {speed:.2f}x | {_f(ratios['cpu_psnr_drop_vs_onnxruntime_fp32_db'][key][name], '+.3f')} | {note} |")
        lines += ["", f"Gated: within {MAX_GATED_DROP_DB} dB PSNR of ONNX Runtime FP32. {NOT_A_SPEED_PATH}."]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report["results"] if "skipped" not in r]
    names = sorted({r["name"] for r in done})
    sizes = sorted({r["lr_size"] for r in done})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ys = [next((r["latency_ms"]["p50"] for r in done if r["name"] == name and r["lr_size"] == s and r["batch"] == 1), 0)
              for s in sizes]
        ax.bar([k + i * width for k in range(len(sizes))], ys, width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(sizes))], [f"{s}x{s}" for s in sizes])
    ax.set(xlabel="LR input (batch 1)", ylabel="latency p50 (ms)", yscale="log", title=f"{report['model']['name']}: latency by backend")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [folder / "latency_by_backend.png"]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    largest = max(sizes) if sizes else 0
    for r in done:  # a legend, not labels at the points: points of similar memory and time overlap
        if r["lr_size"] == largest and r["batch"] == 1:
            ax.scatter(r.get("peak_gpu_mb") or r["peak_rss_mb"], r["latency_ms"]["p50"], label=r["name"])
    for row in report["models"]:
        if row.get("latency_ms"):
            ax.scatter(row["peak_mem_mb"], row["latency_ms"], marker="s", label=f"{row['arch']} (torch, {row['lr_size']}px)")
    ax.set(xlabel="peak memory (MB; GPU where measured, else host RSS)", ylabel="latency p50 (ms)",
           title=f"latency against memory ({largest}x{largest} LR, batch 1)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    paths.append(folder / "latency_vs_memory.png")
    with atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return paths


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_json(folder / "report.json", report)]
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(markdown(report))
    written.append(folder / "report.md")
    return written + plots(report, folder)
