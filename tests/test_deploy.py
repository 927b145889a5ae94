"""The deployment files as code: the bundle eb deploy would upload, and the offline rehearsal.

The rehearsal must pass on what ships and fail, naming the file and the fix, on a copy of
the bundle broken the ways real deployments break.
"""

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PYTHON = sys.executable


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "app.zip"
    result = run("bundle", "--output", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def broken_copy(bundle: Path, target: Path, edit) -> Path:
    """Copy the bundle, passing every (name, data, mode) through `edit` (which may drop it)."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            changed = edit(info.filename, src.read(info), (info.external_attr >> 16) & 0o777)
            if changed is None:
                continue
            data, mode = changed
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.external_attr = (stat.S_IFREG | mode) << 16
            dst.writestr(out, data, zipfile.ZIP_DEFLATED)
    return target


def test_bundle_holds_what_beanstalk_needs_and_nothing_else(bundle):
    with zipfile.ZipFile(bundle) as zf:
        names = {i.filename: i for i in zf.infolist()}
    for required in ("application.py", "requirements.txt", "Procfile", "gunicorn.conf.py",
                     "app/__init__.py", "app/migrations/0001_create_users.sql",
                     ".ebextensions/03-database-ingress.config",
                     ".platform/nginx/conf.d/elasticbeanstalk/01_api.conf"):
        assert required in names, required
    assert not [n for n in names if n.startswith(("tests/", "scripts/", ".venv", ".git/", ".ci/"))
                or "__pycache__" in n or n.startswith("requirements-")]
    hooks = [n for n in names if n.startswith((".platform/hooks/", ".platform/confighooks/"))]
    assert len(hooks) == 4
    assert all((names[h].external_attr >> 16) & 0o111 == 0o111 for h in hooks)


def test_bundle_check_names_file_and_fix(bundle, tmp_path):
    def edit(name, data, mode):
        if name == "application.py":
            return None
        return data, mode

    broken = broken_copy(bundle, tmp_path / "no-app.zip", edit)
    with zipfile.ZipFile(broken, "a") as zf:
        zf.writestr("tests/test_x.py", "")
        zf.writestr(".env", "RDS_PASSWORD=x")
    result = run("bundle", "--check", str(broken))
    assert result.returncode == 1
    assert "application.py: missing at the bundle root" in result.stderr
    assert "tests/test_x.py: test code does not belong in the bundle; add it to .ebignore" in result.stderr
    assert ".env: an .env file does not belong in the bundle" in result.stderr


def test_git_records_hooks_as_executable():
    listing = subprocess.run(["git", "ls-files", "-s", "--", ".platform"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    hooks = [line.split() for line in listing if "/hooks/" in line or "/confighooks/" in line]
    assert len(hooks) == 4
    assert all(mode == "100755" for mode, *_ in hooks), hooks


def test_gitattributes_forces_lf_on_deployment_files():
    paths = [".platform/hooks/prebuild/01_rds_ca_bundle.sh", ".ebextensions/01-environment.config",
             "Procfile", ".platform/nginx/conf.d/elasticbeanstalk/01_api.conf", "scripts/bundle"]
    out = subprocess.run(["git", "check-attr", "eol", "--", *paths], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == [f"{p}: eol: lf" for p in paths]


def test_rehearsal_passes_on_what_ships(bundle):
    result = run("rehearse-deploy", "--bundle", str(bundle))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for step in ("cfn-lint: 2 resource(s), no findings", "checkov:", "none failed",
                 "parliament: 1 IAM policy document(s), no findings",
                 "hooks/prebuild/01_rds_ca_bundle.sh: ok", "container_commands.01_migrate (leader_only): ok",
                 "hooks/postdeploy/01_smoke_check.sh: ok", "DB_SSL_MODE=verify-identity",
                 "confighooks/postdeploy/01_smoke_check.sh: ok", "/health and /api/users: 200"):
        assert step in output, step


def _replace(target: str, old: bytes, new: bytes):
    def edit(name, data, mode):
        if name == target:
            assert old in data, f"{old!r} not in {target}"
            return data.replace(old, new), mode
        return data, mode
    return edit


BREAKAGES = {
    "non-executable hook": (
        lambda name, data, mode: (data, 0o644 if name.endswith("01_smoke_check.sh") else mode),
        [".platform/hooks/postdeploy/01_smoke_check.sh: not executable",
         "git update-index --chmod=+x .platform/hooks/postdeploy/01_smoke_check.sh"]),
    "CRLF hook": (
        lambda name, data, mode: (data.replace(b"\n", b"\r\n") if name.endswith("01_rds_ca_bundle.sh")
                                  and "/hooks/" in name else data, mode),
        [".platform/hooks/prebuild/01_rds_ca_bundle.sh: CRLF line endings", "convert to LF"]),
    "bad namespace": (
        _replace(".ebextensions/01-environment.config", b"aws:elasticbeanstalk:cloudwatch:logs:",
                 b"aws:elasticbeanstalk:cloudwatch:log:"),
        [".ebextensions/01-environment.config: unknown option namespace "
         "'aws:elasticbeanstalk:cloudwatch:log'", "documented namespaces"]),
    "* resource": (
        _replace(".ebextensions/04-instance-role-policy.config",
                 b"Resource:\n              Fn::GetOptionSetting:\n                OptionName: DatabaseSecretArn",
                 b'Resource: "*"'),
        [".ebextensions/04-instance-role-policy.config", "DatabaseAccessPolicy"]),
    "wrong WSGI path": (
        _replace("Procfile", b"application:application", b"app:application"),
        ["Procfile: the WSGI path app:application does not load",
         "serves application:application from application.py"]),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_rehearsal_fails_on_seeded_breakage(bundle, tmp_path, breakage):
    edit, expected = BREAKAGES[breakage]
    broken = broken_copy(bundle, tmp_path / "broken.zip", edit)
    result = run("rehearse-deploy", "--bundle", str(broken))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "rehearse: FAILED" in output
    for text in expected:
        assert text in output, (text, output[-3000:])
    assert "passed in" not in output
