"""The tutorial a newcomer follows: what the README claims is what the code does.

The README's shell blocks, in order, on a fresh clone (test_fresh_clone_walk); every block is
run by some test or marked as needing an AWS account; every path, script and setting the
README names exists and is read; every executable script runs as its shebang says.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, load_script, procfile_command

import localdb


# The Python the README asks for is "3.11", the one scripts/test accepts is 3.11 or newer, and
# Debian 12's python3, which the quick start names, is 3.11.2: every pin must install there.
OLDEST_PYTHON = "3.11.0"
VENVS = {".venv": "requirements-dev.txt", ".venv-iac": "requirements-iac.txt",
         ".venv-eb": "requirements-eb.txt", ".venv-audit": "requirements-audit.txt"}


@pytest.mark.parametrize("venv", VENVS)
def test_every_pinned_package_installs_on_any_python_3_11(venv):
    """Read off the packages installed from each requirements file: a pin whose
    Requires-Python leaves out an older 3.11 (soupsieve 4.1.3 needs 3.11.5) fails
    ./scripts/test on Debian 12, though not on a machine with a newer 3.11."""
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    site = sorted((ROOT / venv).glob("lib/python3*/site-packages"))
    if not site:
        made_by = ".ci/run" if venv == ".venv-audit" else "scripts/test"
        if os.environ.get("CI") and venv in (".venv", ".venv-iac", ".venv-audit"):
            pytest.fail(f"{venv} does not exist ({made_by} makes it)")
        pytest.skip(f"{venv} does not exist here")
    dists = list(metadata.distributions(path=[str(p) for p in site]))
    pinned = {re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0].lower().replace("_", "-")
              for line in (ROOT / VENVS[venv]).read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}
    installed = {d.metadata["Name"].lower().replace("_", "-") for d in dists}
    assert pinned - {"pip", "setuptools"} <= installed, pinned - installed
    too_new = [f"{d.metadata['Name']} {d.version} (Requires-Python {d.metadata['Requires-Python']})"
               for d in dists if d.metadata.get("Requires-Python")
               and OLDEST_PYTHON not in SpecifierSet(d.metadata["Requires-Python"])]
    assert not too_new, f"pinned in {VENVS[venv]} but not installable on Python {OLDEST_PYTHON}: {too_new}"

@pytest.mark.parametrize("venv", VENVS)
def test_every_virtualenv_got_the_pinned_pip_first(venv):
    """scripts/venv.sh's pip_install (and scripts/project_venv.py) install requirements-pip.txt's
    pip before the requirements: the pip venv brings resolved them in about twice the time."""
    from importlib import metadata

    site = sorted((ROOT / venv).glob("lib/python3*/site-packages"))
    if not site:
        pytest.skip(f"{venv} does not exist here")
    [pin] = [line for line in (ROOT / "requirements-pip.txt").read_text().splitlines()
             if line.startswith("pip==")]
    [pip] = [d for d in metadata.distributions(path=[str(p) for p in site]) if d.metadata["Name"] == "pip"]
    assert f"pip=={pip.version}" == pin


def test_gunicorns_own_lines_are_json_like_the_apps(tmp_path):
    """web.stdout.log gets gunicorn's own lines too (starting, booting, a worker's exit): each is
    a JSON object, so one log query reads all of them. A bad setting stops the app: its message
    stays plain text for the operator, everything around it is JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "LOG_"))}
    env.update(RDS_HOSTNAME="db.invalid", RDS_DB_NAME="ebdb", RDS_USERNAME="app", RDS_PASSWORD="x",
               DB_POOL_SIZE="lots", WEB_CONCURRENCY="1", PORT=str(localdb.free_port()),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(procfile_command(), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if re.match(r"\[\d{4}-\d\d-\d\d ", line)], lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    gunicorn = [r for r in records if r.get("logger") == "gunicorn.error"]
    assert {"time", "level", "message", "pid"} <= set(gunicorn[0])
    assert any(r["message"].startswith("Booting worker") for r in gunicorn)
    assert {"level": "ERROR", "message": "Reason: App failed to load."}.items() <= gunicorn[-1].items()


def test_rehearsal_without_the_iac_linters_says_how_to_get_them_before_anything_else(tmp_path):
    """After the quick start's run-local alone, .venv-iac does not exist yet: the rehearsal stops
    at once with the command that makes it, instead of after building and unpacking a bundle."""
    missing = tmp_path / "no-iac-venv"
    env = {**os.environ, "IAC_VENV": str(missing), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "scripts/rehearse-deploy", "--static-only"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "built " not in result.stdout, result.stdout
    assert (f"rehearse: FAILED: the IaC linters (cfn-lint, checkov, parliament) are not installed in "
            f"{missing}: run python3 -m venv {missing} && {missing}/bin/python -m pip install -r "
            f"requirements-iac.txt (./scripts/test does this too)") in result.stderr, result.stderr


def test_bundle_leaves_out_symlinks_that_point_outside_the_project(tmp_path):
    """A link to a virtualenv, a home directory or /etc is not deployable code: zipping what it
    points at would ship another machine's files (or secrets); a link inside the project is
    bundled with what it points at."""
    bundle = load_script("bundle")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("application.py", "requirements.txt", "Procfile", ".ebignore"):
        (project / name).write_bytes((ROOT / name).read_bytes())
    outside = tmp_path / "outside"
    (outside / "lib").mkdir(parents=True)
    (outside / "secret.txt").write_text("not for the bundle")
    (outside / "lib" / "module.py").write_text("x = 1")
    (project / "notes.txt").symlink_to(outside / "secret.txt")
    (project / "venvlink").symlink_to(outside / "lib")
    (project / "wsgi.py").symlink_to("application.py")  # inside: kept
    (project / "loop.txt").symlink_to("loop.txt")  # dangling: nothing to read
    files = bundle.bundle_files(project)
    assert files == ["Procfile", "application.py", "requirements.txt", "wsgi.py"]
    built = bundle.build(project, tmp_path / "app.zip")
    with zipfile.ZipFile(built) as zf:
        assert zf.read("wsgi.py") == (ROOT / "application.py").read_bytes()
        assert "notes.txt" not in zf.namelist()


EXECUTABLES = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.is_file() and os.access(p, os.X_OK))


def test_executable_scripts_have_a_shebang_and_modules_are_not_executable():
    assert {"run-local", "test", "bundle", "rehearse-deploy"} <= set(EXECUTABLES)
    for name in EXECUTABLES:
        assert (ROOT / "scripts" / name).read_text().startswith(("#!/usr/bin/env python3\n", "#!/usr/bin/env bash\n")), name
    for path in (ROOT / "scripts").glob("*.py"):
        assert not os.access(path, os.X_OK), f"{path.name} is a module: not executable"


# Sections about one script, where a lone `--flag` is that script's.
SCRIPT_SECTIONS = {"run-local": "## Quick start", "doctor": "## Doctor", "faults": "### Fault report",
                   "bench": "## Benchmark", "provision": "### 3. Let the environment reach the database"}
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*(?![\w.-])")  # not eb's --vpc.id


def readme_flags(name: str) -> set[str]:
    """The options the README gives scripts/<name>: after an invocation of it (in a code span or
    an sh line), or alone in a code span of its own section."""
    text = README.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    invocation = re.compile(rf"(?<![\w/.-])(?:\./|\.venv/bin/python )?scripts/{re.escape(name)}(?![\w.-])(.*)")
    spans = re.findall(r"`([^`]+)`", prose) + [line for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
                                               for line in block.splitlines()]
    flags = {f for span in spans for args in invocation.findall(span) for f in FLAG.findall(args)}
    if name in SCRIPT_SECTIONS:
        section = prose.split(f"\n{SCRIPT_SECTIONS[name]}\n", 1)[1].split("\n#", 1)[0]
        flags |= {f for span in re.findall(r"`(--[^`]+)`", section) for f in FLAG.findall(span)}
    return flags


@pytest.mark.parametrize("name", EXECUTABLES)
def test_each_executable_script_runs_from_a_shell_without_the_virtualenv(name):
    """`./scripts/<name> --help` with only the system's python3 on PATH (a new terminal, nothing
    activated): each script finds or makes .venv itself and answers with its usage, which has
    every option the README gives it."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    result = subprocess.run([f"./scripts/{name}", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.lower().startswith("usage:"), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    unknown = sorted(f for f in readme_flags(name) if not re.search(rf"(?<![\w-]){f}(?![\w-])", result.stdout))
    assert unknown == [], f"the README gives scripts/{name} options its --help does not have: {unknown}"


def test_readme_flags_finds_each_scripts_options():
    assert {"--db-instance", "--create-role", "--certificate-arn", "--destroy", "--yes"} <= readme_flags("provision")
    assert {"--quick", "--json"} <= readme_flags("faults") and {"--svg", "--rounds", "--apps"} <= readme_flags("bench")
    assert readme_flags("run-local") == {"--yes"} and readme_flags("bundle") == {"--use-with-eb"}
    assert {"--json", "--from-beanstalk"} <= readme_flags("doctor")
    assert not [f for f in readme_flags("provision") if f.startswith("--vpc")]  # eb create's


# -- the README's shell blocks: each is run by a test or marked ---------------------------------
README = ROOT / "README.md"
NOT_RUN = "<!-- not run: needs an AWS account -->"


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    marked: bool  # the line before the fence is NOT_RUN

    def commands(self) -> list[str]:
        return [c.strip() for c in self.text.splitlines() if c.strip() and not c.strip().startswith("#")]


def sh_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i] == "```sh":
            end = lines.index("```", i + 1)
            blocks.append(Block(i + 1, "\n".join(lines[i + 1:end]), i > 0 and lines[i - 1] == NOT_RUN))
            i = end
        i += 1
    return blocks


@functools.lru_cache(maxsize=1)
def claims_in_tests() -> tuple[set[str], set[str], set[str]]:
    """String literals the tests look README commands up with: readme_lines("…") finds lines,
    block_containing("…") and is_block(block, "…") the blocks with that text in them,
    opens_with(block, "…") the blocks whose first command starts so."""
    lines, contained, openers = set(), set(), set()
    kinds = {"readme_lines": lines, "block_containing": contained, "is_block": contained,
             "opens_with": openers}
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func).rsplit(".", 1)[-1]
            literal = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if name in kinds and literal:
                kinds[name].add(literal[0])
    return lines, contained, openers


def unclaimed(block: Block) -> list[str]:
    """The block's command lines that no test looks up."""
    lines, contained, openers = claims_in_tests()
    if any(text in block.text for text in contained) or any(opens_with(block, c) for c in openers):
        return []
    return [c for c in block.commands() if not any(text in c for text in lines)]


def opens_with(block: Block, command: str) -> bool:
    """Whether the block's first command starts with `command`; a claim like is_block's."""
    return bool(block.commands()) and block.commands()[0].startswith(command)


def is_block(block: Block, containing: str) -> bool:
    """Whether `block` has `containing` in it; a literal `containing` claims the block (see
    claims_in_tests), so a test that runs a block says so by asking this."""
    return containing in block.text


def test_every_readme_command_is_run_by_a_test_or_marked():
    """A command nobody runs rots: each line of an sh block is looked up by a test (and run there,
    against moto for AWS), or its block is marked as needing a real AWS account."""
    assert len(sh_blocks()) >= 10 and README.read_text().count("```sh") == len(sh_blocks())
    problems = [f"README.md:{b.line}: {line}" for b in sh_blocks() if not b.marked for line in unclaimed(b)]
    assert problems == [], (f"not run by any test (look it up with readme_lines in the test that "
                            f"runs it) and not marked {NOT_RUN!r} on the line before the fence:\n"
                            + "\n".join(problems))
    # The marker stands right before a fence, nowhere else.
    text = README.read_text()
    assert text.count(NOT_RUN) == text.count(NOT_RUN + "\n```sh\n")


def test_the_claims_check_notices_an_unclaimed_command():
    assert unclaimed(Block(1, "# a comment\n./scripts/no-such-script --now", False)) == [
        "./scripts/no-such-script --now"]
    assert unclaimed(Block(1, ".venv/bin/python scripts/new-api-key", False)) == []  # test_auth.py
    # The walk runs the block that is just ./scripts/run-local, not every line that mentions it.
    assert unclaimed(Block(1, "PORT=8001 ./scripts/run-local", False)) == ["PORT=8001 ./scripts/run-local"]


GENERATED = {".ebextensions/06-https-listener.config": "scripts/provision"}  # written, not shipped


def test_every_path_the_readme_names_exists():
    """A renamed script, module, hook or test breaks this, not the reader."""
    text = README.read_text()
    paths = set(re.findall(r"(?<![\w./-])((?:scripts|app|tests|\.ebextensions|\.platform|\.ci)/[\w./-]*[\w/])", text))
    paths |= set(re.findall(r"^\| `([^`]+\.(?:py|txt|yml|conf|config|sh)|Procfile|\.ebignore)`", text, re.MULTILINE))
    assert len(paths) > 30
    for path in sorted(paths):
        if path in GENERATED:
            assert Path(path).name in (ROOT / GENERATED[path]).read_text(), path
            continue
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    # Every script a reader can run is named in the README.
    for name in EXECUTABLES:
        assert f"scripts/{name}" in text or f"`{name}`" in text, name


# -- the walk: a fresh clone, the README's commands in the README's order -----------------------
def git_clone(tmp_path: Path) -> Path:
    """The committed project as a newcomer gets it, with the virtualenvs this run already has
    linked in (installing them again would take minutes; the scripts' own checks still run)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    (clone / ".venv").symlink_to(sys.prefix)
    for name in (".venv-iac", ".venv-eb"):
        if (ROOT / name).exists():
            (clone / name).symlink_to((ROOT / name).resolve())
    return clone


def bash(script: str, clone: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_local_db_port(log: Path) -> int:
    """The port of run-local's throwaway database, read from its output the way the README's
    Doctor section tells a reader to (its first line)."""
    section = README.read_text().split("\n## Doctor\n", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"`(run-local: started a throwaway [^`]*<port>[^`]*)`", " ".join(section.split()))
    assert len(quoted) == 1, "the Doctor section does not say where run-local's database listens"
    quoted = quoted[0]
    pattern = re.escape(quoted).replace("…", r"\S+").replace("<port>", r"(\d+)")
    first = log.read_text().splitlines()[0]
    found = re.match(pattern, first)
    assert found, f"run-local's first line {first!r} is not what the README quotes: {quoted!r}"
    return int(found[1])


def test_fresh_clone_walk(tmp_path, make_database, eb_venv):
    """On a fresh clone, the README's commands in the order shown, as a reader runs them: each
    works or stops with a message that says what to do. The slow ones run shortened, and in full
    elsewhere: the whole suite (./scripts/test) in CI, the whole rehearsal in tests/test_deploy.py,
    the benchmark only by hand (minutes)."""
    from test_readme import normalized

    clone = git_clone(tmp_path)
    port = localdb.free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RDS_", "DB_", "API_", "VENV", "IAC_VENV", "PYTEST", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"  # a new terminal: nothing activated
    done = []
    run_local = None
    log = tmp_path / "run-local.log"
    try:
        for block in sh_blocks():
            if block.marked:
                continue
            text = block.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if opens_with(block, "./scripts/run-local") and len(block.commands()) == 1:
                with open(log, "wb") as out:  # terminal 1: it keeps serving
                    run_local = subprocess.Popen(["bash", "-c", text], cwd=clone, env={**env, "PORT": str(port)},
                                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            elif opens_with(block, "./scripts/test") and len(block.commands()) == 1:  # terminal 2, while run-local starts
                result = bash(text + " --collect-only -q tests/test_config.py", clone, env, 300)
                assert result.returncode == 0 and " collected" in result.stdout, result.stdout + result.stderr
            elif is_block(block, "/api/users?limit=2'"):
                localdb.wait_until_healthy(f"http://127.0.0.1:{port}/api/users", 120, process=run_local, output=log)
                result = bash(text, clone, env)
                assert result.returncode == 0 and result.stderr == "", result.stderr
                expected = [b for b in re.findall(r"```text\n(.*?)```", README.read_text(), re.DOTALL)
                            if '"next_after":2}' in b]
                assert normalized(result.stdout) == normalized(expected[0])
            elif is_block(block, '"admin": true'):
                result = bash(text, clone, env)
                assert json.loads(result.stdout)["error"]["code"] == "validation_error"
            elif block.commands()[0].endswith("./scripts/doctor"):  # against run-local's database
                result = bash(text.replace("RDS_PORT=3306", f"RDS_PORT={run_local_db_port(log)}"), clone, env)
                sample = re.search(r"```text\n(.*?)```", README.read_text().split("\n## Doctor\n", 1)[1], re.DOTALL)[1]
                assert result.returncode == 0, result.stdout + result.stderr
                assert [l.split()[:2] for l in result.stdout.splitlines()] == [l.split()[:2] for l in sample.splitlines()]
            elif opens_with(block, ".venv/bin/python scripts/new-api-key"):
                result = bash(text, clone, env)
                assert result.returncode == 0 and "API_KEY_SHA256=" in result.stdout, result.stderr
            elif opens_with(block, ".venv/bin/python -m app.migrate"):  # with RDS_* naming a database
                result = bash(text, clone, {**env, **make_database(migrated=False)})
                assert result.returncode == 0 and '"event": "migrate"' in result.stdout, result.stderr
            elif opens_with(block, ".venv/bin/python scripts/rehearse-deploy"):
                result = bash(text + " --static-only", clone, env, 300)
                assert result.returncode == 0, result.stdout + result.stderr
                assert "rehearse: passed" in result.stdout
            elif opens_with(block, "./scripts/install-eb-cli"):
                result = bash(text + "\neb --version", clone, env, 600)
                assert result.returncode == 0 and "EB CLI" in result.stdout, result.stdout + result.stderr
            elif opens_with(block, ".venv/bin/python scripts/bench"):
                result = bash(text.split("#")[0].strip() + " --help", clone, env)
                assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
            else:  # run by the test that looks it up (the AWS ones against moto)
                assert not unclaimed(block), block.text
                continue
            done.append(block.line)
        assert run_local is not None and len(done) >= 10, done
        assert run_local.poll() is None, log.read_text()  # still serving after all of it
    finally:
        if run_local is not None and run_local.poll() is None:
            os.killpg(run_local.pid, signal.SIGINT)  # Ctrl-C in terminal 1
            try:
                run_local.wait(60)
            finally:
                localdb.stop_process(run_local, 5)  # only if Ctrl-C did not stop it
    assert run_local.returncode == 0 and "run-local: stopped" in log.read_text(), log.read_text()
