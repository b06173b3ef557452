"""Measures of what a trained model draws: verifier.py (does an image show what its shapes
caption says?) and shapes.py (verifier accuracy on held-out prompts, with a samples grid)."""
