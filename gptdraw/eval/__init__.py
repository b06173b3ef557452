"""Measures of what a trained model draws: verifier.py (does an image show what its shapes
caption says?), shapes.py (verifier accuracy on held-out prompts, with a samples grid),
inception.py (Inception features, FID and KID) and real.py (real pictures: FID against
baselines, subject retrieval, tone and style accuracy)."""

__all__ = ["inception", "real", "shapes", "verifier"]
