"""The .platform hooks, run as Beanstalk runs them: executables reading get-config, no shell env.

A stand-in for /opt/elasticbeanstalk/bin/get-config (the rehearsal's) answers with the
environment properties each test sets. The RDS CA bundle is served from file:// URLs, the
system trust store is a fake one named by SYSTEM_CA_BUNDLE, and the smoke check asks the real
app under gunicorn.
"""

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import localdb
from conftest import ROOT, load_script

PREBUILD = ROOT / ".platform/hooks/prebuild/01_rds_ca_bundle.sh"
POSTDEPLOY = ROOT / ".platform/hooks/postdeploy/01_smoke_check.sh"
NGINX_API = Path("nginx/conf.d/elasticbeanstalk/01_api.conf")  # under .platform
HEADER = "# Installed by .platform/hooks/prebuild/01_rds_ca_bundle.sh"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.DOTALL)


rehearsal = load_script("rehearse-deploy")


def pem_blocks(path: Path) -> list[str]:
    return PEM_BLOCK.findall(path.read_text())


def self_signed(directory: Path, name: str, subject: str, basic_constraints: str) -> Path:
    """A self-signed certificate with the given basicConstraints (make_ca's are always CA:TRUE)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", subject, "-addext", f"basicConstraints=critical,{basic_constraints}",
                    "-keyout", f"{name}.key", "-out", f"{name}.pem"],
                   cwd=directory, check=True, capture_output=True)
    return directory / f"{name}.pem"


@pytest.fixture
def run_hook(tmp_path):
    def run(hook, properties, **extra_env):
        get_config = tmp_path / "get-config"
        rehearsal.get_config_stand_in(get_config, properties)
        env = {"PATH": os.environ["PATH"], "EB_GET_CONFIG": str(get_config), **extra_env}
        return subprocess.run([str(hook)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return run


# The test CAs: (name, subject, basicConstraints or None for make_ca's CA:TRUE). RSA key
# generation is most of their cost (about 1.5 s a test on a two-CPU machine), so each pytest
# process makes them once and every test gets its own copy of the files.
RDS_CAS = [("rds1", "/CN=Amazon RDS eu-west-1 Root CA RSA2048 G1/O=Test"),
           ("rds2", "/CN=Amazon RDS eu-west-1 Root CA ECC384 G1/O=Test")]
OTHER_CA = ("other", "/CN=Some Other Root CA/O=Test")
# A fake system trust store: Amazon Root CA 1 and 3, look-alikes that must be left out.
SYSTEM_KEEP = [("amazon1", "/CN=Amazon Root CA 1/O=Amazon/C=US"),
               ("amazon3", "/C=US/O=Amazon/CN=Amazon Root CA 3")]
SYSTEM_LEAVE = [("amazon5", "/CN=Amazon Root CA 5/O=Amazon/C=US"),
                ("amazon2ou", "/CN=Amazon Root CA 2/OU=Extra/O=Amazon/C=US"),
                ("amazon2o", "/CN=Amazon Root CA 2/O=Amazon Inc/C=US"),
                ("amazon2cn", "/CN=Amazon Root CA 2 Fake/O=Amazon/C=US")]


@pytest.fixture(scope="session")
def ca_files(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cas")
    for name, subject in [*RDS_CAS, OTHER_CA, *SYSTEM_KEEP, *SYSTEM_LEAVE]:
        localdb.make_ca(directory, name, subject=subject)
    self_signed(directory, "amazon4leaf", "/CN=Amazon Root CA 4/O=Amazon/C=US", "CA:FALSE")
    return directory


@pytest.fixture
def pki(tmp_path, ca_files):
    directory = tmp_path / "pki"
    shutil.copytree(ca_files, directory)
    first, second = (directory / f"{name}.pem" for name, _ in RDS_CAS)
    other = directory / f"{OTHER_CA[0]}.pem"
    bundle = directory / "global-bundle.pem"
    bundle.write_text(first.read_text() + second.read_text())
    mixed = directory / "mixed-bundle.pem"
    mixed.write_text(first.read_text() + other.read_text())
    return {"bundle": bundle, "mixed": mixed, "dir": directory, "rds": [first, second], "other": other}


@pytest.fixture
def system_store(pki):
    """A fake system trust store: Amazon Root CA 1 and 3, look-alikes that must be left out."""
    directory = pki["dir"]
    keep = [directory / f"{name}.pem" for name, _ in SYSTEM_KEEP]
    leave = [*(directory / f"{name}.pem" for name, _ in SYSTEM_LEAVE), directory / "amazon4leaf.pem",
             pki["other"]]
    bundle = directory / "system-ca-bundle.crt"
    bundle.write_text("".join(p.read_text() for p in [leave[0], keep[0], *leave[1:], keep[1]]))
    return {"bundle": bundle, "keep": keep, "leave": leave}


def test_prebuild_installs_a_verified_bundle_where_db_ssl_ca_points(run_hook, pki, tmp_path):
    target = tmp_path / "certs" / "rds.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 0, result.stderr
    assert f"installed 2 RDS CA certificates at {target}" in result.stderr
    header, _, rest = target.read_text().partition("\n")
    assert header.startswith(HEADER) and "DB_SSL_TRUST=rds " in header
    assert rest == pki["bundle"].read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["rds.pem"]  # no staging file left


def test_prebuild_rejects_a_bundle_with_a_foreign_certificate(run_hook, pki, tmp_path):
    target = tmp_path / "rds.pem"
    target.write_text(pki["bundle"].read_text())  # installed by an earlier deployment
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['mixed']}")
    assert result.returncode == 0
    assert "unexpected certificate in bundle" in result.stderr and "Some Other Root CA" in result.stderr
    assert "keeping the installed" in result.stderr
    assert target.read_text() == pki["bundle"].read_text()  # untouched


@pytest.mark.parametrize("mode, auth, code", [
    ("verify-identity", None, 1), ("verify-ca", None, 1), ("required", None, 0),
    (None, "iam", 1), (None, None, 0),  # unset: the app's default, verify-identity for iam
    # As the app reads them (app/config.py): any case, MySQL's spelling, pasted spaces. The hook
    # took DB_AUTH=IAM for password auth and skipped the bundle the app then could not find.
    ("VERIFY_IDENTITY", None, 1), (" Verify-CA\n", None, 1), (None, "IAM", 1), ("  ", "iam ", 1)])
def test_prebuild_without_any_bundle_fails_only_when_verification_needs_one(run_hook, tmp_path, mode, auth, code):
    target = tmp_path / "rds.pem"
    properties = {"DB_SSL_CA": f" {target}\n", "DB_SSL_MODE": mode, "DB_AUTH": auth}
    result = run_hook(PREBUILD, {k: v for k, v in properties.items() if v is not None},
                      RDS_CA_BUNDLE_URL=f"file://{tmp_path}/missing.pem")
    mode = (mode or "").strip().lower().replace("_", "-") or (
        "verify-identity" if (auth or "").strip().lower() == "iam" else "required")
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


@pytest.mark.parametrize("trust", ["rds-proxy", "RDS-Proxy", None])
def test_prebuild_rds_proxy_adds_exactly_amazon_root_cas_from_the_system_store(run_hook, pki, system_store,
                                                                              tmp_path, trust):
    """RDS Proxy endpoints present ACM certificates, which chain to Amazon Root CA 1-4, not to
    the RDS CAs (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html,
    "Using TLS/SSL with RDS Proxy").
    Only certificates named exactly CN=Amazon Root CA 1..4, O=Amazon, C=US and marked CA:TRUE are
    taken; DB_SSL_TRUST unset (rds) takes none."""
    target = tmp_path / "rds.pem"
    properties = {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"}
    if trust:
        properties["DB_SSL_TRUST"] = trust
    result = run_hook(PREBUILD, properties, RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}",
                      SYSTEM_CA_BUNDLE=str(system_store["bundle"]))
    assert result.returncode == 0, result.stderr
    expected = [pem_blocks(p)[0] for p in pki["rds"]]
    if trust:
        expected += [pem_blocks(p)[0] for p in system_store["keep"]]
        assert (f"installed 2 RDS CA certificates and 2 Amazon root CA certificates at {target}"
                in result.stderr)
        assert f"# Amazon Root CA 1, from {system_store['bundle']}" in target.read_text()
    else:
        assert f"installed 2 RDS CA certificates at {target}" in result.stderr
    assert pem_blocks(target) == expected
    assert target.read_text().startswith(f"{HEADER} (DB_SSL_TRUST={(trust or 'rds').lower()} ")


@pytest.mark.parametrize("mode, code", [("verify-identity", 1), ("verify-ca", 1), ("required", 0)])
def test_prebuild_rds_proxy_without_amazon_roots_fails_only_when_verification_needs_them(
        run_hook, pki, tmp_path, mode, code):
    target = tmp_path / "rds.pem"
    system = tmp_path / "system.crt"
    system.write_text(pki["other"].read_text())
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": mode, "DB_SSL_TRUST": "rds-proxy"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}", SYSTEM_CA_BUNDLE=str(system))
    assert result.returncode == code, result.stderr
    if code:
        assert "DB_SSL_TRUST=rds-proxy needs Amazon Root CA 1-4" in result.stderr
        assert str(system) in result.stderr and "ca-certificates" in result.stderr
        assert "DB_SSL_TRUST=rds" in result.stderr  # the other way out
        assert not target.exists()
    else:
        assert "WARNING: no Amazon Root CA 1-4" in result.stderr
        assert pem_blocks(target) == [pem_blocks(p)[0] for p in pki["rds"]]


def test_prebuild_rds_proxy_finds_amazons_roots_in_this_machines_trust_store(run_hook, pki, tmp_path):
    """Without SYSTEM_CA_BUNDLE the hook reads the OS bundle (AL2023's path, else Debian's)."""
    system = next((p for p in (Path("/etc/pki/tls/certs/ca-bundle.crt"),
                               Path("/etc/ssl/certs/ca-certificates.crt")) if p.exists()), None)
    if system is None:
        message = "no system CA bundle on this machine (apt-get install ca-certificates)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    target = tmp_path / "rds.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity",
                                 "DB_SSL_TRUST": "rds-proxy"}, RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 0, result.stderr
    assert "and 4 Amazon root CA certificates" in result.stderr
    subjects = [subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
                               input=block, capture_output=True, text=True, check=True).stdout.strip()
                for block in pem_blocks(target)[2:]]
    assert subjects == [f"subject=CN=Amazon Root CA {n},O=Amazon,C=US" for n in range(1, 5)]


def test_prebuild_rejects_an_unknown_db_ssl_trust(run_hook, pki, tmp_path):
    target = tmp_path / "rds.pem"
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_TRUST": "proxy"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 1
    assert "DB_SSL_TRUST=proxy is not one of: rds, rds-proxy" in result.stderr
    assert not target.exists()


def test_prebuild_replaces_its_own_file_and_an_earlier_headerless_install(run_hook, pki, system_store,
                                                                          tmp_path):
    """Its header marks the file as the hook's; the hook's earlier version wrote RDS CAs only."""
    target = tmp_path / "rds.pem"
    target.write_text(pki["bundle"].read_text())  # the earlier version's install: no header
    properties = {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity", "DB_SSL_TRUST": "rds-proxy"}
    env = {"RDS_CA_BUNDLE_URL": f"file://{pki['bundle']}", "SYSTEM_CA_BUNDLE": str(system_store["bundle"])}
    result = run_hook(PREBUILD, properties, **env)
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith(HEADER) and len(pem_blocks(target)) == 4
    # Now it holds Amazon roots too (not only RDS CAs): the header is what lets the next deploy in.
    result = run_hook(PREBUILD, {**properties, "DB_SSL_TRUST": "rds"}, **env)
    assert result.returncode == 0, result.stderr
    assert pem_blocks(target) == [pem_blocks(p)[0] for p in pki["rds"]]


def test_prebuild_keeps_its_file_when_the_download_fails_and_says_when_trust_changed(run_hook, pki,
                                                                                   system_store, tmp_path):
    target = tmp_path / "rds.pem"
    properties = {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"}
    assert run_hook(PREBUILD, properties, RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}").returncode == 0
    installed = target.read_text()
    result = run_hook(PREBUILD, {**properties, "DB_SSL_TRUST": "rds-proxy"},
                      RDS_CA_BUNDLE_URL=f"file://{tmp_path}/missing.pem",
                      SYSTEM_CA_BUNDLE=str(system_store["bundle"]))
    assert result.returncode == 0, result.stderr
    assert f"keeping the installed {target}" in result.stderr
    assert "it was not installed for DB_SSL_TRUST=rds-proxy" in result.stderr
    assert target.read_text() == installed


@pytest.mark.parametrize("contents", ["foreign CA", "RDS and foreign CAs", "not PEM", "empty"])
def test_prebuild_refuses_to_replace_a_file_it_did_not_install(run_hook, pki, tmp_path, contents):
    target = tmp_path / "company-ca.pem"
    target.write_text({"foreign CA": pki["other"].read_text(),
                       "RDS and foreign CAs": pki["mixed"].read_text(),
                       "not PEM": "ssl-ca: settings of another program\n",
                       "empty": ""}[contents])
    before = target.read_bytes()
    result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 1
    assert f"DB_SSL_CA={target}" in result.stderr and "was not installed by this hook" in result.stderr
    assert "eb setenv DB_SSL_CA=" in result.stderr  # the fix
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_prebuild_never_replaces_the_system_trust_store_even_through_a_symlink(run_hook, pki, system_store,
                                                                               tmp_path):
    """A deploy must never swap the machine's trust store for RDS CAs: every HTTPS client on the
    instance (the Beanstalk agent, pip, the AWS SDKs) would stop trusting anything else."""
    store = system_store["bundle"]
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    link = tmp_path / "links" / "rds.pem"
    link.parent.mkdir()
    link.symlink_to(store)
    chain = tmp_path / "links" / "chain.pem"
    chain.symlink_to(link)
    for target in (store, link, chain):
        result = run_hook(PREBUILD, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                          RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}", SYSTEM_CA_BUNDLE=str(store))
        assert result.returncode == 1, (target, result.stderr)
        assert f"DB_SSL_CA={target} is the system trust store {store}" in result.stderr
        assert "eb setenv DB_SSL_CA=" in result.stderr
        assert hashlib.sha256(store.read_bytes()).hexdigest() == before
        assert link.is_symlink() and chain.is_symlink()


@pytest.mark.parametrize("target", [
    "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/pki/tls/cert.pem",
    "/etc/ssl/cert.pem", "/etc/ssl/certs/rds-global-bundle.pem",
    "/etc/pki/ca-trust/source/anchors/rds-global-bundle.pem", "symlink into /etc/ssl/certs",
])
def test_prebuild_refuses_the_machines_trust_store_paths(run_hook, tmp_path, target):
    """The known bundle files and anything under /etc/pki/ca-trust/ or /etc/ssl/certs/.

    The download URL is missing on purpose: even a broken guard could not write to /etc here
    (it would fail later with another message, which the assertion tells apart)."""
    if target.startswith("symlink"):
        (tmp_path / "certs-dir").symlink_to("/etc/ssl/certs")
        target = str(tmp_path / "certs-dir" / "rds.pem")
    result = run_hook(PREBUILD, {"DB_SSL_CA": target, "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{tmp_path}/missing.pem")
    assert result.returncode == 1
    assert f"DB_SSL_CA={target} is" in result.stderr and "system trust store" in result.stderr
    assert "eb setenv DB_SSL_CA=/etc/pki/tls/certs/rds-global-bundle.pem" in result.stderr


# -- postdeploy smoke check ---------------------------------------------------------------------
@pytest.fixture
def platform(tmp_path):
    """A copy of .platform, as unpacked on an instance, whose /api/ location can be pointed at
    the port a test's gunicorn listens on (the hook reads the nginx file next to itself)."""
    copy = tmp_path / "staging" / ".platform"
    shutil.copytree(ROOT / ".platform", copy, symlinks=True)

    def api_port(port: int) -> Path:
        conf = copy / NGINX_API
        text = conf.read_text()
        assert "proxy_pass          http://127.0.0.1:8000;" in text
        conf.write_text(text.replace("http://127.0.0.1:8000;", f"http://127.0.0.1:{port};"))
        return conf

    return {"dir": copy, "api_port": api_port,
            "postdeploy": copy / "hooks/postdeploy/01_smoke_check.sh",
            "confighook": copy / "confighooks/postdeploy/01_smoke_check.sh"}


