"""The OpenVINO backend (issue 22): the same outputs as ONNX Runtime at FP32, the measured default, gated reduced
precision, the compiled-model cache, and one line for every refusal with nothing written."""

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from corpus import SHARED_SERIES, all_files, digest, mr_small
from corpus import real_series as real_slices
from mdrn_edge.cli.infer import command as infer_cli
from mdrn_edge.errors import InputError
from mdrn_edge.runtime import RuntimeConfig, create_runner, resolve_model_file
from mdrn_edge.runtime.openvino import OpenVINORunner, openvino_unavailable_reason

pytestmark = pytest.mark.skipif(openvino_unavailable_reason() is not None,
                                reason=f"OpenVINO cannot run here: {openvino_unavailable_reason()}")
BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # importing torch now raises ImportError\n"


def infer(*args):
    return CliRunner().invoke(infer_cli, [*map(str, args), "--no-progress"])


def one_line(res, code):
    lines = [line for line in res.output.splitlines() if line.strip()]
    return res.exit_code == code and len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output


def native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def pixels(folder):
    return np.stack([pydicom.dcmread(f).pixel_array for f in sorted(folder.glob("*.dcm"))]).astype(np.int64)


def without_gates(source, target):
    """A copy of an ONNX file whose model info records no gate: what an older mdrn-export wrote."""
    import onnx

    from mdrn_edge.export.artifact import read_metadata, set_metadata

    proto = onnx.load(str(source))
    info = read_metadata(proto, str(source))
    set_metadata(proto, info.with_precision(info.precision))  # with_precision drops the gates
    onnx.save(proto, str(target))
    return target


@pytest.fixture(scope="module")
def real_series(tmp_path_factory):
    """Three real VS-SEG slices (512 x 512: tiled by default) when ../shared is there, else the bundled slice."""
    return real_slices(tmp_path_factory.mktemp("ov") / "in")


def test_openvino_fp32_matches_onnxruntime_within_one_stored_unit_and_auto_runs_without_torch(real_series, tmp_path):
    before = digest(all_files(real_series))
    outs = {}
    for backend, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("auto", "auto")):
        out = tmp_path / backend
        code = BLOCK_TORCH + f"""
from mdrn_edge.cli.infer import command
command([{str(real_series)!r}, '--output', {str(out)!r}, '--backend', {backend!r}, '--precision', {precision!r},
         '--cache-dir', {str(tmp_path / 'cache')!r}, '--json', '--no-progress'])
"""
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        result = json.loads(res.stdout)
        assert result["backend"] == ("openvino" if backend == "auto" else backend), result
        assert precision == "auto" or result["precision"] == "fp32", result
        outs[backend] = pixels(out)
    assert np.abs(outs["openvino"] - outs["onnxruntime"]).max() <= 1
    assert outs["auto"].shape == outs["onnxruntime"].shape
    assert digest(all_files(real_series)) == before


