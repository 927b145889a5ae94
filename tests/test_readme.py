"""The README is a tutorial that cannot rot: its commands are the ones the tests and CI run."""

import ast
import json
import os
import re
import shutil
import socket
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


def table_after(heading_text: str, nth: int = 0) -> dict[str, str]:
    """{variable: whole row} of the `nth` table under the section `heading_text`."""
    section = README.split(f"\n## {heading_text}\n", 1)[1].split("\n## ", 1)[0]
    tables = re.findall(r"((?:^\|.*\|\n)+)", section, re.MULTILINE)
    return {m[1]: m[0] for m in re.finditer(r"^\| `([A-Z0-9_]+)` \|.*$", tables[nth], re.MULTILINE)}


APP_NAME = re.compile(r"^(?:(?:RDS|DB|AWS|API|LOG|GUNICORN|WEB|METRICS|FLEET)_[A-Z0-9_]+|PORT)$")
SHELL_ONLY = {"HOME", "PATH", "PWD", "LANG"}  # the machine's, not the project's


def os_environ_reads(tree: ast.AST) -> set[str]:
    """Names read with os.environ.get/os.environ[...]/os.getenv and gunicorn.conf.py's _int,
    given as a string or as a module-level constant holding one (`_AGAIN = "..."`)."""
    constants = {target.id: node.value.value for node in getattr(tree, "body", [])
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}

    def literal(node: ast.AST):
        if isinstance(node, ast.Constant):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    found = set()
    for node in ast.walk(tree):
        target, key = None, None
        if isinstance(node, ast.Call) and node.args and literal(node.args[0]) is not None:
            target, key = ast.unparse(node.func), literal(node.args[0])
        elif isinstance(node, ast.Subscript) and literal(node.slice) is not None:
            target, key = ast.unparse(node.value) + ".__getitem__", literal(node.slice)
        if isinstance(key, str) and target in ("os.environ.get", "os.getenv", "os.environ.__getitem__", "_int"):
            found.add(key)
    return found


def app_reads() -> set[str]:
    """Every variable name the app and gunicorn.conf.py mention as a string of its own (a dict
    key, a field alias, an environ lookup), and every os.environ lookup there."""
    names = set()
    for path in [*ROOT.glob("app/**/*.py"), ROOT / "gunicorn.conf.py", ROOT / "application.py"]:
        tree = ast.parse(path.read_text())
        names |= os_environ_reads(tree)
        names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                  and isinstance(n.value, str) and APP_NAME.match(n.value)}
    return names


def script_reads() -> set[str]:
    """What the scripts, CI, the tests' setup and .platform's hooks read from the environment."""
    names = set()
    for path in [*(ROOT / "scripts").iterdir(), *(ROOT / ".ci").iterdir(), ROOT / "tests" / "conftest.py",
                 *(ROOT / ".platform").rglob("*.sh")]:
        if not path.is_file():
            continue
        text = path.read_text()
        if text.startswith("#!/usr/bin/env bash") or path.suffix == ".sh":  # .sh: sourced
            names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", text))
        else:
            names |= os_environ_reads(ast.parse(text))
    return names - SHELL_ONLY