def gunicorn_port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_smoke_check_passes_when_the_app_is_ready(run_hook, platform, make_database, start_gunicorn):
    server = start_gunicorn({**make_database(), "WEB_CONCURRENCY": "1"})
    port = gunicorn_port(server)
    platform["api_port"](port)
    result = run_hook(platform["postdeploy"], {"PORT": str(port)})
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{port}/health/ready answered on attempt 1" in result.stdout
    assert '"status":"ready"' in result.stdout.replace(" ", "")


def test_smoke_check_fails_the_deployment_on_an_unmigrated_database(run_hook, platform, make_database,
                                                                    start_gunicorn):
    """/health answers 200 here (the load balancer would be satisfied); /health/ready does not."""
    server = start_gunicorn({**make_database(migrated=False), "WEB_CONCURRENCY": "1"})
    port = gunicorn_port(server)
    platform["api_port"](port)
    result = run_hook(platform["postdeploy"], {"PORT": str(port)}, SMOKE_CHECK_SECONDS="2")
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}/health/ready did not answer 200 within 2 s" in result.stderr
    assert "Last answer: HTTP 503 " in result.stderr and '"schema_behind"' in result.stderr
    assert "web.stdout.log" in result.stderr and "eb-engine.log" in result.stderr


def test_smoke_check_fails_the_deployment_when_nothing_answers(run_hook, platform):
    port = localdb.free_port()
    platform["api_port"](port)
    result = run_hook(platform["postdeploy"], {"PORT": str(port)}, SMOKE_CHECK_SECONDS="2")
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}/health/ready did not answer 200 within 2 s" in result.stderr
    assert "Last answer: no answer (curl: (7)" in result.stderr


