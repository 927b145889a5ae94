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


def ensure(*modules: str) -> None:
    """Return if `modules` import here; else re-run the calling script with .venv's Python."""
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return
    script = Path(sys.argv[0]).name
    venv = Path(os.environ.get("VENV", ROOT / ".venv"))
    python = venv / "bin" / "python"
    if os.environ.get(_AGAIN):
        sys.exit(f"{script}: {', '.join(missing)} still missing in {venv}; run "
                 f"{python} -m pip install -r requirements-dev.txt")
    marker = venv / ".requirements-dev.sha256"
    wanted = _requirements_hash()
    if not python.exists() or not marker.exists() or marker.read_text().strip() != wanted:
        print(f"{script}: installing requirements-dev.txt into {venv} (once, like scripts/test)",
              file=sys.stderr, flush=True)
        if not python.exists():
            # PYTHON picks the interpreter, as for scripts/test and scripts/run-local.
            subprocess.run([os.environ.get("PYTHON") or sys.executable, "-m", "venv", str(venv)],
                           check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "-r", str(ROOT / "requirements-dev.txt")], check=True)
        marker.write_text(wanted + "\n")
    os.execve(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]],
              {**os.environ, _AGAIN: "1"})