def test_every_setting_the_code_reads_is_documented_and_every_row_is_read():
    settings, scripts = table_after("Configuration", 0), table_after("Configuration", 1)
    read_by_app = app_reads()
    # gunicorn.conf.py's settings, found by the same scan that finds the app's.
    assert {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT", "LOG_LEVEL"} <= read_by_app
    assert set(EXPECTED) <= read_by_app
    documented = set(settings) | {n for row in settings.values() for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    # The app's settings are in the first table; a tool's path the doctor shares with the
    # platform hooks (EB_GET_CONFIG) may be in the second.
    assert read_by_app - documented - set(scripts) == set(), "read by the app, documented nowhere"
    assert set(settings) - read_by_app == set(), "in the Configuration table, read by nothing"
    read_by_scripts = script_reads()
    assert {"VENV", "PYTHON", "IAC_VENV", "TEST_DATABASE_URL"} <= read_by_scripts
    assert {"SMOKE_CHECK_SECONDS", "PROJECT_VENV_REEXEC"} <= read_by_scripts  # hooks; a named constant
    assert read_by_scripts - documented - set(scripts) == set(), "read by a script, documented nowhere"
    assert set(scripts) - read_by_scripts - read_by_app == set(), "in the scripts' table, read by nothing"


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
    block = block_containing("/api/users?limit=2'")
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


def test_the_scripts_row_says_runs_as_a_script_only_of_executable_scripts():
    """The module table: what "runs as ./scripts/<name> and says --help" is what is executable
    (tests/test_tutorial.py runs each with --help); a module named there is not executable."""
    [row] = [line for line in README.splitlines() if line.startswith("| `scripts/` |")]
    runnable, modules = row.split("| `scripts/` |")[1].split("Each runs as")
    executable = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file() and os.access(p, os.X_OK)}
    assert set(re.findall(r"`([\w-]+)`", runnable)) == executable
    named = re.findall(r"`([\w-]+\.py)`", modules)
    assert named and all(not os.access(ROOT / "scripts" / name, os.X_OK) for name in named)


def test_quick_start_names_every_tool_ci_installs_for_the_tests():
    """.ci/run's "# <tool> (tests/...)" lines: each such tool is in the Quick start's list."""
    paragraph = README.split("A few tests need more of", 1)[1].split("\n\n", 1)[0]
    commands = re.findall(r"^# (\S+) \(tests/", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert {"nginx", "wrk", "zsh"} <= set(commands)
    assert [c for c in commands if f"`{c}`" not in paragraph] == []


def test_migrate_failures_print_what_the_readme_says():
    """Invalid settings: several lines after `migrate: `, exit 2; a database that cannot be
    reached: one line, exit 1."""
    section = README.split("\n## Migrations\n", 1)[1].split("\n## ", 1)[0]
    env = {"PATH": os.environ["PATH"], "RDS_HOSTNAME": "127.0.0.1", "RDS_DB_NAME": "ebdb",
           "RDS_USERNAME": "app", "RDS_PASSWORD": "x", "DB_SSL_MODE": "disabled", "DB_CONNECT_TIMEOUT": "1"}

    def migrate(**changes):
        return subprocess.run([sys.executable, "-m", "app.migrate"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**env, **changes})

    invalid = migrate(RDS_PORT="abc", DB_POOL_SIZE="lots")
    lines = invalid.stderr.splitlines()
    assert invalid.returncode == 2 and lines[0] == "migrate: Invalid configuration (environment properties):"
    assert "`Invalid configuration (environment properties):`" in section
    assert [l.split(":")[0].strip() for l in lines[1:3]] == ["RDS_PORT", "DB_POOL_SIZE"]  # one each
    assert len(lines) == 4 and "environment properties" in lines[3]  # and where to set them
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        unreachable = migrate(RDS_PORT=str(closed.getsockname()[1]))
    assert unreachable.returncode == 1 and len(unreachable.stderr.splitlines()) == 1
    assert unreachable.stderr.startswith("migrate: cannot reach the database at 127.0.0.1:")
    assert "A database or migration failure prints one line" in section


def test_doctor_sample_is_what_doctor_says_against_the_server_it_names(make_database):
    """The Doctor section's output is the README line against a throwaway MariaDB of
    scripts/localdb.py (as the tests' own server): each line's check and status, and the tcp
    line's note that the server offers no TLS."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("TEST_DATABASE_URL names another server than scripts/localdb.py's")
    section = README.split("\n## Doctor\n", 1)[1].split("\n## ", 1)[0]
    sample = re.search(r"```text\n(.*?)```", section, re.DOTALL)[1].splitlines()
    assert "throwaway MariaDB of `scripts/localdb.py`" in section
    [line] = [l.strip() for l in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)[0].splitlines()
              if l.strip().endswith("./scripts/doctor")]
    db = make_database()
    line = line.replace("RDS_PORT=3306", f"RDS_PORT={db['RDS_PORT']}").replace(
        "RDS_DB_NAME=ebdb", f"RDS_DB_NAME={db['RDS_DB_NAME']}")
    result = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"})
    real = result.stdout.splitlines()
    assert [l.split()[:2] for l in real] == [l.split()[:2] for l in sample], result.stdout + result.stderr
    [tcp] = [l for l in real if l.split()[1] == "tcp"]
    [sample_tcp] = [l for l in sample if l.split()[1] == "tcp"]
    assert tcp.endswith("(it does not offer TLS)") and sample_tcp.endswith("(it does not offer TLS)")


def test_quick_start_dnf_line_does_not_ask_for_curl():
    """Amazon Linux 2023 (and Fedora's minimal images) ship curl-minimal, which conflicts with
    the package `curl`: `dnf install ... curl ...` then refuses the whole transaction ("package
    curl-minimal conflicts with curl provided by curl", amazonlinux/amazon-linux-2023#150 and
    #416), so neither Python 3.11 nor MariaDB got installed. curl-minimal's `curl` serves the
    Try it block (HTTP only)."""
    [row] = [line for line in README.splitlines() if line.startswith("| Amazon Linux 2023")]
    [command] = re.findall(r"`(sudo dnf install [^`]+)`", row)
    packages = command.split()[3:]
    assert "python3.11" in packages and "curl" not in packages, command
    assert "curl-minimal" in row  # says where curl comes from
