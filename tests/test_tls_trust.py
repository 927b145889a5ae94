"""DB_SSL_TRUST end to end: the CA file the prebuild hook installs, used by the app over real TLS.

RDS Proxy endpoints present ACM certificates, which chain to Amazon Root CA 1-4 and not to the
RDS CAs of the global bundle
(https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html,
"Using TLS/SSL with RDS Proxy").
Here a throwaway MariaDB plays the proxy: its certificate for 127.0.0.1 is signed by a stand-in
"Amazon Root CA 1". The hook gets a stand-in RDS bundle from a file:// URL and a fake system
trust store; the app then connects with DB_SSL_MODE=verify-identity, trusting only that file.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import mysql.connector
import pytest

import localdb
from app import create_app, migrate
from conftest import ROOT, load_script

PREBUILD = ROOT / ".platform/hooks/prebuild/01_rds_ca_bundle.sh"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.DOTALL)

rehearsal = load_script("rehearse-deploy")


def pem_blocks(text: str) -> list[str]:
    return PEM_BLOCK.findall(text)


@pytest.fixture(scope="module")
def proxy_like(tmp_path_factory):
    """A TLS server whose certificate chains to a stand-in Amazon Root CA 1; a migrated database."""
    work = tmp_path_factory.mktemp("tls-trust")
    pki = work / "pki"
    pki.mkdir()
    amazon_root = localdb.make_ca(pki, "amazon-root-1", subject="/CN=Amazon Root CA 1/O=Amazon/C=US")
    rds = [localdb.make_ca(pki, "rds-rsa", subject="/CN=Amazon RDS stand-in Root CA RSA2048 G1/O=Test"),
           localdb.make_ca(pki, "rds-ecc", subject="/CN=Amazon RDS stand-in Root CA ECC384 G1/O=Test")]
    unrelated = localdb.make_ca(pki, "unrelated", subject="/CN=Unrelated Root CA/O=Someone Else/C=US")
    rds_bundle = pki / "global-bundle.pem"
    rds_bundle.write_text("".join(p.read_text() for p in rds))
    system = pki / "system-ca-bundle.crt"
    system.write_text(unrelated.read_text() + amazon_root.read_text())

    server = localdb.LocalServer(basedir=work / "db",
                                 extra_args=localdb.make_server_cert(pki, "amazon-root-1"))
    try:
        server.start()
        server.create_database("ebdb")
        env = server.environ("ebdb")
        conn = mysql.connector.connect(host=env["RDS_HOSTNAME"], port=int(env["RDS_PORT"]),
                                       user=env["RDS_USERNAME"], password=env["RDS_PASSWORD"],
                                       database=env["RDS_DB_NAME"], autocommit=True, ssl_disabled=True)
        try:
            migrate.apply(conn)
        finally:
            conn.close()
        yield {"env": env, "pki": pki, "rds_bundle": rds_bundle, "system": system,
               "amazon_root": amazon_root, "rds": rds, "unrelated": unrelated}
    finally:
        server.remove()


def install(proxy_like, tmp_path: Path, trust: str) -> Path:
    """Run the prebuild hook as Beanstalk does (properties through get-config); return DB_SSL_CA."""
    target = tmp_path / "certs" / "rds-global-bundle.pem"
    get_config = tmp_path / "get-config"
    rehearsal.get_config_stand_in(get_config, {"DB_SSL_CA": str(target), "DB_SSL_MODE": "verify-identity",
                                               "DB_SSL_TRUST": trust})
    result = subprocess.run([str(PREBUILD)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={"PATH": os.environ["PATH"], "EB_GET_CONFIG": str(get_config),
                                 "RDS_CA_BUNDLE_URL": f"file://{proxy_like['rds_bundle']}",
                                 "SYSTEM_CA_BUNDLE": str(proxy_like["system"])})
    assert result.returncode == 0, result.stderr
    return target


def ready(proxy_like, ca_file: Path):
    """GET /health/ready from the app built as application.py builds it, verifying the server."""
    app = create_app({**proxy_like["env"], "DB_SSL_MODE": "verify-identity", "DB_SSL_CA": str(ca_file),
                      "DB_POOL_TIMEOUT": "1", "DB_CONNECT_TIMEOUT": "3"})
    try:
        return app.test_client().get("/health/ready")
    finally:
        app.extensions["database"].dispose()


def test_rds_proxy_trust_lets_the_app_verify_a_server_signed_by_amazon_root_ca(proxy_like, tmp_path):
    ca_file = install(proxy_like, tmp_path, "rds-proxy")
    text = ca_file.read_text()
    expected = [pem_blocks(p.read_text())[0] for p in [*proxy_like["rds"], proxy_like["amazon_root"]]]
    assert pem_blocks(text) == expected
    assert pem_blocks(proxy_like["unrelated"].read_text())[0] not in text

    # Text outside the BEGIN/END blocks (the hook's header and comments) is ignored by OpenSSL...
    outside = [line for line in PEM_BLOCK.sub("", text).splitlines() if line]
    assert outside and outside[0].startswith("# Installed by .platform/hooks/prebuild/")
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_file),
                               str(proxy_like["pki"] / "server.pem")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr

    # ...by the app (mysql-connector's C extension: connect_arguments uses it) ...
    response = ready(proxy_like, ca_file)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["database"] == "ok"

    # ...and by mysql-connector's pure-Python TLS (Python's ssl module).
    env = proxy_like["env"]
    conn = mysql.connector.connect(host=env["RDS_HOSTNAME"], port=int(env["RDS_PORT"]), user=env["RDS_USERNAME"],
                                   password=env["RDS_PASSWORD"], use_pure=True, ssl_ca=str(ca_file),
                                   ssl_verify_cert=True, ssl_verify_identity=True)
    try:
        cursor = conn.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cursor.fetchone()[1]  # an encrypted session
    finally:
        conn.close()


def test_rds_trust_alone_cannot_verify_an_rds_proxy_certificate(proxy_like, tmp_path):
    """The default (the RDS CAs only) refuses the proxy's chain: the app reports the database as
    unreachable rather than connecting unverified, and the cause is the certificate."""
    ca_file = install(proxy_like, tmp_path, "rds")
    assert pem_blocks(ca_file.read_text()) == [pem_blocks(p.read_text())[0] for p in proxy_like["rds"]]
    response = ready(proxy_like, ca_file)
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"
    env = proxy_like["env"]
    with pytest.raises(mysql.connector.Error, match="certificate verify failed"):
        mysql.connector.connect(host=env["RDS_HOSTNAME"], port=int(env["RDS_PORT"]), user=env["RDS_USERNAME"],
                                password=env["RDS_PASSWORD"], use_pure=True, ssl_ca=str(ca_file),
                                ssl_verify_cert=True, ssl_verify_identity=True)
