import numpy as np
import pytest
from skimage.metrics import structural_similarity

from corpus import mr_small, shared_files
from mdrn_edge.data import read_volume
from mdrn_edge.data.degradation import degrade, upscale
from mdrn_edge.metrics import paired_test, psnr, ssim


def real_pair(paths):
    v = read_volume(paths).data
    v = np.clip(v / np.percentile(v, 99.5), 0, 1)
    return v


def skimage_ssim(a, b, border):
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1)


def test_ssim_agrees_with_scikit_image_on_the_bundled_slice():
    hr = real_pair([mr_small()])[0]
    sr = np.clip(upscale(degrade(hr, 4), 4), 0, 1)
    assert abs(ssim(sr, hr, 4) - skimage_ssim(sr, hr, 4)) < 1e-4


def test_ssim_agrees_with_scikit_image_on_real_vs_seg_slices(shared_series):
    v = real_pair(shared_files(101, 104))
    for hr in v:
        sr = np.clip(upscale(degrade(hr, 4), 4), 0, 1)
        assert abs(ssim(sr, hr, 4) - skimage_ssim(sr, hr, 4)) < 1e-4


def test_psnr_known_values_and_shaving():
    a = np.zeros((10, 10))
    b = np.full((10, 10), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    b[0, :] = 1.0  # a bad border row is shaved away
    assert psnr(a, b, border=1) == pytest.approx(20.0)


def test_identical_images_have_ssim_one():
    img = np.random.default_rng(0).random((32, 32))
    assert ssim(img, img) == pytest.approx(1.0)


def test_paired_test_detects_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(0)
    ref = rng.normal(30, 1, 20)
    better = paired_test(ref + 0.5 + rng.normal(0, 0.05, 20), ref)
    assert better.wilcoxon_p < 1e-3 and better.ttest_p < 1e-3 and better.mean_diff == pytest.approx(0.5, abs=0.05)
    noise = paired_test(ref + rng.normal(0, 0.05, 20), ref)
    assert noise.wilcoxon_p > 0.01


def test_texture_measure_sees_sharpened_noise_and_not_smoothing():
    """Air with noise: an output that sharpens it scores above the ground truth, one that smooths it below."""
    from mdrn_edge.metrics import background_texture

    from scipy.ndimage import gaussian_filter

    hr = np.abs(np.random.default_rng(0).normal(0, 0.03, (96, 96)))  # dark, noisy air
    blurred = gaussian_filter(hr, 1.0)
    sharpened = hr + 2.0 * (hr - blurred)
    sums, n = background_texture({"smooth": blurred, "sharp": sharpened}, hr, 4)
    assert n > 0 and sums["smooth"] < sums["hr"] < sums["sharp"]
    tissue = hr.copy()
    tissue[:, 48:] = 0.8  # bright tissue: left out of the measure
    assert 0 < background_texture({}, tissue, 4)[1] < n
