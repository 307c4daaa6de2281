import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mdrn_edge.data.degradation import crop_to_multiple, cubic, degrade, imresize, resize_matrix, upscale
from mdrn_edge.models import build_model


def keys_kernel(x, a=-0.5):
    """The cubic kernel written out independently (Keys 1981), point by point."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def test_cubic_kernel_matches_the_written_out_formula():
    xs = np.linspace(-2.5, 2.5, 101)
    assert np.allclose(cubic(xs), [keys_kernel(x) for x in xs])


def test_upsampling_a_tiny_array_by_hand():
    """x2 upsampling of [0, 1, 4, 9]: output pixel 3 (0-based) sits at input coordinate 1.25."""
    a = np.array([[0.0, 1.0, 4.0, 9.0]], np.float32)
    out = imresize(a, (1, 8))
    # centre u = (3 + 0.5) / 2 - 0.5 = 1.25; taps at 0..3 with distances 1.25, 0.25, 0.75, 1.75
    w = np.array([keys_kernel(1.25), keys_kernel(0.25), keys_kernel(0.75), keys_kernel(1.75)])
    assert out[0, 3] == pytest.approx(float(w @ a[0] / w.sum()), abs=1e-6)


def test_downsampling_by_hand_widens_the_kernel():
    """x1/2 with antialiasing: kernel 0.5 * k(0.5 x), support 8 input pixels; mirrored border."""
    a = np.arange(16, dtype=np.float32)[None] ** 1.5
    out = imresize(a, (1, 8))
    u = (4 + 0.5) * 2 - 0.5  # centre of output pixel 4 in input coordinates
    taps = np.arange(int(np.floor(u - 4)), int(np.floor(u - 4)) + 10)
    w = np.array([0.5 * keys_kernel(0.5 * (u - t)) for t in taps])
    ref = float(w @ a[0, taps] / w.sum())
    assert out[0, 4] == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("out_hw", [(20, 24), (10, 12), (80, 96), (13, 17)])
def test_matches_pillow_bicubic_on_interior_pixels(out_hw):
    img = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    ours = imresize(img, out_hw)
    pil = np.asarray(Image.fromarray(img, mode="F").resize(out_hw[::-1], Image.BICUBIC))
    assert np.abs(ours - pil)[4:-4, 4:-4].max() < 1e-5


def test_torch_kernel_matches_torch_interpolate_without_antialias():
    img = np.random.default_rng(1).random((40, 48)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(img)[None, None], size=(10, 12), mode="bicubic", align_corners=False)[0, 0]
    assert np.abs(imresize(img, (10, 12), antialias=False, kernel="torch") - ref.numpy()).max() < 1e-5


def test_rows_sum_to_one_and_constant_images_stay_constant():
    for n_in, n_out in [(7, 28), (64, 16), (512, 64), (5, 3)]:
        assert np.allclose(resize_matrix(n_in, n_out).sum(1), 1)
    assert np.allclose(degrade(np.full((2, 32, 32), 0.3, np.float32), 4), 0.3, atol=1e-6)


def test_degrade_refuses_uncropped_and_crop_fixes_it():
    hr = np.zeros((1, 30, 33), np.float32)
    with pytest.raises(ValueError, match="multiple of scale"):
        degrade(hr, 4)
    assert degrade(crop_to_multiple(hr, 4), 4).shape == (1, 7, 8)


def test_bicubic_model_is_the_same_function_as_upscale():
    lr = np.random.default_rng(2).random((9, 11)).astype(np.float32)
    with torch.no_grad():
        y = build_model("bicubic", 3)(torch.from_numpy(lr)[None, None])[0, 0].numpy()
    assert np.allclose(y, upscale(lr, 3), atol=1e-5)


def test_kspace_degradation_keeps_intensity_and_is_the_low_frequencies():
    from mdrn_edge.data.degradation import kspace_degrade

    assert np.allclose(kspace_degrade(np.full((2, 32, 32), 0.3, np.float32), 4), 0.3, atol=1e-6)
    y, x = np.mgrid[:64, :64]
    smooth = (np.cos(2 * np.pi * x / 64) * 0.2 + 0.5).astype(np.float32)[None]  # one cycle: inside the kept band
    centres = (np.cos(2 * np.pi * (x[:16, :16] * 4 + 1.5) / 64) * 0.2 + 0.5)  # LR pixel k at HR 4k + 1.5
    assert np.allclose(kspace_degrade(smooth, 4)[0], centres, atol=1e-4)
    fine = (np.cos(np.pi * x / 2) * 0.2 + 0.5).astype(np.float32)[None]  # 16 cycles: beyond the LR band, removed
    assert np.allclose(kspace_degrade(fine, 4), 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        kspace_degrade(smooth, 4, "gauss")


def test_rician_noise_has_the_magnitude_statistics():
    from mdrn_edge.data.degradation import rician_noise

    rng = np.random.default_rng(0)
    dark = rician_noise(np.zeros((200, 200), np.float32), 0.03, rng)
    assert dark.min() >= 0 and abs(dark.mean() - 0.03 * np.sqrt(np.pi / 2)) < 1e-3  # Rayleigh in air
    bright = rician_noise(np.ones((200, 200), np.float32), 0.03, rng)
    assert abs(bright.std() - 0.03) < 2e-3  # Gaussian-like where the signal is high
    assert rician_noise(np.ones((4, 4), np.float32), 0.0, rng) is not None
