"""scripts/bundle's error paths, run as a user runs it: one line naming the fix, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def bundle(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(ROOT / "scripts" / "bundle"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_output_that_cannot_be_written_is_named(tmp_path):
    """--output under a file (or a read-only directory): the script said nothing useful, only
    pathlib's FileExistsError/NotADirectoryError in a traceback."""
    blocker = tmp_path / "dist"
    blocker.write_text("a file where the folder should be")
    result = bundle("--output", str(blocker / "app.zip"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"bundle: ERROR: cannot write {blocker / 'app.zip'}: "), result.stderr
    assert "choose another --output" in result.stderr