def test_the_default_is_the_fastest_gated_path_here(real_series, tmp_path):
    """auto on a CPU: OpenVINO, in BF16 where the CPU computes it natively (the shipped files carry the gate),
    else FP32; the derived series says which backend and precision made it."""
    res = infer(real_series, "--output", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    expected = "bf16" if native_bf16() else "fp32"
    assert (result["backend"], result["precision"]) == ("openvino", expected), result
    ds = pydicom.dcmread(sorted((tmp_path / "out").glob("*.dcm"))[0])
    assert f"openvino {expected}" in ds.DerivationDescription
    with create_runner(resolve_model_file(None, 4)) as runner:
        gate = runner.info.gates["openvino-bf16"]
        assert gate["passed"] and gate["psnr_drop_db"] <= gate["max_psnr_drop"] <= 0.05


@pytest.mark.skipif(not SHARED_SERIES.is_dir(), reason="needs the real 512 x 512 VS-SEG slices of ../shared/data")
def test_bf16_stays_within_the_gate_on_real_slices_against_fp32(real_series, tmp_path):
    if not native_bf16():
        pytest.skip("this CPU has no native BF16")
    from mdrn_edge.evaluate import compare, make_pairs
    from mdrn_edge.data import read_volume

    with create_runner(resolve_model_file(None, 4), RuntimeConfig("onnxruntime", "cpu")) as ref, \
            create_runner(resolve_model_file(None, 4), RuntimeConfig("openvino", precision="bf16", cache_dir="off")) as bf16:
        vol = read_volume([real_series])
        hr = ref.info.normalizer.fit(vol.data).normalize(vol.data)[:, 128:384, 128:384]
        a, b = compare([ref, bf16], [make_pairs(hr, 4)], 4)
    assert a["psnr"] - b["psnr"] <= 0.05


def test_static_shapes_are_compiled_once_and_bounded(tmp_path):
    with create_runner(resolve_model_file(None, 2), RuntimeConfig("openvino", cache_dir=tmp_path)) as runner:
        for shape in [(1, 1, 20, 24), (1, 1, 20, 24), (2, 1, 20, 24), (1, 1, 16, 16), (1, 1, 17, 16), (1, 1, 18, 16),
                      (1, 1, 20, 24)]:
            assert runner.infer(np.random.rand(*shape).astype(np.float32)).shape == (shape[0], 1, shape[2] * 2, shape[3] * 2)
        assert len(runner._compiled) == 4 and list(runner._compiled)[-1] == (1, 1, 20, 24)
    blobs = sorted(p.name for p in runner.cache.glob("*.blob"))
    assert len(blobs) == 5 and all((runner.cache / b.replace(".blob", ".json")).is_file() for b in blobs)


def test_a_cached_model_gives_the_same_output(tmp_path):
    x = np.random.default_rng(0).random((1, 1, 32, 40), np.float32)
    results = []
    for _ in range(2):
        with create_runner(resolve_model_file(None, 4), RuntimeConfig("openvino", "cpu", "fp32", cache_dir=tmp_path)) as r:
            results.append(r.infer(x))
    assert np.array_equal(*results) and len(list(r.cache.glob("*.blob"))) == 1


# --- refusals: one line each, nothing written ------------------------------------------------------------------

def test_a_foreign_or_unrecorded_blob_in_the_cache_is_refused(tmp_path):
    src = mr_small()
    cache = tmp_path / "cache"
    assert infer(src, "--output", tmp_path / "first", "--backend", "openvino", "--cache-dir", cache).exit_code == 0
    blob = next(cache.rglob("*.blob"))
    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)  # a blob that is not what was recorded
    res = infer(src, "--output", tmp_path / "out", "--backend", "openvino", "--cache-dir", cache)
    assert one_line(res, 3) and "did not write" in res.output and not (tmp_path / "out").exists()
    blob.with_suffix(".json").unlink()  # a blob with no record at all
    res = infer(src, "--output", tmp_path / "out", "--backend", "openvino", "--cache-dir", cache)
    assert one_line(res, 3) and not (tmp_path / "out").exists()


def test_an_unwritable_cache_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = infer(mr_small(), "--output", tmp_path / "out", "--backend", "openvino", "--cache-dir", tmp_path / "file" / "c")
    assert one_line(res, 5) and "OpenVINO cache" in res.output and not (tmp_path / "out").exists()


def test_int8_of_an_fp32_model_and_bf16_on_onnxruntime_are_refused(tmp_path):
    before = digest(all_files(mr_small().parent))
    res = infer(mr_small(), "--output", tmp_path / "out", "--precision", "int8")
    assert one_line(res, 2) and "INT8 Q/DQ model" in res.output
    res = infer(mr_small(), "--output", tmp_path / "out", "--backend", "onnxruntime", "--precision", "bf16")
    assert one_line(res, 2) and "--backend openvino" in res.output
    assert not (tmp_path / "out").exists() and digest(all_files(mr_small().parent)) == before


