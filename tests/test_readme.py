"""The README is a tutorial that cannot rot: its commands are the ones the tests and CI run."""

import json
import os
import re
import subprocess
import sys

import pytest

from app.config import EXPECTED
from conftest import ROOT, readme_blocks

README = (ROOT / "README.md").read_text()
blocks = readme_blocks


def test_first_two_commands_run_the_app_and_the_tests():
    first, second = [b.strip() for b in blocks("sh")[:2]]
    assert first == "./scripts/run-local"  # run by tests/test_run_local.py
    assert second == "./scripts/test"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == second  # CI runs exactly the README's test command


def test_every_setting_is_documented():
    table = {m[1] for m in re.finditer(r"^\| `([A-Z0-9_]+)` \|", README, re.MULTILINE)}
    gunicorn_vars = set(re.findall(r'_int\(\s*"([A-Z_]+)"', (ROOT / "gunicorn.conf.py").read_text()))
    gunicorn_vars |= set(re.findall(r"_int\('([A-Z_]+)'", (ROOT / "gunicorn.conf.py").read_text()))
    assert gunicorn_vars == {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"}
    assert set(EXPECTED) | gunicorn_vars | {"LOG_LEVEL"} == table


@pytest.fixture
def seeded_server(db_env, start_gunicorn):
    env = {**os.environ, **db_env}
    subprocess.run([sys.executable, "-m", "flask", "--app", "application", "seed"], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    return start_gunicorn({**db_env, "WEB_CONCURRENCY": "1"})


def test_try_it_commands_work(seeded_server):
    try_it = blocks("sh")[2]
    host = seeded_server.url.removeprefix("http://")
    for line in try_it.strip().splitlines():
        result = subprocess.run(["bash", "-c", line.replace("127.0.0.1:8000", host)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (line, result.stderr)
        if "DELETE" in line:
            assert result.stdout.strip() == "204"


def test_documented_error_example_is_what_the_api_says(seeded_server):
    command = blocks("sh")[3].strip()
    host = seeded_server.url.removeprefix("http://")
    result = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8000", host)],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout) == json.loads(blocks("json")[0])