def test_smoke_check_fails_at_once_when_port_and_the_api_location_disagree(run_hook):
    """Beanstalk points its own `location /` at PORT, never our /api/ location, which would
    then answer 502 (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/python-configuration-procfile.html:
    nginx forwards to port 8000 unless PORT says otherwise). The shipped files say 8000."""
    port = localdb.free_port()
    started = time.monotonic()
    result = run_hook(POSTDEPLOY, {"PORT": str(port)}, SMOKE_CHECK_SECONDS="30")
    assert result.returncode == 1
    assert time.monotonic() - started < 10  # no waiting for an app that cannot be reached
    assert (f"PORT={port} but the location /api/ in {ROOT / '.platform' / NGINX_API} proxies to port 8000"
            in result.stderr)


def test_smoke_check_defaults_port_to_8000_like_the_nginx_file(run_hook, tmp_path):
    """PORT unset: 8000 on both sides, so the check goes on to ask the app."""
    result = run_hook(POSTDEPLOY, {}, SMOKE_CHECK_SECONDS="0")
    assert "proxies to port" not in result.stderr
    assert "http://127.0.0.1:8000/health/ready" in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["confighooks twin", "symlink elsewhere"])
def test_smoke_check_finds_the_nginx_file_next_to_its_real_location(run_hook, platform, tmp_path, how):
    """Run from confighooks/ (which execs the hook through ../../hooks) or a symlink, the hook
    still reads .platform/nginx of its own copy, not one relative to the caller."""
    conf = platform["api_port"](1)
    if how == "confighooks twin":
        hook = platform["confighook"]
    else:
        hook = tmp_path / "elsewhere" / "smoke"
        hook.parent.mkdir()
        hook.symlink_to(platform["postdeploy"])
    result = run_hook(hook, {"PORT": "8000"}, SMOKE_CHECK_SECONDS="1")
    assert result.returncode == 1
    assert f"PORT=8000 but the location /api/ in {conf} proxies to port 1" in result.stderr


def test_confighooks_run_the_same_hooks(run_hook, pki, platform, tmp_path):
    """Configuration deployments run confighooks, not hooks: each must do what its twin does."""
    confighooks = ROOT / ".platform" / "confighooks"
    target = tmp_path / "rds.pem"
    result = run_hook(confighooks / "prebuild" / "01_rds_ca_bundle.sh",
                      {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity"},
                      RDS_CA_BUNDLE_URL=f"file://{pki['bundle']}")
    assert result.returncode == 0 and "installed 2 RDS CA certificates" in result.stderr
    port = localdb.free_port()
    platform["api_port"](port)
    result = run_hook(platform["confighook"], {"PORT": str(port)}, SMOKE_CHECK_SECONDS="1")
    assert result.returncode == 1 and f"127.0.0.1:{port}/health/ready did not answer" in result.stderr
