"""The one check of a Hugging Face Hub repository id ("user/name"), for every place that takes
either a local path or a Hub id: model directories (gptdraw.hub) and pretrained VQGANs
(gptdraw.vq.convert)."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hub repository id: "user/name"."""


def is_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repository id."""
    return bool(REPO_ID.fullmatch(name))


def looks_like_repo_id(name: str) -> bool:
    """A Hub repository id, and not a path that exists here ("runs/mine" on disk is a folder)."""
    return is_repo_id(name) and not Path(name).exists()
