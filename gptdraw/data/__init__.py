"""Image–caption pairs → pre-encoded shards.

decode.py (the one decode/resize path for untrusted images and captions), sources/ (a registry
of readers: folders, CSV/TSV/JSONL, img2dataset, Hugging Face datasets, the built-in shapes),
shapes.py (the built-in dataset), emoji.py (real emoji sets), prepare_config.py and prepare.py
(`gptdraw data prepare`), shards.py (the on-disk format), loader.py (which examples each step reads).
"""

__all__ = ["decode", "emoji", "loader", "prepare", "prepare_config", "shapes", "shards", "sources"]
