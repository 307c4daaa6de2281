import json

import pytest
from click.testing import CliRunner

from corpus import bad_inputs, mr_small, shared_files
from mdrn_edge.cli.main import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_summary_json_reports_the_spec_params():
    res = run("summary", "--arch", "mdrn", "--scale", "4", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["params"] == 257_640 and 32e9 < info["flops"] < 34e9


def test_eval_bicubic_on_the_bundled_sample():
    res = run("eval", mr_small(), "--scale", "4", "--model", "bicubic", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "gain_db", "p_value", "n_slices"):
        assert key in out
    assert out["gain_db"] == 0 and out["n_slices"] == 1 and 15 < out["psnr"] < 50


def test_paper_protocol_reproduces_the_papers_bicubic_row(shared_series):
    res = run("eval", *shared_files(101, 120), "--scale", "4", "--model", "bicubic", "--protocol", "paper", "--json")
    out = json.loads(res.output)
    assert out["n_slices"] == 20 and out["psnr"] == pytest.approx(28.32, abs=0.02)  # spec: 28.32 (paper 28.44)


@pytest.mark.parametrize("case", ["not_dicom", "truncated", "nan_nifti", "one_pixel"])
def test_cli_bad_input_is_one_line_and_nonzero_exit(tmp_path, case):
    res = run("eval", bad_inputs(tmp_path)[case], "--scale", "4", "--model", "bicubic")
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output


def test_unknown_model_name_lists_the_shipped_ones():
    res = run("eval", mr_small(), "--scale", "4", "--model", "mdrn-x5")
    assert res.exit_code != 0 and "shipped .pt models" in res.output


@pytest.mark.parametrize("args", [[], ["summary"], ["eval"], ["sample"], ["train"], ["export"], ["infer"], ["bench"],
                                  ["node"], ["send"], ["serve"]])
def test_every_command_has_complete_help(args):
    res = run(*args, "--help")
    assert res.exit_code == 0 and "Usage:" in res.output
    options = [line for line in res.output.splitlines() if line.strip().startswith("--")]
    assert all(len(line.strip().split(None, 1)) == 2 or line.strip().endswith("]") for line in options if "--help" not in line)


@pytest.mark.parametrize("module,args", [("main", []), ("main", ["eval"]), ("main", ["summary"]), ("main", ["sample"]),
                                         ("train", []), ("export", []), ("infer", []), ("bench", []), ("node", [])])
def test_every_command_takes_h_and_version(module, args):
    import importlib

    import mdrn_edge

    cli = importlib.import_module(f"mdrn_edge.cli.{module}")
    command = cli.main if module == "main" else cli.command
    short = CliRunner().invoke(command, [*args, "-h"])
    assert short.exit_code == 0 and "Usage:" in short.output
    if args not in ([], ["sample"]):  # the group and `sample` print no JSON
        assert "--json" in short.output
    version = CliRunner().invoke(command, [*args, "--version"])
    assert version.exit_code == 0 and mdrn_edge.__version__ in version.output


def test_eval_paper_protocol_defaults_to_the_shipped_paper_model():
    res = run("eval", mr_small(), "--scale", "4", "--protocol", "paper", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["model"] == "mdrn-x4-paper" and out["normalizer"] == "minmax"
    assert json.loads(run("eval", mr_small(), "--scale", "4", "--json", "--no-progress").output)["model"] == "mdrn-x4"


def test_shipped_x4_does_not_turn_lr_noise_into_texture(shared_series):
    """The issue's defect: LR noise sharpened into worm-like texture. With Rician LR noise of 0.03 the shipped x4
    must beat bicubic and keep the background's band-pass energy at or below the ground truth's."""
    res = run("eval", *shared_files(93, 97), "--scale", "4", "--lr-noise", "0.03", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["gain_db"] > 0 and out["bg_hf_ratio"] <= 1.0, out
