"""FID/KID: TF1 resize, the TF-Inception wrapper, the Fréchet/KID math, the real-feature cache (§9.2)."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gmpi_core.data.datasets import ImageSource, write_dataset_zip
from gmpi_core.eval.fid import (
    FEATURE_DIM,
    RealFeatureCache,
    TFInceptionFeatures,
    default_inception_path,
    extract_features,
    fid_kid_from_features,
    frechet_distance,
    kid_subset_size,
    real_features,
    select_real_images,
    tf1_resize_bilinear,
)

# --- TF1 bilinear resize ------------------------------------------------------------------------------------


def test_tf1_resize_matches_a_hand_computed_2x2_to_3x3_example():
    # src = dst·2/3 → rows/cols read at 0, 2/3, 4/3 (upper neighbour clamped to index 1)
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    expected = torch.tensor(
        [[0.0, 20 / 3, 10.0], [40 / 3, 20.0, 70 / 3], [20.0, 80 / 3, 30.0]]
    )  # e.g. centre: row 0 at x=2/3 → 20/3, row 1 → 80/3, lerp 2/3 → 20
    assert torch.allclose(tf1_resize_bilinear(x, (3, 3))[0, 0], expected, atol=1e-5)


def test_tf1_resize_has_no_half_pixel_offset_unlike_torch_align_corners_false():
    x = torch.tensor([[[[0.0, 10.0]]]])
    ours = tf1_resize_bilinear(x, (1, 4))[0, 0, 0]
    assert ours.tolist() == [0.0, 5.0, 10.0, 10.0]  # src = 0, 0.5, 1, 1.5 (clamped)
    half_pixel = F.interpolate(x, size=(1, 4), mode="bilinear", align_corners=False)[0, 0, 0]
    assert half_pixel.tolist() == [0.0, 2.5, 7.5, 10.0]


def test_tf1_resize_downsampling_reads_source_samples_without_antialiasing():
    x = torch.arange(6.0).view(1, 1, 1, 6)
    assert tf1_resize_bilinear(x, (1, 3))[0, 0, 0].tolist() == [0.0, 2.0, 4.0]


def _tf1_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Float64 loops over the TF1 formula: src = dst·in/out, lower = floor, upper = min(lower+1, in−1)."""
    in_h, in_w = x.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = i * in_h / out_h
        y0 = math.floor(sy)
        y1, wy = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = j * in_w / out_w
            x0 = math.floor(sx)
            x1, wx = min(x0 + 1, in_w - 1), sx - x0
            top = x[y0, x0] * (1 - wx) + x[y0, x1] * wx
            bottom = x[y1, x0] * (1 - wx) + x[y1, x1] * wx
            out[i, j] = top * (1 - wy) + bottom * wy
    return out


@pytest.mark.parametrize(("shape", "size"), [((7, 5), (11, 3)), ((32, 32), (299, 299)), ((40, 24), (13, 17))])
def test_tf1_resize_matches_the_formula_on_random_images(shape, size):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, shape)
    ours = tf1_resize_bilinear(torch.tensor(image, dtype=torch.float32)[None, None], size)[0, 0].numpy()
    assert np.abs(ours - _tf1_reference(image, *size)).max() < 2e-3  # float32 vs float64


# --- the TorchScript feature extractor ----------------------------------------------------------------------


class _RangeProbe(nn.Module):
    """TF-range interface: reports the input side, min and max of what it receives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        side = torch.full((n,), float(x.shape[-1]))
        return torch.stack([side, x.flatten(1).min(1).values, x.flatten(1).max(1).values], 1)


class _NvidiaLike(nn.Module):
    """NVIDIA ``inception-2015-12-05.pt`` interface: raw uint8 images, ``return_features``."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.to(torch.float32).mean(dim=(2, 3))


