import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from corpus import SHARED_SERIES, mr_small
from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import crop_to_multiple, degrade
from mdrn_edge.metrics import psnr
from mdrn_edge.data.volume import Volume
from mdrn_edge.errors import InputError
from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file
from mdrn_edge.runtime.onnxruntime import OnnxRuntimeRunner
from mdrn_edge.runtime.pipeline import super_resolve_volume
from mdrn_edge.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, axis_weights, plan_axis, run_tiled, tiled_rows

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
import mdrn_edge.node, mdrn_edge.cli.node
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

@pytest.mark.parametrize("length,tile,overlap", [(512, 128, 8), (274, 128, 8), (100, 64, 20), (50, 64, 10),
                                                  (129, 96, 95), (3000, 128, 8), (135, 128, 8)])
def test_spans_cover_the_axis_equally_and_overlap_enough(length, tile, overlap):
    spans = plan_axis(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert len({b - a for a, b in spans}) == 1  # equal tiles: no thin last tile
    assert all(a2 < b1 and b1 - a2 >= min(overlap, b1 - a1) for (a1, b1), (a2, _) in zip(spans, spans[1:]))
    if length > tile:  # about the tile's size, never a long way off
        assert abs((spans[0][1] - spans[0][0]) - tile) <= tile // 2


def test_512_in_tiles_of_128_takes_four_tiles_per_axis_not_five():
    assert plan_axis(512, 128, 8) == [(0, 134), (126, 260), (252, 386), (378, 512)]


@pytest.mark.parametrize("length,tile,overlap", [(300, 128, 8), (129, 96, 95), (70, 32, 12)])
def test_blending_weights_sum_to_one_everywhere(length, tile, overlap):
    spans = plan_axis(length, tile, overlap)
    total = np.zeros(length * 3, np.float32)
    for (a, b), w in zip(spans, axis_weights(spans, 3)):
        assert w.min() > 0
        total[a * 3 : b * 3] += w
    assert np.allclose(total, 1, atol=1e-6)


@pytest.mark.parametrize("tile,overlap,batch", [(32, 12, 3), (40, 39, 1), (16, 0, 2)])
def test_blending_reproduces_a_local_operator_exactly(tile, overlap, batch):
    """For a model without global statistics (here nearest-neighbour x3), tiles blend back to the whole result."""
    img = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    nearest = lambda batch: np.repeat(np.repeat(batch, 3, axis=2), 3, axis=3)  # noqa: E731
    tiled = run_tiled(nearest, img, 3, tile=tile, overlap=overlap, batch=batch)
    assert np.allclose(tiled, nearest(img[None, None])[0, 0], atol=1e-6)


def test_stitching_streams_rows_in_order_a_band_at_a_time():
    """Rows leave as soon as they are final: no block is taller than a band of tiles, so memory is bounded by
    the tile, not the slice."""
    img = np.zeros((1000, 60), np.float32)
    nearest = lambda batch: np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)  # noqa: E731
    blocks = list(tiled_rows(nearest, img, 2, tile=64, overlap=8))
    assert [row for row, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks[:-1]]))
    assert sum(len(b) for _, b in blocks) == 2000 and max(len(b) for _, b in blocks) <= 2 * 64


@pytest.fixture(scope="module")
def real_lr():
    """Real LR slices: MR2_UNCR (1024 x 1024 T1, pydicom-data) at half size, and a VS-SEG slice where present."""
    slices = [("MR2_UNCR", read_volume([get_testdata_file("MR2_UNCR.dcm")]))]
    if SHARED_SERIES.is_dir():
        slices.append(("VS-SEG 1-060", read_volume([SHARED_SERIES / "1-060.dcm"])))
    return [(name, crop_to_multiple(vol.data, 2)) for name, vol in slices]


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_default_tiles_are_seam_free_on_real_mri_at_every_shipped_scale(real_lr, scale):
    """The default overlap (8 LR pixels, not the 71 of MDRN's receptive field) agrees with the whole slice to
    >= 45 dB on real MRI: CCA's global statistics barely move between a tile and the slice."""
    with create_runner(resolve_model_file(None, scale)) as runner:
        for name, data in real_lr:
            lr = degrade(runner.info.normalizer.fit(data).normalize(data)[0], 2)
            whole = runner.infer(lr[None, None])[0, 0]
            tiled = run_tiled(runner.infer, lr, scale, DEFAULT_TILE, DEFAULT_OVERLAP)
            assert len(plan_axis(lr.shape[0], DEFAULT_TILE, DEFAULT_OVERLAP)) > 1  # really tiled
            agreement = psnr(np.clip(tiled, 0, 1), np.clip(whole, 0, 1))
            print(f"x{scale} {name}: default tiles vs whole slice {agreement:.1f} dB")
            assert agreement >= 45, (name, agreement)


