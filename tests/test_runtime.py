import json
import subprocess
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from corpus import mr_small
from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import crop_to_multiple, degrade
from mdrn_edge.metrics import psnr
from mdrn_edge.runtime import create_runner, resolve_model_file
from mdrn_edge.runtime.tiling import blend_weights, plan_tiles, ramp, run_tiled

BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # importing torch now raises ImportError\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_runtime_import_and_onnx_inference_do_not_import_torch():
    code = f"""
import sys, numpy as np
import mdrn_edge.runtime
from mdrn_edge.runtime import create_runner, resolve_model_file, super_resolve
from mdrn_edge.runtime.pipeline import super_resolve_volume
from mdrn_edge.data import read_volume
import mdrn_edge.runtime.tensorrt, mdrn_edge.runtime.pacs, mdrn_edge.data.writers, mdrn_edge.cli.infer
vol = read_volume([{str(mr_small())!r}])
with create_runner(resolve_model_file(None, 4)) as r:
    out = np.concatenate([sr for _, sr in super_resolve_volume(vol, r)])
assert out.shape == (1, 256, 256), out.shape
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'scipy', 'matplotlib'))
print(heavy)
"""
    res = run_python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_mdrn_infer_runs_with_torch_unimportable(tmp_path):
    out = tmp_path / "out"
    code = BLOCK_TORCH + f"""
from mdrn_edge.cli.infer import command
command([{str(mr_small())!r}, '--output', {str(out)!r}, '--json', '--no-progress'])
"""
    res = run_python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["n_slices"] == 1 and (out / "0001.dcm").exists()


# --- tiling -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,tile,overlap", [(256, 256, 160, 71), (100, 37, 64, 20), (50, 50, 64, 10), (129, 200, 96, 95)])
def test_tiles_cover_the_slice_and_stay_inside(h, w, tile, overlap):
    cover = np.zeros((h, w), int)
    for y0, y1, x0, x1 in plan_tiles(h, w, tile, overlap):
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1


def test_neighbouring_tiles_overlap_by_at_least_the_requested_amount():
    starts = sorted({y0 for y0, *_ in plan_tiles(300, 300, 128, 71)})
    assert all(b - a <= 128 - 71 for a, b in zip(starts, starts[1:]))


def test_ramps_are_positive_and_only_on_shared_edges():
    w = ramp(10, 4, 0)
    assert w.min() > 0 and np.all(np.diff(w[:4]) > 0) and np.all(w[4:] == 1)
    weights = blend_weights((0, 64, 36, 100), 100, 100, 20, 2)
    assert weights[0, -1] == 1 and weights[-1, 0] < 0.05  # image border edges unramped, shared edges ramped


def test_blending_reproduces_a_local_operator_exactly():
    """For a model without global statistics (here nearest-neighbour x3), tiles blend back to the whole result."""
    img = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    nearest = lambda batch: np.repeat(np.repeat(batch, 3, axis=2), 3, axis=3)  # noqa: E731
    tiled = run_tiled(nearest, img, 3, tile=32, overlap=12, batch=3)
    assert np.allclose(tiled, nearest(img[None, None])[0, 0], atol=1e-6)


def test_tiled_matches_whole_slice_on_a_real_1024_slice():
    """MR2_UNCR (1024 x 1024 T1, pydicom-data) at x4: LR 256 x 256 in 3 x 3 tiles of 160 with the default overlap."""
    vol = read_volume([get_testdata_file("MR2_UNCR.dcm")])
    with create_runner(resolve_model_file("mdrn-x4", None)) as runner:
        hr = runner.info.normalizer.fit(vol.data).normalize(crop_to_multiple(vol.data, 4))[0]
        lr = degrade(hr, 4)
        whole = runner.infer(lr[None, None])[0, 0]
        overlap = runner.info.receptive_field
        assert overlap == 71 and len(plan_tiles(256, 256, 160, overlap)) == 9
        tiled = run_tiled(runner.infer, lr, 4, tile=160, overlap=overlap)
    clip = lambda a: np.clip(a, 0, 1)  # noqa: E731
    agreement = psnr(clip(tiled), clip(whole))
    gt_diff = abs(psnr(clip(tiled), clip(hr), 4) - psnr(clip(whole), clip(hr), 4))
    print(f"tiled vs whole {agreement:.2f} dB; PSNR vs ground truth differs by {gt_diff:.4f} dB")
    assert agreement >= 45 and gt_diff <= 0.02


def test_tensorrt_backend_refuses_onnx_files_and_vice_versa(tmp_path):
    from mdrn_edge.errors import InputError

    onnx_file = resolve_model_file("mdrn-x4", None)
    with pytest.raises(InputError, match="runs engines"):
        create_runner(onnx_file, backend="tensorrt")
    with pytest.raises(InputError, match="runs on --backend tensorrt"):
        create_runner(tmp_path / "m.engine", backend="onnxruntime")


def test_runner_refuses_nan_output_and_bad_batches():
    from mdrn_edge.errors import InputError
    from mdrn_edge.runtime.base import InferenceError

    with create_runner(resolve_model_file("mdrn-x4", None), device="cpu") as runner:
        with pytest.raises(InputError, match="N x 1 x H x W"):
            runner.infer(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(InferenceError, match="NaN/Inf"):
            runner.infer(np.full((1, 1, 8, 8), np.nan, np.float32))
