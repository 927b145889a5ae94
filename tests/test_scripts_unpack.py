"""scripts/rehearse-deploy unpacks a bundle only inside its staging folder (no zip-slip).

zipfile.extractall would not write outside either, but only by silently rewriting the names
(https://docs.python.org/3/library/zipfile.html#zipfile.ZipFile.extract: leading "/" and ".."
components are dropped; the first test shows it) and by writing symlinks as plain files. A
bundle with such a member is not one scripts/bundle or eb deploy makes: the rehearsal refuses it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, load_script

rehearsal = load_script("rehearse-deploy")


def write_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """members: (name, data, st_mode); a symlink's data is its target."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


FILE = stat.S_IFREG | 0o644
LINK = stat.S_IFLNK | 0o777


def test_zipfile_extractall_rewrites_escaping_names_instead_of_refusing(tmp_path):
    """What the standard library does with such members (why the rehearsal does not rely on it)."""
    bundle = write_zip(tmp_path / "evil.zip", [("../escaped.txt", b"x", FILE),
                                               (f"{tmp_path}/absolute.txt", b"x", FILE),
                                               ("link", b"/etc", LINK)])
    out = tmp_path / "out"
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(out)
    assert (out / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert (out / str(tmp_path).lstrip("/") / "absolute.txt").exists()
    assert not (out / "link").is_symlink() and (out / "link").read_text() == "/etc"


def escaping_bundles(tmp_path: Path) -> dict[str, tuple[list, str, Path]]:
    """name -> (members, the text the refusal names, a path the member must not create)."""
    outside = tmp_path / "outside"
    return {
        "dot-dot": ([("../escaped.txt", b"x", FILE)], "../escaped.txt: a '..' component",
                    tmp_path / "work" / "escaped.txt"),
        "nested dot-dot": ([("app/../../../escaped.txt", b"x", FILE)],
                           "app/../../../escaped.txt: a '..' component", tmp_path / "escaped.txt"),
        "absolute": ([(f"{outside}/absolute.txt", b"x", FILE)],
                     f"{outside}/absolute.txt: an absolute path", outside / "absolute.txt"),
        "backslash": ([("..\\escaped.txt", b"x", FILE)],
                      "..\\escaped.txt: a backslash", tmp_path / "work" / "escaped.txt"),
        "absolute symlink": ([("link", str(outside).encode(), LINK), ("link/through.txt", b"x", FILE)],
                             f"link: a symlink to {outside}, outside the bundle", outside / "through.txt"),
        "relative symlink": ([("app/link", b"../../../outside", LINK), ("app/link/through.txt", b"x", FILE)],
                             "app/link: a symlink to ../../../outside, outside the bundle",
                             outside / "through.txt"),
    }


@pytest.mark.parametrize("case", ["dot-dot", "nested dot-dot", "absolute", "backslash",
                                  "absolute symlink", "relative symlink"])
def test_unpack_refuses_members_that_would_land_outside_staging(tmp_path, case):
    members, named, must_not_exist = escaping_bundles(tmp_path)[case]
    (tmp_path / "outside").mkdir()
    bundle = write_zip(tmp_path / "evil.zip", [("application.py", b"application = None\n", FILE), *members])
    staging = tmp_path / "work" / "staging"
    with pytest.raises(rehearsal.RehearsalError) as refused:
        rehearsal.unpack(bundle, staging)
    message = str(refused.value)
    assert "evil.zip" in message and named in message, message
    assert "scripts/bundle" in message  # the fix
    assert not must_not_exist.exists()
    assert not (staging / "application.py").exists()  # refused before writing anything


def test_unpack_keeps_modes_and_symlinks_inside_the_bundle(tmp_path):
    bundle = write_zip(tmp_path / "ok.zip", [
        (".platform/hooks/prebuild/01.sh", b"#!/bin/bash\n", stat.S_IFREG | 0o755),
        ("app/data.txt", b"data", FILE),
        ("app/alias.txt", b"data.txt", LINK),
        ("docs/", b"", stat.S_IFDIR | 0o755),
    ])
    staging = tmp_path / "staging"
    rehearsal.unpack(bundle, staging)
    assert os.access(staging / ".platform/hooks/prebuild/01.sh", os.X_OK)
    assert (staging / "app/alias.txt").is_symlink() and (staging / "app/alias.txt").read_text() == "data"
    assert (staging / "docs").is_dir()


def test_rehearsal_of_a_zip_slip_bundle_fails_and_writes_nothing_outside(tmp_path):
    # What scripts/bundle checks for (the rest is optional), plus one member that climbs out.
    climb = "../" * 10 + str(tmp_path / "escaped.txt").lstrip("/")
    evil = write_zip(tmp_path / "evil.zip", [
        *[(name, (ROOT / name).read_bytes(), FILE) for name in ("application.py", "requirements.txt", "Procfile")],
        (climb, b"written outside the staging folder", FILE)])
    result = subprocess.run([sys.executable, str(ROOT / "scripts/rehearse-deploy"), "--bundle", str(evil)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rehearse: FAILED" in result.stderr and "escaped.txt: a '..' component" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escaped.txt").exists()
