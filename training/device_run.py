"""One prepared run for a lent GPU: fine-tune the shipped x2/x4/x8 on all of ``../shared/data`` for a fixed
wall-clock budget, then benchmark torch on CUDA, writing everything under ``$OUT``.

    python training/device_run.py --pack                      # here, once: training/.pack/mri.npz (ignored)
    python training/device_run.py --out "$OUT"                # on the device machine (carry training/.pack)
    python training/device_run.py --cpu-smoke --out /tmp/x    # the same code path, 2 iterations a scale (CI)

The device image has torch with CUDA and NumPy but no pydicom or nibabel and no network, so the DICOM is read
here and packed (uint16, compressed) with each set's train/dev split; the run imports only torch, NumPy and the
torch-free parts of mdrn_edge (models, checkpoints, degradation, metrics). The three scales train at once, one
process each (MDRN is small: one process leaves most of an H200 idle), each for the whole budget less the
benchmark's share. The recipe is the shipped one (L1, Adam 2.5e-4 with betas 0.9/0.99, patch 192, Rician LR
noise of up to 0.04 on a quarter of the patches, halving at half and three quarters of the budget), from the
shipped weights, with a linear warm-up over the first 5% (fresh Adam moments otherwise move every weight by the
full rate at once) and bf16 autocast with channels_last. Each scale keeps its best dev-PSNR weights; then
``python training/ship.py`` measures them on everything held apart before anything ships (training/DEVICE_RUN.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the device machine runs the working tree, not an installed package

SHARED = ROOT.parent / "shared" / "data"
PACK = ROOT / "training" / ".pack" / "mri.npz"
# each set's split, as ../shared/data/README.md gives it: (folder, file pattern, train range, dev range)
SETS = {
    "vs-seg-001-t1": ("1-{:03d}.dcm", (1, 90), (101, 120)),
    "philips-mprage-t1": ("1301_{:04d}.dcm", (21, 130), (141, 150)),
    "siemens-flash-t1": ("{:04d}_*.dcm", (1, 28), (31, 35)),  # files are NNNN_<SOPInstanceUID>.dcm
}
SCALES = (2, 4, 8)
RECIPE = {"patch": 192, "lr": 2.5e-4, "betas": (0.9, 0.99), "milestones": (0.5, 0.75), "gamma": 0.5,
          "lr_noise": 0.04, "noise_share": 0.25, "warmup": 0.05}
BENCH_RESERVE_S = 75  # of --minutes: the CUDA benchmark and the writing after training
FOREGROUND_LEVEL, MIN_FOREGROUND = 0.05, 0.25  # as the CPU trainer's patches: at least a quarter tissue


# --- the pack (here, with pydicom) -----------------------------------------------------------------------------
def pack(shared: Path = SHARED, path: Path = PACK) -> Path:
    """Every set's train and dev slices (their stored values, as byte planes) in one compressed file."""
    import pydicom

    arrays: dict[str, np.ndarray] = {}
    for name, (pattern, train, dev) in SETS.items():
        for split, (first, last) in (("train", train), ("dev", dev)):
            files = [next((shared / name).glob(pattern.format(i))) for i in range(first, last + 1)]
            stored = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype("<u2")
            # low and high bytes as two planes: the high byte of 12-bit MRI is nearly constant and deflates well
            # (the pack is 20% smaller than as uint16: noisy air fills the low byte)
            arrays[f"{name}/{split}"] = np.ascontiguousarray(np.moveaxis(stored.view(np.uint8).reshape(*stored.shape, 2), -1, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_pack(path: Path, normalizer) -> dict[str, list[np.ndarray]]:
    """``{"train": [...], "dev": [...]}``: each set's slices in [0, 1], normalised per series as training does
    (the split's slices of one series share one fit, over train and dev together)."""
    data = np.load(path)
    out: dict[str, list[np.ndarray]] = {"train": [], "dev": []}
    stored = lambda key: data[key][0].astype(np.uint16) | (data[key][1].astype(np.uint16) << 8)  # noqa: E731
    for name in SETS:
        train, dev = stored(f"{name}/train"), stored(f"{name}/dev")
        scaling = normalizer.fit(np.concatenate([train, dev]))
        out["train"] += list(scaling.normalize(train).astype(np.float32))
        out["dev"] += list(scaling.normalize(dev).astype(np.float32))
    return out


# --- training one scale ---------------------------------------------------------------------------------------
class Patches:
    """HR/LR patch pairs drawn on the device: every train slice and its LR (made once, on the CPU, with the shipped
    degradation) zero-padded into one tensor, crops at scale-aligned positions with at least a quarter tissue
    (chosen up front from integral images), random 90-degree rotations and flips, Rician LR noise."""

    def __init__(self, slices: list[np.ndarray], scale: int, patch: int, device, seed: int = 0) -> None:
        import torch

        from mdrn_edge.data.degradation import crop_to_multiple, degrade

        slices = [crop_to_multiple(s, scale) for s in slices]
        side = max(max(s.shape) for s in slices)
        hr = np.zeros((len(slices), side, side), np.float32)
        lr = np.zeros((len(slices), side // scale, side // scale), np.float32)
        positions = []
        for k, s in enumerate(slices):
            hr[k, : s.shape[0], : s.shape[1]] = s
            low = degrade(s, scale)
            lr[k, : low.shape[0], : low.shape[1]] = low
            tissue = np.pad((s > FOREGROUND_LEVEL).astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            ys, xs = np.arange(0, s.shape[0] - patch + 1, scale), np.arange(0, s.shape[1] - patch + 1, scale)
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            share = (tissue[yy + patch, xx + patch] - tissue[yy, xx + patch] - tissue[yy + patch, xx] + tissue[yy, xx]) / patch**2
            keep = share >= MIN_FOREGROUND
            positions.append(np.stack([np.full(keep.sum(), k), yy[keep], xx[keep]], 1))
        self.positions = torch.from_numpy(np.concatenate(positions)).to(device)
        self.hr, self.lr = torch.from_numpy(hr).to(device), torch.from_numpy(lr).to(device)
        self.scale, self.patch, self.device = scale, patch, device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def batch(self, n: int, lr_noise: float, noise_share: float):
        import torch

        g, s, p = self.generator, self.scale, self.patch
        pick = self.positions[torch.randint(len(self.positions), (n,), generator=g, device=self.device)]
        k, y, x = pick[:, 0, None, None], pick[:, 1, None, None], pick[:, 2, None, None]
        a = torch.arange(p, device=self.device)
        hr = self.hr[k, y + a[None, :, None], x + a[None, None, :]]
        b = torch.arange(p // s, device=self.device)
        lr = self.lr[k, y // s + b[None, :, None], x // s + b[None, None, :]]
        turn = torch.randint(8, (n,), generator=g, device=self.device)
        for t in range(8):  # the 8 flips and rotations, each applied to its share of the batch
            m = turn == t  # (no m.any(): a host sync per turn; an empty mask costs nothing)
            if t:
                hr[m], lr[m] = self._turn(hr[m], t), self._turn(lr[m], t)
        sigma = torch.rand(n, generator=g, device=self.device) * lr_noise
        sigma = torch.where(torch.rand(n, generator=g, device=self.device) < noise_share, sigma, 0)[:, None, None]
        noisy = torch.sqrt((lr + sigma * torch.randn(lr.shape, generator=g, device=self.device)) ** 2
                           + (sigma * torch.randn(lr.shape, generator=g, device=self.device)) ** 2)
        lr = torch.where(sigma > 0, noisy, lr)
        return lr[:, None].contiguous(), hr[:, None].contiguous()

    @staticmethod
    def _turn(x, t: int):
        import torch

        x = torch.rot90(x, t % 4, (1, 2))
        return torch.flip(x, (2,)) if t >= 4 else x


def dev_pairs(dev: list[np.ndarray], scale: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """The dev slices' (LR, HR) pairs and bicubic's mean PSNR on them, made once: every validation reuses them."""
    from mdrn_edge.data.degradation import crop_to_multiple, degrade, upscale
    from mdrn_edge.metrics import psnr

    pairs = [(degrade(hr, scale), hr) for hr in (crop_to_multiple(d, scale) for d in dev)]
    return pairs, float(np.mean([psnr(np.clip(upscale(lr, scale), 0, 1), hr, scale) for lr, hr in pairs]))


def validate(model, dev: tuple[list[tuple[np.ndarray, np.ndarray]], float], scale: int, device) -> dict[str, float]:
    """Mean PSNR (dB, [0, 1], ``scale`` pixels shaved) of the model on the dev pairs in FP32, against bicubic's."""
    import torch

    from mdrn_edge.metrics import psnr

    pairs, bicubic = dev
    model.eval()
    with torch.no_grad():
        ours = float(np.mean([psnr(np.clip(model(torch.from_numpy(lr)[None, None].to(device)).float().cpu().numpy()[0, 0],
                                           0, 1), hr, scale) for lr, hr in pairs]))
    model.train()
    return {"psnr": ours, "bicubic_psnr": bicubic, "gain_db": ours - bicubic}


def learning_rate(fraction: float) -> float:
    """The shipped schedule on the budget's time axis: linear warm-up, then halving at each milestone."""
    base = RECIPE["lr"] * RECIPE["gamma"] ** sum(fraction >= m for m in RECIPE["milestones"])
    return base * min(1.0, (fraction + 1e-9) / RECIPE["warmup"])


def train_scale(scale: int, pack_file: Path, out: Path, seconds: float, batch: int, device_name: str,
                max_iterations: int | None, patch: int, compile_model: bool) -> dict:
    """Fine-tune the shipped x``scale`` for ``seconds`` (or ``max_iterations``); write its slim checkpoint (best
    dev PSNR) and its log under ``out``; return the summary."""
    import torch

    from mdrn_edge.hardware import device_name as describe
    from mdrn_edge.models.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint, slim
    from mdrn_edge.modelinfo import ModelInfo
    from mdrn_edge.weights import resolve_model

    device = torch.device(device_name)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    source = resolve_model(f"mdrn-x{scale}", ".pt")
    ckpt = load_checkpoint(source)
    model = model_from_checkpoint(ckpt, source).to(device).train()
    info = ModelInfo.from_dict(ckpt["model_info"], str(source))
    data = load_pack(pack_file, info.normalizer)
    if device.type == "cpu":  # the smoke run: a few centre crops of dev slices, so that 2 cores finish in seconds
        data["dev"] = [d[d.shape[0] // 2 - 48 : d.shape[0] // 2 + 48, d.shape[1] // 2 - 48 : d.shape[1] // 2 + 48]
                       for d in data["dev"][::12]]
    patches = Patches(data["train"], scale, patch, device, seed=scale)
    dev = dev_pairs(data["dev"], scale)
    net = model.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if compile_model else net
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"], betas=RECIPE["betas"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_path = out / f"mdrn-x{scale}-device.log.jsonl"
    log = log_path.open("w")

    def record(entry: dict) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()

    start = validate(net, dev, scale, device)
    record({"iteration": 0, "seconds": 0.0, **start, "note": "the shipped weights"})
    best = {**start, "iteration": 0, "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
    t0, it, next_val, losses = time.perf_counter(), 0, 0.25, []
    while True:
        fraction = (time.perf_counter() - t0) / seconds
        if fraction >= 1 or (max_iterations is not None and it >= max_iterations):
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(fraction if max_iterations is None else it / max_iterations)
        lr, hr = patches.batch(batch, RECIPE["lr_noise"], RECIPE["noise_share"])
        with autocast:
            loss = torch.nn.functional.l1_loss(step_net(lr.to(memory_format=torch.channels_last)).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        losses.append(loss.detach())
        if it % 50 == 0:
            record({"iteration": it, "seconds": round(time.perf_counter() - t0, 1),
                    "loss": float(torch.stack(losses).mean()), "lr": opt.param_groups[0]["lr"]})
            losses = []
        if fraction >= next_val:
            next_val += 0.25
            best = keep_best(best, net, dev, scale, device, it, t0, record)
    best = keep_best(best, net, dev, scale, device, it, t0, record)
    wall = time.perf_counter() - t0
    log.close()
    train_config = {**ckpt.get("train_config", {}), **{k: list(v) if isinstance(v, tuple) else v for k, v in RECIPE.items()},
                    "batch_size": batch, "patch": patch, "iterations": it, "budget_seconds": seconds,
                    "init_from": f"mdrn_edge/weights/mdrn-x{scale}.pt", "data": list(SETS), "autocast": "bf16",
                    "channels_last": True, "compiled": compile_model}
    shipped = slim(ckpt)
    shipped.update(state_dict=best["state_dict"], iteration=best["iteration"], train_config=train_config,
                metrics={"dev_psnr": best["psnr"], "dev_gain_db": best["gain_db"]},
                provenance={**ckpt.get("provenance", {}), "device": describe(device), "wall_seconds": wall,
                            "run": "training/device_run.py"})
    atomic_save(shipped, out / f"mdrn-x{scale}-device.pt")
    return {"scale": scale, "iterations": it, "wall_s": round(wall, 1), "iterations_per_s": round(it / wall, 2),
            "patches_per_s": round(it * batch / wall, 1), "start": start,
            "best": {k: best[k] for k in ("iteration", "psnr", "gain_db")}, "device": describe(device)}


def keep_best(best: dict, net, dev, scale: int, device, it: int, t0: float, record) -> dict:
    """Validate; the better weights of the two (by dev PSNR) are kept."""
    now = validate(net, dev, scale, device)
    record({"iteration": it, "seconds": round(time.perf_counter() - t0, 1), **now})
    if now["psnr"] > best["psnr"]:
        return {**now, "iteration": it, "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
    return best


# --- the CUDA benchmark -----------------------------------------------------------------------------------------
def benchmark(models: dict[str, Path], device_name: str, size: int, runs: int, compile_model: bool) -> list[dict]:
    """The paper's Table 3 row on this device: latency (CUDA events, median) and peak memory of each model at a
    ``size`` x ``size`` x4 input in eager FP32, TF32, FP16 and BF16 autocast, channels_last, and compiled."""
    import torch

    from mdrn_edge.models.checkpoint import load_checkpoint, model_from_checkpoint

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    x = torch.rand(1, 1, size, size, device=device)
    modes = [("fp32", None, False, False), ("tf32", None, True, False), ("fp16", torch.float16, False, False),
             ("bf16", torch.bfloat16, False, False), ("bf16-channels-last", torch.bfloat16, False, True)]
    if compile_model:
        modes.append(("bf16-compiled", torch.bfloat16, False, True))
    rows = []
    for name, path in models.items():
        net = model_from_checkpoint(load_checkpoint(path), path).to(device).eval()
        for mode, dtype, tf32, channels_last in modes if cuda else modes[:1]:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            m = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            inp = x.to(memory_format=torch.channels_last) if channels_last else x
            row = {"model": name, "mode": mode, "lr_size": size, "scale": 4}
            try:
                t_compile = time.perf_counter()
                fn = torch.compile(m) if mode.endswith("compiled") else m
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    fn(inp)
                    row["first_call_s"] = round(time.perf_counter() - t_compile, 2)
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(runs):
                        t = time.perf_counter()
                        if cuda:
                            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            start.record()
                            fn(inp)
                            end.record()
                            torch.cuda.synchronize()
                            times.append(start.elapsed_time(end))
                        else:
                            fn(inp)
                            times.append((time.perf_counter() - t) * 1e3)
                row["latency_ms"] = round(float(np.median(times)), 3)
                row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
            except Exception as exc:  # a mode this torch or GPU cannot run is recorded, not fatal
                row["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            rows.append(row)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


# --- the command ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", action="store_true", help="read ../shared/data here and write the data pack")
    ap.add_argument("--pack-file", type=Path, default=PACK, help="the data pack (default training/.pack/mri.npz)")
    ap.add_argument("--out", type=Path, help="folder for checkpoints, logs and the benchmark ($OUT on the device)")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget in all (training and benchmark)")
    ap.add_argument("--scales", default="2,4,8")
    ap.add_argument("--batch", type=int, default=64, help="patches per step")
    ap.add_argument("--sequential", action="store_true", help="train the scales one after another, not at once")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network for training and a bench row")
    ap.add_argument("--cpu-smoke", action="store_true", help="2 iterations a scale on the CPU, small patches (CI)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one scale, in its own process
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pack:
        path = pack(path=args.pack_file)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if not args.out:
        ap.error("--out is required (or --pack)")
    if not args.pack_file.is_file():
        print(f"Error: no data pack at {args.pack_file}; run python training/device_run.py --pack here first", file=sys.stderr)
        return 2
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("Error: no CUDA GPU visible to torch; use --cpu-smoke to try the code path on the CPU", file=sys.stderr)
        return 2
    smoke = {"max_iterations": 2, "patch": 48, "batch": 2} if args.cpu_smoke else {"max_iterations": None,
                                                                                      "patch": RECIPE["patch"], "batch": args.batch}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        summary = train_scale(args.worker, args.pack_file, args.out, args.seconds, smoke["batch"], device, smoke["max_iterations"],
                              smoke["patch"], args.compile)
        (args.out / f".x{args.worker}.json").write_text(json.dumps(summary))
        return 0
    scales = [int(s) for s in args.scales.split(",")]
    t0 = time.perf_counter()
    train_s = max(10.0, args.minutes * 60 - BENCH_RESERVE_S)
    per_scale = train_s if not args.sequential else train_s / len(scales)
    worker = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--pack-file", str(args.pack_file),
              "--seconds", str(per_scale), "--batch", str(args.batch)] + (["--cpu-smoke"] if args.cpu_smoke else []) \
        + (["--compile"] if args.compile else [])
    procs = []
    for s in scales:
        cmd = [*worker, "--worker", str(s)]
        procs.append(subprocess.Popen(cmd) if not args.sequential else subprocess.run(cmd))
    codes = [p.wait() if isinstance(p, subprocess.Popen) else p.returncode for p in procs]
    runs = []
    for s, code in zip(scales, codes):
        marker = args.out / f".x{s}.json"
        runs.append(json.loads(marker.read_text()) if code == 0 and marker.is_file() else {"scale": s, "failed": code})
        marker.unlink(missing_ok=True)
    from mdrn_edge.weights import resolve_model

    models = {"shipped mdrn-x4": resolve_model("mdrn-x4", ".pt")}
    if (args.out / "mdrn-x4-device.pt").is_file():
        models["device mdrn-x4"] = args.out / "mdrn-x4-device.pt"
    bench = benchmark(models, device, 64 if args.cpu_smoke else 256, 2 if args.cpu_smoke else 50,
                      args.compile and not args.cpu_smoke)
    summary = {"schema": "mdrn-edge-device-run/1", "device": runs[0].get("device") if runs else device,
               "torch": torch.__version__, "cuda": torch.version.cuda, "minutes": args.minutes,
               "concurrent": not args.sequential, "cpu_smoke": args.cpu_smoke, "recipe": RECIPE, "runs": runs,
               "cuda_bench": bench, "wall_s": round(time.perf_counter() - t0, 1)}
    (args.out / "device_run.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({r["scale"]: r.get("best", r) for r in runs}))
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
