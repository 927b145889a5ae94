"""The README's Troubleshooting section quotes what the code prints: these tests keep it so.

A user searches the README for a fragment of their error. Each line of the section's `text`
blocks must still be printed by this repository (app/, scripts/, .platform/, application.py,
gunicorn.conf.py), `…` standing for a printed value. Some are provoked for real: a deployment
without an API key, a database that refuses connections with 1040, and a deploy's first command
(the bootstrap) with a file that is no CA bundle, the wrong CA, or no database listening.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import mysql.connector
import pytest

import localdb
from conftest import ROOT, make_test_pki, procfile_command

from app import create_app

SECTION = "## Troubleshooting a first deploy"
# A printed value, in the code: an f-string field, a %-style argument, a shell expansion.
PLACEHOLDER = "…"
SHELL_EXPANSION = re.compile(r"\$\([^)]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9]")
PERCENT = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrif]")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else None]


def quoted_lines() -> list[str]:
    blocks = re.findall(r"```text\n(.*?)```", section(), re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _python_strings(source: str) -> list[str]:
    """Every string literal, adjacent literals joined (as Python joins them), fields as …."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER
                                 for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return [PERCENT.sub(PLACEHOLDER, s) for s in found]


def code_strings() -> list[str]:
    files = [ROOT / "application.py", ROOT / "gunicorn.conf.py", *(ROOT / "app").rglob("*.py"),
             *(p for p in (ROOT / "scripts").rglob("*") if p.is_file()),
             *(p for p in (ROOT / ".platform").rglob("*.sh"))]
    strings = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sh" or text.startswith("#!/bin/bash") or text.startswith("#!/usr/bin/env bash"):
            strings += [SHELL_EXPANSION.sub(PLACEHOLDER, line) for line in text.splitlines()]
        elif path.suffix == ".py" or text.startswith("#!/usr/bin/env python"):
            strings += _python_strings(text)
    return strings


def fragments(line: str) -> list[str]:
    """The literal parts of a quoted line, as the code would hold them between its fields."""
    return [f for f in (part.strip(" ():;,.'\"") for part in line.split(PLACEHOLDER)) if f]


def missing(line: str, strings: list[str]) -> list[str]:
    """The fragments of `line` no code string holds; none when the line holds a whole message
    of the code with its values filled in (API_AUTH=all for API_AUTH=…)."""
    for s in strings:
        if PLACEHOLDER in s and len(s.replace(PLACEHOLDER, "")) >= 40:
            template = ".+?".join(re.escape(part) for part in s.split(PLACEHOLDER))
            if re.search(template, line):
                return []
    return [f for f in fragments(line) if not any(f in s for s in strings)]


def test_each_quoted_message_is_printed_by_the_code():
    lines = quoted_lines()
    assert len(lines) >= 15, "the section quotes the messages in ```text blocks"
    strings = code_strings()
    for line in lines:
        # Each line says something specific, not only a word or two around values.
        assert max(map(len, fragments(line))) >= 15, line
        assert not missing(line, strings), (line, missing(line, strings))
    # The check itself fails on a message the code does not print.
    assert missing("cannot reach the database at … (…): check the firewall", strings) == ["check the firewall"]


def quoted(start: str) -> str:
    [line] = [line for line in quoted_lines() if line.startswith(start)]
    return line


def printed(line: str, output: str) -> bool:
    """Whether `output` holds the quoted line, each … standing for a value."""
    return re.search(".+?".join(re.escape(part) for part in line.split(PLACEHOLDER)), output) is not None


def run_bootstrap(env: dict[str, str]) -> str:
    """A deploy's first container command, 01_bootstrap_user, failing; returns its stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_", "API_"))}
    result = subprocess.run([sys.executable, "-m", "app.bootstrap"], cwd=ROOT, env={**clean, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr  # 2: config
    return result.stderr


def no_database(**extra: str) -> dict[str, str]:
    """Properties naming a port where no server listens."""
    return {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(localdb.free_port()), "RDS_DB_NAME": "ebdb",
            "RDS_USERNAME": "app", "RDS_PASSWORD": "x", "DB_SSL_MODE": "disabled", **extra}


def test_a_file_that_is_no_ca_bundle_stops_a_deploy_as_quoted(tmp_path):
    (tmp_path / "hostname").write_text("ip-10-0-1-23\n")
    stderr = run_bootstrap(no_database(DB_SSL_MODE="verify-identity", DB_SSL_CA=str(tmp_path / "hostname")))
    assert printed(quoted("DB_SSL_CA: … is not a PEM bundle"), stderr), stderr


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A server whose certificate ca.pem signed, and wrong-ca.pem, which signed nothing."""
    work = tmp_path_factory.mktemp("tls")
    server = localdb.LocalServer(basedir=work / "db", extra_args=make_test_pki(work / "pki")).start()
    yield {"env": {**server.environ("ebdb"), "DB_CONNECT_TIMEOUT": "3"}, "pki": work / "pki"}
    server.remove()


