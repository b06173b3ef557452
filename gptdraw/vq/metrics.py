"""How well an image tokenizer reconstructs images: PSNR, SSIM, codebook use, and rFID.

    images ──encode──▶ codes ──decode──▶ reconstructions
      PSNR, SSIM        per image, averaged (images in [0, 1])
      codebook usage    fraction of the codebook that the images use; perplexity of the codes
      rFID              Fréchet distance between Inception features of originals and
                        reconstructions, when Inception weights are available locally

SSIM follows Wang et al. (2004): an 11×11 Gaussian window (σ = 1.5), C1 = (0.01)², C2 =
(0.03)², computed per colour channel over valid window positions and averaged.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptdraw.data.decode import load_images
from gptdraw.images import make_grid, tensor_to_pil, uint8_to_tensor
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)

MAX_PSNR = 100.0  # reported for a perfect reconstruction (MSE 0), so the mean stays finite


# ---- metrics -----------------------------------------------------------------------------------


def psnr_of_mse(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of pixel values in [0, 1] from their mean squared error
    (MAX_PSNR for a perfect reconstruction)."""
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-MAX_PSNR / 10)))).clamp_max(MAX_PSNR)


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for (B, 3, H, W) tensors in [0, 1] → (B,)."""
    return psnr_of_mse((images.float() - reconstructions.float()).pow(2).flatten(1).mean(dim=1))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised (size, size) Gaussian kernel."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    profile /= profile.sum()
    return torch.outer(profile, profile)


def ssim(
    images: torch.Tensor, reconstructions: torch.Tensor, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity per image for (B, C, H, W) tensors in [0, 1] → (B,)."""
    if images.shape != reconstructions.shape or images.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(images.shape)} "
                         f"and {tuple(reconstructions.shape)}")
    if min(images.shape[-2:]) < window_size:
        raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} are smaller than the "
                         f"{window_size}x{window_size} SSIM window")
    x, y = images.double(), reconstructions.double()
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).to(x.device)
    window = window.expand(channels, 1, window_size, window_size)  # one filter per channel

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)  # valid positions only

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).float()


@dataclass
class CodebookStats:
    """How the codes of an image set spread over the codebook."""

    codes_used: int  # distinct codes that occur at least once
    usage: float  # codes_used / codebook_size
    perplexity: float  # exp(entropy of the code histogram): the effective number of codes in use


def codebook_stats(codes: torch.Tensor | np.ndarray, codebook_size: int) -> CodebookStats:
    counts = np.bincount(np.asarray(codes).reshape(-1).astype(np.int64), minlength=codebook_size)
    if counts.size > codebook_size:
        raise ValueError(f"codes go up to {counts.size - 1}, beyond the codebook of {codebook_size}")
    total = counts.sum()
    if total == 0:
        return CodebookStats(codes_used=0, usage=0.0, perplexity=0.0)
    probabilities = counts[counts > 0] / total
    entropy = float(-(probabilities * np.log(probabilities)).sum())
    used = int((counts > 0).sum())
    return CodebookStats(codes_used=used, usage=used / codebook_size, perplexity=math.exp(entropy))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), without scipy.

    tr((Σ1 Σ2)^½) equals the sum of square roots of the eigenvalues of Σ1^½ Σ2 Σ1^½,
    which is symmetric positive semi-definite, so `eigh` suffices.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    values, vectors = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class InceptionFeatures:
    """Inception-v3 pool features from a local TorchScript file, for rFID.

    The expected file is the TorchScript Inception used by StyleGAN2-ADA and clean-fid
    (`inception-2015-12-05.pt`): called as `model(uint8 images (B, 3, H, W), return_features=True)`
    it resizes internally and returns (B, 2048) features. TorchScript is loaded by torch's
    own interpreter, not by Python's pickle, but it is a program: load only a file you trust.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found: {path}")
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript, but the published FID Inception is only TorchScript.
                warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as error:
            raise ValueError(f"{path} is not a TorchScript Inception model: {str(error).splitlines()[0]}") from error
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] → (B, features) float64."""
        pixels = images.mul(255).round().clamp(0, 255).to(device=self.device, dtype=torch.uint8)
        features = self.model(pixels, return_features=True)
        return features.double().cpu().numpy()


