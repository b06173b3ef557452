"""The GPT that learns captions and image codes as one language.

config.py (model and training configs, presets; torch-free), model.py (GPT-2 and its loss),
train.py (the Accelerate training loop), sampling.py (drawing codes: KV cache, guidance).
"""