def test_tf_range_torchscript_gets_299_inputs_in_minus_one_to_127_over_128(tmp_path):
    path = tmp_path / "probe.pt"
    torch.jit.script(_RangeProbe()).save(str(path))
    ext = TFInceptionFeatures(path)
    assert not ext.internal_resize and ext.extractor_id.endswith("tf1-bilinear-299")
    images = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 255.0)]).to(torch.uint8)
    out = ext(images)
    assert out[:, 0].tolist() == [299.0, 299.0]
    assert out[0, 1:].tolist() == [-1.0, -1.0] and out[1, 1:].tolist() == [127 / 128, 127 / 128]


def test_nvidia_style_torchscript_is_detected_and_fed_the_raw_images(tmp_path):
    path = tmp_path / "nv.pt"
    torch.jit.script(_NvidiaLike()).save(str(path))
    ext = TFInceptionFeatures(path)
    assert ext.internal_resize and ext.extractor_id.endswith(":internal")
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    assert torch.allclose(ext(images), images.float().mean(dim=(2, 3)))


def test_a_state_dict_file_is_rejected_with_the_accepted_formats_named(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"not a TorchScript module.*default_1\.pt"):
        TFInceptionFeatures(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TFInceptionFeatures(tmp_path / "missing.pt")


def _real_inception_or_skip() -> TFInceptionFeatures:
    try:
        default_inception_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return TFInceptionFeatures()


@pytest.mark.slow
def test_real_inception_gives_finite_2048d_features_and_fid_zero_for_identical_sets():
    ext = _real_inception_or_skip()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (2, 3, 24, 24)).astype(np.float64)
    clean = torch.tensor(base, dtype=torch.uint8)
    noisy = torch.tensor(np.clip(base + rng.normal(0, 60, base.shape), 0, 255), dtype=torch.uint8)
    with torch.inference_mode():
        f_clean, f_noisy = ext(clean), ext(noisy)
    assert f_clean.shape == (2, FEATURE_DIM) and torch.isfinite(f_clean).all()
    assert f_clean.min() >= 0  # pool3 follows a ReLU
    same = fid_kid_from_features(f_clean.numpy(), f_clean.numpy(), compute_kid=False).fid
    apart = fid_kid_from_features(f_clean.numpy(), f_noisy.numpy(), compute_kid=False).fid
    assert abs(same) < 1e-6 and apart > 1.0


# --- FID / KID math -----------------------------------------------------------------------------------------


class ChannelStats(nn.Module):
    """A cheap stand-in feature extractor: per-channel mean and std of uint8 images → [N, 6]."""

    num_features = 6
    extractor_id = "test-channel-stats"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _images(n: int, seed: int, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colour = rng.uniform(40, 215, (n, 3, 1, 1))
    texture = rng.normal(0, 20, (n, 3, 16, 16))
    extra = np.random.default_rng(seed + 1000).normal(0, noise, (n, 3, 16, 16)) if noise else 0.0
    return np.clip(colour + texture + extra, 0, 255).astype(np.uint8)


def _features(images: np.ndarray) -> np.ndarray:
    batches = (torch.from_numpy(images[i : i + 16]) for i in range(0, len(images), 16))
    return extract_features(ChannelStats(), batches, total=len(images), progress=False)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_added_noise():
    clean = _features(_images(200, seed=0))
    fids = [
        fid_kid_from_features(clean, _features(_images(200, 0, s)), compute_kid=False).fid
        for s in (0, 15, 40)
    ]
    assert fids[0] == pytest.approx(0.0, abs=1e-9)
    assert 0 < fids[1] < fids[2]


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    a, b = (
        torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64),
        torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64),
    )
    mu1, mu2 = (
        torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64),
        torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64),
    )
    # ‖μ₁−μ₂‖² + Σ(√a − √b)² = (1 + 0 + 4) + (1 + 1 + 0)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(7.0, abs=1e-10)


