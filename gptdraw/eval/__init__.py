"""Measures of what a trained model draws (shapes.py: verifier accuracy on held-out prompts)."""
