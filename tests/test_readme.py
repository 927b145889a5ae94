"""The README is a tutorial that cannot rot: its commands are the ones the tests and CI run."""

import json
import os
import re
import shutil
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


def block_containing(text: str, language: str = "sh") -> str:
    """The one README block in `language` that contains `text` (blocks move as sections are added)."""
    [block] = [b for b in blocks(language) if text in b]
    return block


TRY_IT = "/api/users?limit=2'"
# What differs from run to run in the "Try it" output: ids, times, pids, the pool's counters.
VOLATILE = [(re.compile(r'"(id|pid|next_after|open|in_use|idle|waiting|borrow_timeouts|opened|closed)":\d+'),
             r'"\1":N'),
            (re.compile(r"No user with id \d+"), "No user with id N"),
            (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "TIME")]


def normalized(output: str) -> str:
    for pattern, replacement in VOLATILE:
        output = pattern.sub(replacement, output)
    return output


def shell(name: str) -> str:
    found = shutil.which(name)
    if not found:
        message = f"{name} is not installed (apt-get install {name})"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return found


@pytest.mark.parametrize("shell_name", ["bash", "zsh"])
def test_try_it_prints_what_the_readme_shows_every_time(seeded_server, shell_name):
    """The block as a reader pastes it, twice (it must clean up after itself), in bash and in
    zsh (macOS's shell, where an unquoted ? is a glob that fails)."""
    block = block_containing(TRY_IT)
    expected = normalized(block_containing('"next_after":2}', "text"))
    host = seeded_server.url.removeprefix("http://")
    for _ in range(2):
        result = subprocess.run([shell(shell_name), "-c", block.replace("127.0.0.1:8000", host)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert normalized(result.stdout) == expected


def test_every_url_with_a_query_is_quoted_for_zsh():
    """zsh (macOS's default shell) takes an unquoted ? or & in a pasted URL as a glob or a
    background job; every README command line quotes its URLs."""
    for line in (line for b in blocks("sh") for line in b.splitlines()):
        for url in re.findall(r"\S*https?://\S+", line):
            if any(c in url for c in "?&*["):
                assert url[0] in "'\"", line


def test_documented_error_example_is_what_the_api_says(seeded_server):
    command = block_containing('"admin": true').strip()
    host = seeded_server.url.removeprefix("http://")
    result = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8000", host)],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout) == json.loads(blocks("json")[0])
