"""The .platform hooks, run as Beanstalk runs them: executables reading get-config, no shell env.

A stand-in for /opt/elasticbeanstalk/bin/get-config (the rehearsal's) answers with the
environment properties each test sets. The RDS CA bundle is served from file:// URLs.
"""

import http.server
import os
import subprocess
import threading

import pytest

import localdb
from conftest import ROOT, load_script

PREBUILD = ROOT / ".platform/hooks/prebuild/01_rds_ca_bundle.sh"
POSTDEPLOY = ROOT / ".platform/hooks/postdeploy/01_smoke_check.sh"


rehearsal = load_script("rehearse-deploy")


@pytest.fixture
def run_hook(tmp_path):
    def run(hook, properties, **extra_env):
        get_config = tmp_path / "get-config"
        rehearsal.get_config_stand_in(get_config, properties)
        env = {"PATH": os.environ["PATH"], "EB_GET_CONFIG": str(get_config), **extra_env}
        return subprocess.run([str(hook)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return run


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    first = localdb.make_ca(directory, "rds1", subject="/CN=Amazon RDS eu-west-1 Root CA RSA2048 G1/O=Test")
    second = localdb.make_ca(directory, "rds2", subject="/CN=Amazon RDS eu-west-1 Root CA ECC384 G1/O=Test")
    other = localdb.make_ca(directory, "other", subject="/CN=Some Other Root CA/O=Test")
    bundle = directory / "global-bundle.pem"
    bundle.write_text(first.read_text() + second.read_text())
    mixed = directory / "mixed-bundle.pem"
    mixed.write_text(first.read_text() + other.read_text())
    return {"bundle": bundle, "mixed": mixed, "dir": directory}


def test_prebuild_installs_a_verified_bundle_where_db_ssl_ca_points(run_hook, pki, tmp_path):
    target = tmp_path / "certs" / "rds.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 0, result.stderr
    assert f"installed 2 RDS CA certificates at {target}" in result.stderr
    assert target.read_text() == pki["bundle"].read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_prebuild_rejects_a_bundle_with_a_foreign_certificate(run_hook, pki, tmp_path):
    target = tmp_path / "rds.pem"
    target.write_text(pki["bundle"].read_text())  # installed by an earlier deployment
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['mixed']}")
    assert result.returncode == 0
    assert "unexpected certificate in bundle" in result.stderr and "Some Other Root CA" in result.stderr
    assert "keeping the installed" in result.stderr
    assert target.read_text() == pki["bundle"].read_text()  # untouched


@pytest.mark.parametrize("mode, code", [("verify-identity", 1), ("verify-ca", 1), ("required", 0)])
def test_prebuild_without_any_bundle_fails_only_when_verification_needs_one(run_hook, tmp_path, mode, code):
    target = tmp_path / "rds.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": mode},
                      RDS_CA_BUNDLE_URL=f"file://{tmp_path}/missing.pem")
    assert result.returncode == code, result.stderr
    assert not target.exists()
    if code:
        assert f"DB_SSL_MODE={mode} needs it" in result.stderr
    else:
        assert "does not need one" in result.stderr


def test_prebuild_reads_properties_through_get_config_not_its_environment(run_hook, pki, tmp_path):
    """Hooks do not see environment properties in their shell; a DB_SSL_CA there is ignored."""
    target = tmp_path / "from-get-config.pem"
    decoy = tmp_path / "from-shell.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-ca"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}", DB_SSL_CA=str(decoy))
    assert result.returncode == 0, result.stderr
    assert target.exists() and not decoy.exists()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        status = 200 if self.path == "/health" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args):
        pass


def test_smoke_check_passes_when_health_answers(run_hook):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_hook(POSTDEPLOY, {"PORT": str(server.server_address[1])})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert "answered on attempt 1" in result.stdout


def test_smoke_check_fails_the_deployment_when_nothing_answers(run_hook):
    port = localdb.free_port()
    result = run_hook(POSTDEPLOY, {"PORT": str(port)}, SMOKE_CHECK_SECONDS="2")
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}/health did not answer 200 within 2 s" in result.stderr


def test_confighooks_run_the_same_hooks(run_hook, pki, tmp_path):
    """Configuration deployments run confighooks, not hooks: each must do what its twin does."""
    confighooks = ROOT / ".platform" / "confighooks"
    target = tmp_path / "rds.pem"
    result = run_hook(confighooks / "prebuild" / "01_rds_ca_bundle.sh",
                      {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 0 and "installed 2 RDS CA certificates" in result.stderr
    port = localdb.free_port()
    result = run_hook(confighooks / "postdeploy" / "01_smoke_check.sh", {"PORT": str(port)},
                      SMOKE_CHECK_SECONDS="1")
    assert result.returncode == 1 and f"127.0.0.1:{port}/health did not answer" in result.stderr