def test_tensorrt_backend_refuses_onnx_files_and_vice_versa(tmp_path):
    from mdrn_edge.errors import InputError

    onnx_file = resolve_model_file("mdrn-x4", None)
    with pytest.raises(InputError, match="runs engines"):
        create_runner(onnx_file, RuntimeConfig("tensorrt"))
    with pytest.raises(InputError, match="runs on --backend tensorrt"):
        create_runner(tmp_path / "m.engine", RuntimeConfig("onnxruntime"))


def test_runner_refuses_nan_output_and_bad_batches():
    from mdrn_edge.errors import InputError
    from mdrn_edge.runtime.base import InferenceError

    with create_runner(resolve_model_file("mdrn-x4", None), RuntimeConfig(device="cpu")) as runner:
        with pytest.raises(InputError, match="N x 1 x H x W"):
            runner.infer(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(InferenceError, match="NaN/Inf"):
            runner.infer(np.full((1, 1, 8, 8), np.nan, np.float32))


class ProfiledRunner(OnnxRuntimeRunner):
    """ONNX Runtime computing, with a TensorRT-like profile (batch 1, at most 100 x 100 LR) enforced as TensorRT
    does, and every input shape recorded: what the pipeline asks of an engine, checked without one."""

    LIMITS = ((1, 1, 16, 16), (1, 1, 100, 100))

    def __init__(self, path):
        super().__init__(path, device="cpu")
        self.shapes = []

    def input_limits(self):
        return self.LIMITS

    def check_shape(self, shape):
        self.shapes.append(shape)
        lo, hi = self.LIMITS
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"input {shape} is outside the profile")


def test_batches_and_tiles_stay_within_an_engine_profile():
    """#12 audit item 2: series of several slices were batched 8 at a time against batch-1 profiles."""
    data = np.stack([read_volume([get_testdata_file("MR2_UNCR.dcm")]).data[0][300 + k : 500 + k, 400:580]
                     for k in range(3)])
    volume = Volume(data=data, kind="nifti", sources=[Path("three.nii")])
    with ProfiledRunner(resolve_model_file("mdrn-x4", None)) as runner:
        out = np.concatenate([sr for _, sr in super_resolve_volume(volume, runner)])
        assert out.shape == (3, 800, 720) and runner.shapes
        assert all(n == 1 and 16 <= h <= 100 and 16 <= w <= 100 for n, _, h, w in runner.shapes)
        with pytest.raises(InputError, match="--batch 1"):
            list(super_resolve_volume(volume, runner, batch=4))
        with pytest.raises(InputError, match="larger than the engine's profile admits"):
            list(super_resolve_volume(volume, runner, tile=128))


def test_a_pycuda_that_cannot_create_a_context_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    """pycuda.autoprimaryctx (the primary context, shared with TensorRT and the CUDA runtime; never autoinit's own
    context) raises its own RuntimeError on a machine without a usable GPU ("cuInit failed: no CUDA-capable device
    is detected"); the adapter turns it into a CudaError. pycuda cannot be installed here
    (sdist against a CUDA toolkit), so a package with pycuda's module layout and that failure stands in for it."""
    pkg = tmp_path / "pycuda"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "driver.py").write_text("")
    (pkg / "autoinit.py").write_text("raise AssertionError('autoinit makes a context of its own: never imported')\n")
    (pkg / "autoprimaryctx.py").write_text("raise RuntimeError('cuInit failed: no CUDA-capable device is detected')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mdrn_edge.runtime import cuda

    monkeypatch.setattr(cuda, "_import_cudart", lambda: None)  # as on a machine with pycuda but not cuda-python
    with pytest.raises(cuda.CudaError, match="pycuda could not create a CUDA context.*no CUDA-capable device") as err:
        cuda.cuda_adapter()
    assert "\n" not in str(err.value)
    for name in [m for m in sys.modules if m.split(".")[0] == "pycuda"]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_the_tensorrt_install_hint_fits_the_machine(monkeypatch, machine):
    """On a Jetson (aarch64) PyPI's TensorRT and CUDA wheels do not match JetPack: the hint says to use JetPack's own
    TensorRT through a --system-site-packages venv and a cuda-python pinned to JetPack 6.1's CUDA 12.6 (#24 item 10)."""
    import platform

    from mdrn_edge.errors import MissingDependencyError
    from mdrn_edge.runtime import tensorrt

    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    monkeypatch.setattr(tensorrt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError) as err:
        tensorrt.import_tensorrt()
    text = str(err.value)
    if machine == "aarch64":
        assert "--system-site-packages" in text and "cuda-python>=12.6,<12.7" in text and "not the [gpu] extra" in text
    else:
        assert "[gpu]" in text and "system-site-packages" not in text
