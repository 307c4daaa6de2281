import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from corpus import make_series, mr_small
from mdrn_edge.cli.train import command as train_cli
from mdrn_edge.models.checkpoint import load_checkpoint, load_model

TINY = ["--scale", "4", "--patch", "32", "--batch-size", "4", "--val-every", "3", "--save-every", "1",
        "--iterations", "6", "--no-progress", "--threads", "1"]


@pytest.fixture
def data(tmp_path):
    return make_series(tmp_path / "train", 3), mr_small()


def train(out, data, *extra):
    train_dir, val = data
    res = CliRunner().invoke(train_cli, ["--data", train_dir, "--val", val, "--output", out, *TINY, *map(str, extra)])
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("extra", [[], ["--ema", "0.5"]], ids=["plain", "ema"])
def test_interrupted_and_resumed_run_reaches_the_same_weights(tmp_path, data, extra):
    train(tmp_path / "straight", data, *extra)
    train(tmp_path / "split", data, "--stop-after", "4", *extra)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 4
    CliRunner().invoke(train_cli, ["--output", tmp_path / "split", "--resume", "--no-progress", "--threads", "1"])
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for weights in ("state_dict", "train_state_dict") if extra else ("state_dict",):
        for k in a[weights]:
            assert torch.equal(a[weights][k], b[weights][k]), (weights, k)


def test_with_ema_the_weight_average_is_validated_kept_and_shipped(tmp_path, data):
    from mdrn_edge.models.checkpoint import slim

    train(tmp_path / "run", data, "--ema", "0.5")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["train_config"]["ema"] == 0.5 and last["ema_updates"] == 6
    # the average of six Adam steps is not the last step: state_dict (what is validated and loaded) is the average
    assert any(not torch.equal(last["state_dict"][k], last["train_state_dict"][k]) for k in last["state_dict"])
    assert "train_state_dict" not in slim(last) and "ema_updates" not in slim(last)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert best["best"]["psnr"] == max(r["val_psnr"] for r in log if "val_psnr" in r)
    model, _, _ = load_model(tmp_path / "run" / "last.pt")
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)


def test_checkpoints_load_weights_only_and_hold_what_the_card_needs(tmp_path, data):
    train(tmp_path / "run", data)
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=True)  # no pickled objects: safe to load
        for key in ("state_dict", "config", "scale", "model_info", "iteration", "metrics", "provenance"):
            assert key in ckpt
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {"optimizer", "rng"} <= set(ckpt) and ckpt["provenance"]["torch"] == torch.__version__
    assert "1 of" in ckpt["provenance"]["device"]  # the CPU and the threads it trained with (--threads 1)
    model, _, _ = load_model(tmp_path / "run" / "best.pt")
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r and "bicubic_psnr" in r for r in log)
    assert (tmp_path / "run" / "curve.png").stat().st_size > 1000


def test_the_learning_rate_warms_up_linearly_then_halves_at_the_milestones():
    from mdrn_edge.train.trainer import TrainConfig

    cfg = TrainConfig(lr=1e-4, iterations=100, warmup=9)
    assert [cfg.lr_at(i) for i in (0, 4, 9, 49, 50, 75)] == pytest.approx([1e-5, 5e-5, 1e-4, 1e-4, 5e-5, 2.5e-5])
    assert TrainConfig(lr=1e-4, iterations=100).lr_at(0) == 1e-4  # no warm-up unless asked


def test_a_pickled_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "mdrn-edge-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="not a loadable weights-only checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("args,expected", [
    (["--patch", "30"], "not a multiple of scale"),
    (["--patch", "128"], "smaller than the HR patch"),
    (["--ema", "1"], "'--ema'"),
    (["--warmup", "-1"], "'--warmup'"),
])
def test_bad_training_input_is_one_line(tmp_path, data, args, expected):
    train_dir, val = data
    res = CliRunner().invoke(train_cli, ["--data", train_dir, "--val", val, "--output", tmp_path / "r", *TINY, *args])
    assert res.exit_code != 0 and expected in res.output and "Traceback" not in res.output