def test_fid_equals_torchmetrics_eigvals_formula_for_full_rank_and_rank_deficient_sets():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from gmpi_core.eval.fid import FeatureInput

    rng = np.random.default_rng(1)
    mix = rng.normal(size=(16, 16))
    for n_real, n_fake in ((300, 200), (9, 12)):  # the second has fewer samples than dimensions
        real = rng.normal(size=(n_real, 16)) @ mix
        fake = rng.normal(0.3, 1.2, size=(n_fake, 16)) @ mix
        reference = FrechetInceptionDistance(feature=FeatureInput(16))
        reference.update(torch.tensor(real), real=True)
        reference.update(torch.tensor(fake), real=False)
        expected = float(reference.compute())
        ours = fid_kid_from_features(real, fake, compute_kid=False).fid
        assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_kid_subset_size_is_the_minimum_of_1000_and_both_counts():
    assert kid_subset_size(50_000, 50_000) == 1000
    assert kid_subset_size(5000, 300) == 300 and kid_subset_size(40, 5000) == 40
    rng = np.random.default_rng(2)
    small = fid_kid_from_features(rng.normal(size=(30, 4)), rng.normal(size=(45, 4)), kid_subsets=5)
    assert small.kid_subset_size == 30 and small.kid_subsets == 5
    large = fid_kid_from_features(rng.normal(size=(1100, 4)), rng.normal(size=(1050, 4)), kid_subsets=3)
    assert large.kid_subset_size == 1000


def test_kid_is_near_zero_for_one_distribution_and_larger_for_a_shifted_one_and_reproducible():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = rng.normal(0.5, 1.0, size=(400, 8))
    same = fid_kid_from_features(a, b, kid_subsets=20)
    apart = fid_kid_from_features(a, shifted, kid_subsets=20)
    assert abs(same.kid_mean) < 0.02 and apart.kid_mean > 0.1
    assert fid_kid_from_features(a, shifted, kid_subsets=20).kid_mean == apart.kid_mean  # seeded subsets


# --- real images and the cache ------------------------------------------------------------------------------


@pytest.fixture
def real_zip(tmp_path):
    images = _images(12, seed=5).transpose(0, 2, 3, 1)
    return write_dataset_zip(tmp_path / "reals.zip", ((f"{i:05d}.png", im) for i, im in enumerate(images)))


def test_select_real_images_takes_all_or_a_seeded_subset(real_zip):
    source = ImageSource(real_zip)
    assert select_real_images(source, 50, seed=1) == source.names
    pick = select_real_images(source, 5, seed=1)
    assert len(set(pick)) == 5 and set(pick) <= set(source.names)
    assert pick == select_real_images(source, 5, seed=1) and pick != select_real_images(source, 5, seed=2)


def test_real_features_are_cached_per_dataset_size_mtime_resolution_and_n(real_zip, tmp_path):
    cache = RealFeatureCache(tmp_path / "cache")
    ext = ChannelStats()
    first, info = real_features(real_zip, ext, n=8, resolution=16, seed=0, cache=cache, progress=False)
    calls = ext.calls
    assert first.shape == (8, 6) and not info["cached"] and os.path.isfile(info["cache_file"])
    again, info2 = real_features(real_zip, ext, n=8, resolution=16, seed=0, cache=cache, progress=False)
    assert info2["cached"] and ext.calls == calls and np.array_equal(first, again)
    _, info3 = real_features(real_zip, ext, n=6, resolution=16, seed=0, cache=cache, progress=False)
    assert not info3["cached"] and info3["cache_key"] != info["cache_key"]
    _, info4 = real_features(real_zip, ext, n=8, resolution=8, seed=0, cache=cache, progress=False)
    assert not info4["cached"] and info4["resized"] == 8  # 16² images resized to 8²
    st = os.stat(real_zip)
    os.utime(real_zip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the dataset changed
    _, info5 = real_features(real_zip, ext, n=8, resolution=16, seed=0, cache=cache, progress=False)
    assert not info5["cached"]
