"""scripts/bundle's error paths, run as a user runs it: one line naming the fix, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, copy_project


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


OPTIONS = """option_settings:
  aws:elasticbeanstalk:customoption:
    DatabaseSecurityGroupId: sg-0a1b2c3d4e5f60718
    DatabasePort: "3306"
    DatabaseResourceId: db-Q2W3E4R5T6Y7U8I9O0P1A2S3D4
    DatabaseUser: app
    DatabaseSecretArn: arn:aws:secretsmanager:eu-west-1:210987654321:secret:none
    DatabaseSecretKmsKeyArn: arn:aws:kms:eu-west-1:210987654321:key/none
    InstanceRoleName: flask-rds-app-ec2
"""


def provisioned_clone(tmp_path: Path) -> Path:
    """A copy of the project's files after `scripts/provision --write-options` and `eb init` (config.yml as the
    EB CLI writes it)."""
    clone = copy_project(tmp_path, "clone")
    (clone / ".ebextensions" / "02-database-options.config").write_text(OPTIONS)
    (clone / ".elasticbeanstalk").mkdir()
    (clone / ".elasticbeanstalk" / "config.yml").write_text(
        "global:\n  application_name: flask-rds-app\n  default_region: eu-west-1\n")
    return clone


def test_use_with_eb_with_an_output_outside_the_project_says_what_to_do(tmp_path):
    """`deploy: artifact:` is a path in the project; a bundle written elsewhere gave Python's
    "'/x/app.zip' is not in the subpath of '/project' OR one path is relative and the other is
    absolute." as the error."""
    clone = provisioned_clone(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "app.zip"
    result = subprocess.run([str(clone / "scripts" / "bundle"), "--output", str(elsewhere), "--use-with-eb"],
                            cwd=clone, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"bundle: ERROR: --use-with-eb: {elsewhere} is outside {clone}, and the EB CLI reads deploy: "
        "artifact: as a path in the project: leave out --output (dist/app.zip) or give one inside the "
        "project"), result.stderr
    assert "artifact" not in (clone / ".elasticbeanstalk" / "config.yml").read_text()
    inside = subprocess.run([str(clone / "scripts" / "bundle"), "--use-with-eb"], cwd=clone, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert inside.returncode == 0, inside.stderr
    assert "artifact: dist/app.zip" in (clone / ".elasticbeanstalk" / "config.yml").read_text()


def test_a_hook_without_its_exec_bit_is_refused_with_what_beanstalk_does(tmp_path):
    """Refused, with the platform hooks page's own words: Amazon Linux 2 platform versions before
    29 April 2022 fail the deployment, later ones and Amazon Linux 2023 grant the bit
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.hooks.html).
    The message said only "not executable", and the rehearsal that "Beanstalk would fail the
    deploy", which Amazon Linux 2023 does not."""
    clone = provisioned_clone(tmp_path)
    hook = ".platform/confighooks/postdeploy/01_smoke_check.sh"
    (clone / hook).chmod(0o644)
    result = subprocess.run([str(clone / "scripts" / "bundle")], cwd=clone, capture_output=True, text=True,
                            timeout=300,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == (
        f"bundle: ERROR: {hook}: not executable: Amazon Linux 2 platform versions released before 29 April 2022 "
        "fail the deployment on it (later ones, and every Amazon Linux 2023 one, grant the bit themselves); keep it "
        f"in git: run `git update-index --chmod=+x {hook}` and `chmod +x {hook}` "
        "(https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.hooks.html)"), result.stderr
    assert not (clone / "dist" / "app.zip").exists()


def test_a_fifo_or_socket_in_the_project_is_left_out_not_waited_on(tmp_path):
    """A named pipe left in the project (a debugging `mkfifo`, a tool's socket) was opened to be
    zipped: the bundle waited for a writer for good. It is left out, named on stderr, like a
    symlink that points outside the project."""
    import socket

    clone = provisioned_clone(tmp_path)
    os.mkfifo(clone / "app" / "debug.fifo")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(clone / "tool.sock"))
    try:
        result = subprocess.run([str(clone / "scripts" / "bundle")], cwd=clone, capture_output=True, text=True,
                                timeout=60, env={**os.environ, "PATH": f"{Path(sys.executable).parent}"
                                                 f"{os.pathsep}{os.environ['PATH']}"})
    finally:
        listening.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bundle: left out app/debug.fifo: a FIFO (named pipe), not a file" in result.stderr.splitlines()
    assert "bundle: left out tool.sock: a socket, not a file" in result.stderr.splitlines()
    with zipfile.ZipFile(clone / "dist" / "app.zip") as zf:
        names = set(zf.namelist())
    assert "app/__init__.py" in names
    assert not {"app/debug.fifo", "tool.sock"} & names
