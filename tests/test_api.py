"""The core API: export(), super_resolve(), the typed model contract and the runner family, as library calls."""

import json

import nibabel as nib
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from corpus import mr_small
from helpers import train_tiny
from mdrn_edge.cli.export import command as export_cli
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.data import read_volume
from mdrn_edge.data.normalize import Normalizer
from mdrn_edge.errors import ModelFileError
from mdrn_edge.evaluate import compare, predict, prepare_pairs
from mdrn_edge.modelinfo import METADATA_KEY, ModelInfo
from mdrn_edge.models.runner import TorchRunner
from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def paper_export(tmp_path_factory):
    """A 2-iteration ``mdrn-train --protocol paper`` checkpoint, exported with ``mdrn-export``."""
    root = tmp_path_factory.mktemp("paper")
    ckpt = train_tiny(root / "run", 4, 2, "--protocol", "paper")
    res = CliRunner().invoke(export_cli, [str(ckpt), "--output", str(root / "out"), "--json"])
    assert res.exit_code == 0, res.output
    return ckpt, json.loads(res.output)["onnx"]


def test_a_paper_protocol_model_carries_the_minmax_normaliser_into_its_onnx(paper_export):
    _, onnx_path = paper_export
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    info = json.loads(meta[METADATA_KEY])
    assert info["normalizer"]["mode"] == "minmax" and info["protocol"] == "paper"
    assert info["receptive_field"] == 71 and info["fp32_layers"]


def test_mdrn_infer_with_a_paper_model_matches_mdrn_evals_prediction(paper_export, tmp_path):
    """mdrn eval predicts on per-slice min-max LR; mdrn-infer must normalise, predict and invert the same way."""
    ckpt, onnx_path = paper_export
    with TorchRunner(ckpt) as runner:
        pairs = prepare_pairs(read_volume([mr_small()]), 4, "paper", runner.info.normalizer)
        lo, hi = pairs.lr.min(axis=(1, 2), keepdims=True), pairs.lr.max(axis=(1, 2), keepdims=True)
        lr = ((pairs.lr - lo) / (hi - lo)).astype(np.float32)  # exactly [0, 1] per slice: what min-max gives back
        expected = predict(runner, lr)  # the prediction mdrn eval scores
    stored = lr * 1500 + 100  # the same LR in a scanner's units
    nib.save(nib.Nifti1Image(np.moveaxis(stored, 0, 2), np.eye(4)), tmp_path / "lr.nii.gz")
    res = CliRunner().invoke(infer_cli, [str(tmp_path / "lr.nii.gz"), "--output", str(tmp_path / "sr.nii"), "--model",
                                         onnx_path, "--nifti-dtype", "float32", "--clip", "none",
                                         "--no-progress"])  # eval scores the unclipped prediction
    assert res.exit_code == 0, res.output
    sr = np.moveaxis(np.asarray(nib.load(tmp_path / "sr.nii").dataobj), 2, 0)
    got = (sr - 100) / 1500
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3


def test_model_info_round_trips_and_refuses_unknown_or_ill_typed_fields():
    info = ModelInfo("mdrn", 4, Normalizer.minmax(), "paper", receptive_field=71)
    assert ModelInfo.from_dict(info.to_dict()) == info
    assert ModelInfo.from_json(info.to_json()) == info
    for bad, expected in [({**info.to_dict(), "colour": "red"}, "unknown model info keys"),
                          ({**info.to_dict(), "scale": "4"}, "scale must be a positive integer"),
                          ({**info.to_dict(), "normalizer": {"mode": "zscore"}}, "normaliser mode"),
                          ({**info.to_dict(), "protocol": "mine"}, "protocol must be one of"),
                          ([1, 2], "not a JSON object")]:
        with pytest.raises(ModelFileError, match=expected) as err:
            ModelInfo.from_dict(bad, "m.onnx")
        assert "\n" not in str(err.value) and str(err.value).startswith("m.onnx: ")


def test_checkpoint_onnx_and_engine_sidecar_carry_the_same_model_info(paper_export):
    ckpt, onnx_path = paper_export
    import torch

    stored = torch.load(ckpt, weights_only=True)["model_info"]
    meta = json.loads({p.key: p.value for p in onnx.load(onnx_path).metadata_props}[METADATA_KEY])
    same = ("arch", "scale", "normalizer", "protocol", "degradation", "config", "receptive_field",
            "bytes_per_lr_pixel", "fp32_layers")
    assert {k: stored[k] for k in same} == {k: meta[k] for k in same}


def test_compare_runs_torch_and_onnx_runtime_through_one_contract(paper_export):
    ckpt, onnx_path = paper_export
    with TorchRunner(ckpt) as t, OnnxRuntimeRunner(onnx_path, device="cpu") as o:
        pairs = [prepare_pairs(read_volume([mr_small()]), 4, "paper", t.info.normalizer)]
        ref, cand = compare([t, o], pairs, 4)
    assert ref["max_abs_err"] == 0 and cand["max_abs_err"] < 1e-4
    assert abs(ref["psnr"] - cand["psnr"]) < 1e-3 and cand["runner"]["backend"] == "onnxruntime"


def test_the_library_calls_of_the_readme(tmp_path):
    """export() and super_resolve() as the README shows them; super_resolve needs no torch (test_runtime)."""
    from mdrn_edge.export import ExportConfig, export
    from mdrn_edge.runtime import super_resolve

    artifacts = export("mdrn-x2", tmp_path / "export", ExportConfig(fp16=True, engine=False))
    assert [a.format for a in artifacts] == ["onnx", "onnx_fp16"]
    assert artifacts[1].checks["psnr_drop_db"] <= 0.05 and artifacts[0].checks["max_abs_err"] <= 1e-4
    result = super_resolve([mr_small()], tmp_path / "sr", model=artifacts[0].path)
    assert result.n_slices == 1 and result.scale == 2 and len(list((tmp_path / "sr").glob("*.dcm"))) == 1


def test_architecture_facts_are_declared_by_the_model_files():
    from mdrn_edge.models import architecture_facts, available_models, build_model

    assert available_models(trainable=True) == ["edsr", "mdrn", "rfdn"]
    facts = {a: architecture_facts(a, build_model(a, 4)) for a in ("mdrn", "edsr", "rfdn")}
    assert facts["mdrn"]["receptive_field"] == 71  # 8 n + 7 (spec: every 3x3 on the path)
    assert architecture_facts("mdrn", build_model("mdrn", 4, num_block=4))["receptive_field"] == 39
    assert facts["edsr"]["receptive_field"] == 73 and facts["rfdn"]["receptive_field"] > 71
    assert facts["mdrn"]["fp32_layers"] and facts["edsr"]["fp32_layers"] is None
    assert all(f["bytes_per_lr_pixel"] > 0 for f in facts.values())


def test_baseline_checkpoints_store_their_configs(tmp_path):
    from mdrn_edge.models import build_model, model_config

    assert model_config(build_model("edsr", 2, num_block=4)) == {"scale": 2, "in_channels": 1, "num_feat": 64, "num_block": 4}
    assert model_config(build_model("rfdn", 4))["num_feat"] == 50
