"""The scripts' virtualenv on a fresh machine: one they cannot use is named, with the fix.

Two states a newcomer gets into: a `python3` older than 3.11 first on PATH (macOS's
/usr/bin/python3 is 3.9 while Homebrew's python@3.11 is `python3.11`), and a virtualenv
without pip, which `python3 -m venv` leaves behind on Debian and Ubuntu when python3-venv is
missing (it creates the directory, then fails in ensurepip; installing python3-venv later does
not repair it). Each script says what is wrong and what to run, without a traceback.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def older_python() -> str | None:
    """A real Python 3.8-3.10 on this machine (PATH or pyenv), or None."""
    candidates = [f"python3.{minor}" for minor in (10, 9, 8)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0]*/bin/python3")))
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[89]*/bin/python3")))
    candidates += ["/usr/bin/python3.10", "/usr/bin/python3.9", "/usr/local/bin/python3.10"]
    for candidate in candidates:
        try:
            result = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] < (3, 11))"],
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture
def old_python() -> str:
    found = older_python()
    if found is None:
        pytest.skip("no Python older than 3.11 on this machine (PATH or ~/.pyenv)")
    return found


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """./scripts/<script> as a user runs it, from a new terminal with `env` added."""
    base = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    return subprocess.run([f"./scripts/{script}", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=300)


def test_an_old_python3_first_on_path_is_named_and_no_virtualenv_is_made(tmp_path, old_python):
    """A Python script started with an old python3 and no .venv: it would make .venv with that
    Python and fail in pip with a traceback, leaving a .venv that breaks run-local too."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old_python)
    venv = tmp_path / "venv"
    result = run("doctor", {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "VENV": str(venv)}, "--help")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^doctor: \S+ is not Python 3\.11 or newer \(Python 3\.\d+\.\d+\): install Python 3\.11 "
                     r"\(README, Quick start\) and run PYTHON=python3\.11 \./scripts/doctor$",
                     result.stderr, re.MULTILINE), result.stderr
    assert not venv.exists()


@pytest.mark.parametrize("script", ["run-local", "doctor"])
def test_a_virtualenv_of_an_old_python_is_named_with_the_fix(tmp_path, old_python, script):
    venv = tmp_path / "venv"
    subprocess.run([old_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = run(script, {"VENV": str(venv)}, "--help")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "No matching distribution" not in result.stderr, result.stderr
    assert f"{script}: {venv} is Python 3." in result.stderr, result.stderr
    assert f"not 3.11 or newer: remove it (rm -rf {venv}) and run ./scripts/{script} again" in result.stderr


@pytest.mark.parametrize("script", ["run-local", "test", "doctor", "bundle"])
def test_a_virtualenv_without_pip_is_named_with_the_fix(tmp_path, script):
    """`python3 -m venv .venv` without python3-venv leaves .venv/bin/python and no pip; every
    later run found the interpreter and failed in `python -m pip` ("No module named pip")."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = run(script, {"VENV": str(venv), "IAC_VENV": str(venv)}, "--help")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert (f"{script}: {venv} has no pip (python3 -m venv leaves it so when python3-venv is missing): "
            f"remove it (rm -rf {venv}) and run ./scripts/{script} again") in result.stderr, result.stderr


def test_install_eb_cli_names_an_eb_venv_without_pip_and_an_old_python(tmp_path):
    """The same two states for .venv-eb: 'No module named pip' without the fix, and a Python the
    PYTHON row of the README says is too old used without a word."""
    venv = tmp_path / "eb"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = run("install-eb-cli", {"EB_VENV": str(venv)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (f"install-eb-cli: {venv} has no pip (python3 -m venv leaves it so when python3-venv is "
            f"missing): remove it (rm -rf {venv}) and run ./scripts/install-eb-cli again") in result.stderr
    old = older_python()
    if old is None:
        return
    missing = tmp_path / "new-eb"
    result = run("install-eb-cli", {"EB_VENV": str(missing), "PYTHON": old})
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"install-eb-cli: {old} is not Python 3.11 or newer" in result.stderr, result.stderr
    assert "PYTHON=python3.11 ./scripts/install-eb-cli" in result.stderr and not missing.exists()