@pytest.mark.parametrize("mode", ["verify-ca", "verify-identity"])  # 01 sets verify-identity
def test_the_wrong_ca_stops_a_deploy_as_quoted(tls_server, mode):
    """The bootstrap connects first, so its line is the one a deploy with the wrong bundle shows."""
    env = {**tls_server["env"], "DB_SSL_MODE": mode, "DB_SSL_CA": str(tls_server["pki"] / "wrong-ca.pem")}
    [line] = run_bootstrap(env).splitlines()
    assert printed(quoted("bootstrap: TLS to the database at "), line), line


def test_an_unreachable_database_stops_a_deploy_as_quoted():
    [line] = run_bootstrap(no_database()).splitlines()
    assert printed(quoted("bootstrap: cannot reach the database at "), line), line


def test_api_auth_all_without_a_key_prints_the_quoted_lines(tmp_path):
    """gunicorn as the Procfile starts it, with .ebextensions/01's API_AUTH=all and no key."""
    [start] = [i for i, line in enumerate(quoted_lines()) if line.startswith("Configuration error:")]
    block = quoted_lines()[start:start + 3]
    assert block[2].startswith("API_AUTH=all needs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "API_", "LOG_"))}
    env.update(RDS_HOSTNAME="db.example.com", RDS_DB_NAME="ebdb", RDS_USERNAME="app", RDS_PASSWORD="x",
               API_AUTH="all", WEB_CONCURRENCY="1", PORT=str(localdb.free_port()),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(procfile_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for line in block:
        assert line in output, (line, output)
    assert "Reason: App failed to load." in output and "Reason: App failed to load." in section()


@pytest.fixture(scope="module")
def small_server():
    """A server that takes 10 connections (MariaDB's and MySQL's minimum max_connections)."""
    server = localdb.LocalServer(extra_args=["--max-connections=10"]).start()
    yield server
    server.remove()


def test_too_many_connections_is_logged_as_quoted(small_server, capsys):
    small_server.create_database("budget")
    env = small_server.environ("budget")
    held = []
    try:
        while True:  # take every connection the server gives the app's user
            try:
                held.append(mysql.connector.connect(host="127.0.0.1", port=small_server.port,
                                                    user=env["RDS_USERNAME"], password=env["RDS_PASSWORD"]))
            except mysql.connector.Error as err:
                assert err.errno == 1040, err
                break
            assert len(held) <= 10
        capsys.readouterr()
        response = create_app({**env, "DB_POOL_TIMEOUT": "1"}).test_client().get("/api/users")
    finally:
        for conn in held:
            conn.close()
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [record] = [r for r in logged if r.get("event") == "db_unavailable"]
    assert record["errno"] == 1040
    assert f"`{record['message']}`" in section(), record["message"]


def test_the_eb_commands_these_sections_quote_parse_with_the_eb_cli(eb_venv):
    """Inline `eb …` commands of Troubleshooting, Choosing and Cost and teardown, checked as
    tests/test_deploy.py checks the walkthrough's: against the EB CLI's own argument definitions."""
    from test_deploy import eb_parse

    text = (ROOT / "README.md").read_text()
    start, end = text.index(SECTION), text.index("## Benchmark")
    spans = {" ".join(s.split()) for s in re.findall(r"`(eb\s+[a-z]+[^`]*)`", text[start:end])}
    # Placeholders stand for values: give the parser one; the prose names `eb setenv` alone too.
    spans = sorted(re.sub(r"<[^>]+>|…", "x", s) + (" NAME=value" if s == "eb setenv" else "") for s in spans)
    assert {s.split()[1] for s in spans} >= {"events", "logs", "setenv", "terminate", "deploy"}
    result = eb_parse(eb_venv, spans)
    assert result.returncode == 0, result.stdout + result.stderr
