"""Run a script with the project's virtualenv when the Python its shebang found lacks a package.

`./scripts/provision` starts whatever `python3` is first on PATH; the scripts need the packages
of requirements-dev.txt. When one is missing, the script is run again with .venv/bin/python,
after creating .venv or installing requirements-dev.txt into it, as scripts/test does (a
.venv made by scripts/run-local holds only requirements.txt).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_AGAIN = "PROJECT_VENV_REEXEC"


def _requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-dev.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _python_version(python: str) -> tuple[tuple[int, int] | None, str]:
    """(major, minor) of `python` and its `--version` line; (None, why) when it does not run."""
    try:
        result = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["it did not run"])[-1]
    major, minor, micro = result.stdout.split()
    return (int(major), int(minor)), f"Python {major}.{minor}.{micro}"


def _has_pip(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import pip"], capture_output=True, timeout=60).returncode == 0


def ensure(*modules: str) -> None:
    """Return if `modules` import here; else re-run the calling script with .venv's Python.

    A .venv that cannot be used (a Python older than 3.11, no pip) or an interpreter too old
    to make one stops the script with one line naming the fix, as scripts/run-local does.
    """
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return
    script = Path(sys.argv[0]).name
    venv = Path(os.environ.get("VENV", ROOT / ".venv"))
    python = venv / "bin" / "python"
    if os.environ.get(_AGAIN):
        sys.exit(f"{script}: {', '.join(missing)} still missing in {venv}; run "
                 f"{shlex.quote(str(python))} -m pip install -r requirements-dev.txt")
    # Quoted: pasted as it is, `rm -rf` of a path with a space would remove two other paths.
    again = f"remove it (rm -rf {shlex.quote(str(venv))}) and run ./scripts/{script} again"
    if python.exists():
        version, said = _python_version(str(python))
        if version is None or version < (3, 11):
            sys.exit(f"{script}: {venv} is {said}, not 3.11 or newer: {again} "
                     "(with PYTHON=python3.11 if python3 is older)")
    marker = venv / ".requirements-dev.sha256"
    wanted = _requirements_hash()
    if not python.exists() or not marker.exists() or marker.read_text().strip() != wanted:
        # PYTHON picks the interpreter, as for scripts/test and scripts/run-local.
        creator = os.environ.get("PYTHON") or sys.executable
        if not python.exists():
            version, said = _python_version(creator)
            if version is None or version < (3, 11):
                sys.exit(f"{script}: {os.environ.get('PYTHON') or 'python3'} is not Python 3.11 or newer "
                         f"({said}): install Python 3.11 (README, Quick start) and run "
                         f"PYTHON=python3.11 ./scripts/{script}")
        print(f"{script}: installing requirements-dev.txt into {venv} (once, like scripts/test)",
              file=sys.stderr, flush=True)
        if not python.exists() and subprocess.run([creator, "-m", "venv", str(venv)]).returncode != 0:
            sys.exit(f"{script}: {creator} -m venv {venv} failed (it says why above)")
        if not _has_pip(python):
            sys.exit(f"{script}: {venv} has no pip (python3 -m venv leaves it so when python3-venv is "
                     f"missing): {again}")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]
        # The pip of requirements-pip.txt first, as scripts/venv.sh's pip_install does.
        installed = subprocess.run([*pip, str(ROOT / "requirements-pip.txt")])
        if installed.returncode == 0:
            installed = subprocess.run([*pip, str(ROOT / "requirements-dev.txt")])
        if installed.returncode != 0:
            sys.exit(f"{script}: installing requirements-dev.txt into {venv} failed (pip says why above)")
        marker.write_text(wanted + "\n")
    os.execve(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]],
              {**os.environ, _AGAIN: "1"})