def _gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _rfid(real: np.ndarray, fake: np.ndarray) -> tuple[float | None, str]:
    """rFID between Inception features (N, D) of originals and reconstructions, and a note on how
    far to trust it (None and the reason when it cannot be computed)."""
    count = real.shape[0]
    if count < 2:
        return None, "skipped: rFID needs at least two images"
    rfid = frechet_distance(*_gaussian_stats(real), *_gaussian_stats(fake))
    # With N <= D the covariances are singular: the figure still ranks tokenizers on the same images.
    note = f"over {count} images" + ("" if count > real.shape[1] else
                                     f"; fewer images than feature dimensions ({real.shape[1]}), so only comparable "
                                     f"between runs on the same images")
    return rfid, note


# ---- evaluating a tokenizer on a folder of images ----------------------------------------------


@dataclass
class ReconstructionReport:
    """Reconstruction quality of an image tokenizer on a set of images."""

    images: int  # images evaluated
    skipped: int  # unreadable files left out
    image_size: int  # pixels (square) the images were resized and cropped to
    psnr: float  # mean dB
    ssim: float  # mean, in [-1, 1]
    codes_used: int  # distinct codes over all images
    codebook_size: int
    codebook_usage: float  # codes_used / codebook_size
    perplexity: float  # exp(entropy) of the code histogram
    rfid: float | None  # None when no Inception weights were given
    rfid_note: str  # why rFID is missing, or how reliable it is
    grid_path: str | None  # side-by-side PNG of originals and reconstructions

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_reconstruction(
    tokenizer: ImageTokenizer,
    image_paths: list[Path],
    *,
    image_size: int | None = None,
    batch_size: int = 16,
    inception_path: str | Path | None = None,
    grid_path: str | Path | None = None,
    grid_images: int = 8,
    device: torch.device | str = "cpu",
) -> ReconstructionReport:
    """Encode and decode every image, and measure how close the reconstructions are."""
    if not image_paths:
        raise ValueError("no images to evaluate")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = image_size or tokenizer.config.image_size
    tokenizer.grid_size(size)  # raises if size is not a multiple of the downsample factor
    inception = InceptionFeatures(inception_path, device) if inception_path is not None else None
    tokenizer.to(device).eval()

    psnrs, ssims, all_codes, skipped = [], [], [], 0
    real_features, fake_features, grid_pairs = [], [], []
    progress = tqdm(total=len(image_paths), desc="vq eval", unit="img")
    for start in range(0, len(image_paths), batch_size):
        pixels, _, bad = load_images(image_paths[start:start + batch_size], size)
        for problem in bad:
            logger.warning("skipped unreadable image %s", problem)
        skipped += len(bad)
        progress.update(len(pixels) + len(bad))
        if not len(pixels):
            continue
        batch = uint8_to_tensor(pixels).to(device)  # (B, 3, size, size)
        codes = tokenizer.encode(batch)
        reconstructions = tokenizer.decode(codes)
        psnrs.append(psnr(batch, reconstructions).cpu())
        ssims.append(ssim(batch, reconstructions).cpu())
        all_codes.append(codes.cpu())
        if inception is not None:
            real_features.append(inception(batch))
            fake_features.append(inception(reconstructions))
        for original, reconstruction in zip(batch, reconstructions):
            if len(grid_pairs) < grid_images:
                grid_pairs.append((original.cpu(), reconstruction.cpu()))
    progress.close()
    if not all_codes:
        raise ValueError(f"none of the {len(image_paths)} images could be read")

    count = sum(len(p) for p in psnrs)
    stats = codebook_stats(torch.cat([c.reshape(-1) for c in all_codes]), tokenizer.codebook_size)
    if inception is None:
        rfid, rfid_note = None, "skipped: no Inception weights given (pass a TorchScript inception-2015-12-05.pt)"
    else:
        rfid, rfid_note = _rfid(np.concatenate(real_features), np.concatenate(fake_features))
    written = None
    if grid_path is not None and grid_pairs:
        grid_path = Path(grid_path)
        _save_pairs_grid(grid_pairs, grid_path)
        written = str(grid_path)
    return ReconstructionReport(
        images=count,
        skipped=skipped,
        image_size=size,
        psnr=float(torch.cat(psnrs).mean()),
        ssim=float(torch.cat(ssims).mean()),
        codes_used=stats.codes_used,
        codebook_size=tokenizer.codebook_size,
        codebook_usage=stats.usage,
        perplexity=stats.perplexity,
        rfid=rfid,
        rfid_note=rfid_note,
        grid_path=written,
    )


def _save_pairs_grid(pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """A PNG of (original, reconstruction) pairs (3, H, W), one pair per row."""
    tiles = [image for pair in pairs for image in tensor_to_pil(torch.stack(pair))]
    labels = [label for _ in pairs for label in ("original", "reconstruction")]
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, columns=2, labels=labels).save(path)
