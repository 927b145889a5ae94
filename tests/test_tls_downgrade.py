"""A server that offers no TLS never receives a login when DB_SSL_MODE verifies.

A man in the middle can strip TLS by answering the client's connection with a MySQL
greeting that lacks the SSL capability. With DB_SSL_MODE=verify-ca or verify-identity the
app must then refuse before its handshake response leaves: that packet carries the user
and the password's scramble, and in IAM mode the whole token in clear (mysql_clear_password).
mysql-connector's C extension (9.7.0) goes on in cleartext with ssl_verify_cert alone; the
pure-Python protocol and the C extension with ssl_verify_identity refuse. The server here
is a real TCP peer speaking the MySQL protocol's first packet (Protocol::HandshakeV10,
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html)
with CLIENT_SSL (0x800) cleared, that records every byte the client sends.
"""

from __future__ import annotations

import socket
import struct
import threading

import mysql.connector
import pytest

import localdb
from app.config import load_settings
from app.credentials import IamAuthToken, StaticPassword
from app.db.connection import ConnectionOpener

CANARY = "canary-login-secret-0f1e2d"
CLIENT_SSL = 0x0800
CLIENT_PLUGIN_AUTH = 0x00080000


class StrippingServer:
    """Greets every connection without the SSL capability; keeps what clients send."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self.received = bytearray()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def greeting() -> bytes:
        caps = (0xF7FF & ~CLIENT_SSL) | CLIENT_PLUGIN_AUTH | 0x8000  # no SSL; plugin auth
        body = (b"\x0a" + b"10.11.99-stripping\x00" + struct.pack("<I", 7) + b"abcdefgh\x00"
                + struct.pack("<H", caps & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
                + struct.pack("<H", caps >> 16) + bytes([21]) + b"\x00" * 10 + b"ijklmnopqrst\x00"
                + b"mysql_native_password\x00")
        return struct.pack("<I", len(body))[:3] + b"\x00" + body

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                conn.sendall(self.greeting())
                try:
                    while chunk := conn.recv(65536):
                        self.received += chunk
                        # Ask for the cleartext plugin, as a server configured for it would.
                        switch = b"\xfe" + b"mysql_clear_password\x00"
                        conn.sendall(struct.pack("<I", len(switch))[:3] + b"\x02" + switch)
                except OSError:
                    pass

    def close(self) -> None:
        """shutdown() wakes the thread blocked in accept() (close() alone does not, on Linux)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.fixture
def stripping_server():
    server = StrippingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory):
    return str(localdb.make_ca(tmp_path_factory.mktemp("ca"), "ca"))


def settings_for(port: int, auth: str, ssl_mode: str, ca: str):
    env = {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(port), "RDS_DB_NAME": "ebdb",
           "RDS_USERNAME": "app", "DB_AUTH": auth, "DB_SSL_MODE": ssl_mode, "DB_SSL_CA": ca,
           "DB_CONNECT_TIMEOUT": "3"}
    if auth == "password":
        env["RDS_PASSWORD"] = CANARY
    return load_settings(env)


class CanaryToken(IamAuthToken):
    """A real IamAuthToken whose signer returns the canary (no AWS needed to sign)."""

    def __init__(self, settings):
        signer = type("Signer", (), {"generate_db_auth_token": staticmethod(lambda **_: CANARY)})()
        super().__init__(signer, settings.host, settings.port, settings.user, "eu-west-1")


@pytest.mark.parametrize("ssl_mode", ["verify-ca", "verify-identity"])
@pytest.mark.parametrize("auth", ["password", "iam"])
def test_no_login_reaches_a_server_that_offers_no_tls(stripping_server, ca_file, auth, ssl_mode):
    settings = settings_for(stripping_server.port, auth, ssl_mode, ca_file)
    credentials = (StaticPassword("app", CANARY) if auth == "password" else CanaryToken(settings))
    with pytest.raises(mysql.connector.Error) as refused:
        ConnectionOpener(settings, credentials)()
    assert refused.value.errno == 2026 or "insecure" in str(refused.value), refused.value
    assert CANARY.encode() not in stripping_server.received
    assert b"app" not in stripping_server.received  # no handshake response left at all