def test_an_ungated_bf16_is_refused_unless_asked(tmp_path):
    if not native_bf16():
        pytest.skip("this CPU has no native BF16 (the refusal for that is tested below)")
    model = without_gates(resolve_model_file(None, 4), tmp_path / "old.onnx")
    res = infer(mr_small(), "--output", tmp_path / "out", "--model", model, "--precision", "bf16")
    assert one_line(res, 2) and "no OpenVINO BF16 gate" in res.output and not (tmp_path / "out").exists()
    res = infer(mr_small(), "--output", tmp_path / "auto", "--model", model, "--json")  # auto: FP32, and says why
    assert res.exit_code == 0 and '"precision": "fp32"' in res.output and "no openvino-bf16 gate" in res.output
    res = infer(mr_small(), "--output", tmp_path / "out", "--model", model, "--precision", "bf16", "--allow-ungated", "--json")
    assert res.exit_code == 0 and '"precision": "bf16"' in res.output and "ungated, as asked" in res.output


def test_bf16_on_a_cpu_without_it_is_refused():
    """The decision as the runner makes it, given what OpenVINO reports of a CPU without BF16 (an AVX-512 EPYC)."""
    runner = OpenVINORunner(resolve_model_file(None, 4), RuntimeConfig("openvino", precision="bf16"))
    with create_runner(resolve_model_file(None, 4), RuntimeConfig("openvino", cache_dir="off")) as probe:
        runner.info = probe.info
    with pytest.raises(InputError, match="no native BF16"):
        runner._choose_precision({"FP32", "INT8", "FP16", "EXPORT_IMPORT"})
    auto = OpenVINORunner(resolve_model_file(None, 4), RuntimeConfig("openvino"))
    auto.info = runner.info
    auto._choose_precision({"FP32", "INT8"})
    assert (auto.precision, auto.reason) == ("fp32", "no BF16 on this CPU")


def test_an_openvino_too_old_is_one_line(tmp_path):
    fake = tmp_path / "site" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '2023.0.0-10926-b4452d56304-releases/2023/0'\n")
    code = f"""
import sys; sys.path.insert(0, {str(tmp_path / 'site')!r})
from mdrn_edge.cli.infer import command
command([{str(mr_small())!r}, '--output', {str(tmp_path / 'out')!r}, '--backend', 'openvino', '--no-progress'])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 4 and len(lines) == 1 and "older than 2024.0" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_a_cuda_device_on_openvino_is_refused(tmp_path):
    res = infer(mr_small(), "--output", tmp_path / "out", "--backend", "openvino", "--device", "cuda")
    assert one_line(res, 2) and "Intel CPUs, GPUs and NPUs" in res.output


def test_mdrn_export_openvino_records_the_bf16_gate(tmp_path):
    if not native_bf16():
        pytest.skip("this CPU has no native BF16: the BF16 gate is skipped with that reason")
    from mdrn_edge.cli.export import command as export_cli

    model = without_gates(resolve_model_file(None, 8), tmp_path / "mdrn-x8.onnx")
    res = CliRunner().invoke(export_cli, [str(model), "--output", str(tmp_path / "out"), "--openvino", "--no-engine", "--json"])
    assert res.exit_code == 0, res.output
    gates = json.loads(res.output[res.output.index("{"):])["openvino_gates"]
    assert gates["bf16"]["passed"] and gates["bf16"]["psnr_drop_db"] <= 0.05
    with create_runner(tmp_path / "out" / "mdrn-x8.onnx", RuntimeConfig(cache_dir="off")) as runner:
        assert runner.precision == "bf16" and runner.info.gates["openvino-bf16"]["cpu"]


def test_a_corrupt_model_is_one_line_on_stderr_even_below_python(tmp_path):
    """OpenVINO's generic reader tries every frontend and TensorFlow's prints parse errors from C++ on stderr:
    the ONNX frontend alone is asked, so the process writes our one line and nothing else."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    res = subprocess.run([sys.executable, "-m", "mdrn_edge.cli.infer", str(mr_small()), "--output", str(tmp_path / "out"),
                          "--model", str(bad), "--no-progress"], capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 3 and len(lines) == 1 and "OpenVINO cannot read it" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()