def test_resume_refuses_a_foreign_checkpoint(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "last.pt").write_bytes(b"garbage")
    res = CliRunner().invoke(train_cli, ["--output", tmp_path / "r", "--resume"])
    assert res.exit_code != 0 and "not a loadable" in res.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_last_and_exits_cleanly(tmp_path, data, sig):
    train_dir, val = data
    cmd = [sys.executable, "-m", "mdrn_edge.cli.train", "--data", str(train_dir), "--val", str(val), "--output",
           str(tmp_path / "r"), *TINY[:8], "--iterations", "100000", "--save-every", "1000", "--no-progress", "--json"]
    # started as a background job would be: SIGINT ignored on entry, as a non-interactive shell's "&" leaves it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = tmp_path / "r" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "val_psnr" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "r" / "last.pt")["iteration"] >= 3


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo_train_and_resume(tmp_path, data):
    train_dir, val = data
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "mdrn_edge.cli.train"]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*base, "--data", str(train_dir), "--val", str(val), "--output", str(out), *TINY,
                            "--stop-after", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 3 and ckpt["provenance"]["world_size"] == 2
    second = subprocess.run([*base, "--output", str(out), "--resume", "--no-progress"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert load_checkpoint(out / "last.pt")["iteration"] == 6
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("arch", ["edsr", "rfdn"])
def test_baselines_train_with_the_same_trainer(tmp_path, data, arch):
    train_dir, val = data
    res = CliRunner().invoke(train_cli, ["--data", train_dir, "--val", val, "--output", tmp_path / arch, "--arch", arch,
                                         *TINY[:2], "--patch", "64", *TINY[4:10], "--iterations", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    model, ckpt, info = load_model(tmp_path / arch / "last.pt")
    assert ckpt["arch"] == arch and type(model).__name__ == arch.upper()


def test_training_reads_several_series_of_different_sizes(tmp_path):
    """A researcher's own data: several patients' series (here two series, 64 and 48 pixels) and a NIfTI volume."""
    import nibabel as nib
    import numpy as np
    import pydicom

    a = make_series(tmp_path / "p1", 2)
    b = make_series(tmp_path / "p2", 2, size=48)
    arr = pydicom.dcmread(mr_small()).pixel_array.astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([arr, arr[::-1]], axis=2), np.eye(4)), tmp_path / "p3.nii.gz")
    res = CliRunner().invoke(train_cli, ["--data", a, "--data", b, "--data", tmp_path / "p3.nii.gz", "--val", b, "--val", mr_small(),
                                         "--output", tmp_path / "r", *TINY])
    assert res.exit_code == 0, res.output
    from mdrn_edge.train.trainer import read_log

    val = [r for r in read_log(tmp_path / "r") if "val_psnr" in r]
    assert val and np.isfinite(val[-1]["val_psnr"])


@pytest.mark.parametrize("protocol", ["antialiased", "paper"])
def test_training_validates_on_the_pairs_mdrn_eval_scores_for_its_protocol(tmp_path, data, protocol):
    """A run trained on a protocol's degradation reports the bicubic reference ``mdrn eval --protocol`` reports:
    the training patches, the dev pairs and the evaluation share one normalisation and one kernel."""
    from mdrn_edge.cli.main import main as cli
    from mdrn_edge.train.trainer import read_log

    train(tmp_path / "r", data, "--protocol", protocol)
    logged = [r for r in read_log(tmp_path / "r") if "bicubic_psnr" in r][-1]
    res = CliRunner().invoke(cli, ["eval", str(data[1]), "--scale", "4", "--model", "bicubic", "--protocol", protocol,
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert logged["bicubic_psnr"] == pytest.approx(json.loads(res.output)["bicubic_psnr"], abs=1e-6)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["train_config"]["protocol"] == protocol
