"""The operator scripts as an operator runs them, where it goes wrong: a check that stops on an
error, Ctrl-C, a closed stdout, a linked virtualenv, a key redirected into a readable file, a
path with a space. Each ends with one line and a documented exit status, never a traceback,
and leaves nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, copy_project, load_script
from test_scripts_bundle import OPTIONS

SCRIPTS = ROOT / "scripts"
VENV = Path(sys.executable).parent.parent


def script_env(**extra: str) -> dict[str, str]:
    """A shell's environment with this virtualenv's python3 first on PATH, as the shebangs find it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def closed_pipe_run(command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`command` with its stdout a pipe nobody reads any more (`| head -1` once head has gone)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=timeout)
    finally:
        os.close(write_end)


# -- scripts/doctor ---------------------------------------------------------------------------
def test_doctor_json_stays_json_when_a_check_stops_on_a_database_error(mysql_server, make_database):
    """A server that refuses a statement after the login (here MAX_QUERIES_PER_HOUR, as a DB
    parameter group or a proxy can): the query in privileges raised, and --json printed a
    traceback instead of JSON. The check is a FAIL naming the server's error; the report goes on."""
    env = make_database()
    user = f"capped_{uuid.uuid4().hex[:8]}"
    mysql_server.sql([f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'capped-pw' WITH MAX_QUERIES_PER_HOUR 5",
                      f"GRANT ALL PRIVILEGES ON `{env['RDS_DB_NAME']}`.* TO '{user}'@'127.0.0.1'"])
    try:
        result = subprocess.run([str(SCRIPTS / "doctor"), "--json"], cwd="/", capture_output=True, text=True,
                                timeout=60, env=script_env(**{**env, "RDS_USERNAME": user,
                                                              "RDS_PASSWORD": "capped-pw"}))
    finally:
        mysql_server.sql([f"DROP USER '{user}'@'127.0.0.1'"])
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is False and result.returncode == 1, result.stdout
    assert statuses["auth"] == "PASS" and statuses["privileges"] == "FAIL", statuses
    [privileges] = [c for c in report["checks"] if c["name"] == "privileges"]
    assert privileges["detail"].startswith("the check stopped on an error: MySQL error 1226: "), privileges
    assert "max_queries_per_hour" in privileges["detail"]
    assert "capped-pw" not in result.stdout + result.stderr


def silent_listener() -> tuple[socket.socket, threading.Event, list]:
    """A port that accepts connections and never answers (a stalled server); the event is set at
    the first accept, whose socket the list holds open."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = threading.Event()
    held = []

    def accept():
        try:
            held.append(listener.accept())
            accepted.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return listener, accepted, held


def test_doctor_interrupted_prints_its_report_and_exits_130():
    """Ctrl-C while the doctor waits for a server that does not answer: a KeyboardInterrupt
    traceback, and with --json no JSON at all. Now the check that ran is a FAIL, the rest SKIP."""
    listener, accepted, held = silent_listener()
    env = script_env(RDS_HOSTNAME="127.0.0.1", RDS_PORT=str(listener.getsockname()[1]), RDS_DB_NAME="ebdb",
                     RDS_USERNAME="app", RDS_PASSWORD="unused", DB_SSL_MODE="disabled", DB_CONNECT_TIMEOUT="60")
    try:
        doctor = subprocess.Popen([str(SCRIPTS / "doctor"), "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert accepted.wait(60), "the doctor never connected"
            doctor.send_signal(signal.SIGINT)
            out, err = doctor.communicate(timeout=30)
        finally:
            doctor.kill()
    finally:
        listener.close()
        for conn, _ in held:
            conn.close()
    assert doctor.returncode == 130, out + err
    assert "Traceback" not in err, err
    report = json.loads(out)
    assert report["ok"] is False
    assert [(c["name"], c["status"]) for c in report["checks"]][2:4] == [("tcp", "FAIL"), ("tls", "SKIP")]
    assert report["checks"][2]["detail"] == "interrupted (Ctrl-C) while it ran"
    assert {c["detail"] for c in report["checks"][3:]} == {"not run: interrupted"}


# -- a closed stdout (`| head -1`) --------------------------------------------------------------
CLOSED_STDOUT = {
    "doctor": ([str(SCRIPTS / "doctor"), "--json"], {"RDS_PORT": "not-a-port"}),
    "new-api-key": ([str(SCRIPTS / "new-api-key")], {}),
    "localdb.py": ([sys.executable, str(SCRIPTS / "localdb.py")], {}),
}


@pytest.mark.parametrize("name", list(CLOSED_STDOUT))
def test_a_closed_stdout_is_exit_141_without_a_traceback(name):
    """Each printed a BrokenPipeError traceback; localdb.py also left its server running and
    its directory in /tmp (the output came after the start, outside the try that stops it)."""
    command, extra = CLOSED_STDOUT[name]
    # A temporary directory of its own: other pytest processes start and remove throwaway
    # servers in /tmp meanwhile. Short, for the server's socket path.
    private_tmp = tempfile.mkdtemp(prefix="t-", dir="/tmp")
    try:
        result = closed_pipe_run(command, script_env(**extra, TMPDIR=private_tmp))
        assert result.returncode == 141, result.stderr
        assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
        if name == "localdb.py":
            assert result.stderr.strip() == ("localdb.py: stdout was closed before the RDS_* variables were "
                                             "written; stopped the server")
            assert glob.glob(os.path.join(private_tmp, "localdb-*")) == []
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)


# -- scripts/new-api-key ----------------------------------------------------------------------
def test_new_api_key_refuses_a_file_other_users_may_read(tmp_path):
    """`new-api-key > key.txt` with umask 022 left the key in a 0644 file."""
    loose = tmp_path / "key.txt"
    with open(loose, "w") as out:
        os.chmod(loose, 0o644)
        result = subprocess.run([str(SCRIPTS / "new-api-key")], stdout=out, stderr=subprocess.PIPE, text=True,
                                timeout=60)
    assert result.returncode == 1
    assert loose.read_text() == ""
    assert result.stderr.startswith("new-api-key: stdout is a file other users may read (mode 0644): "), result.stderr
    assert "(umask 077; .venv/bin/python scripts/new-api-key > FILE)" in result.stderr
    private = tmp_path / "private.txt"
    with open(private, "w") as out:
        os.chmod(private, 0o600)
        result = subprocess.run([str(SCRIPTS / "new-api-key")], stdout=out, stderr=subprocess.PIPE, text=True,
                                timeout=60)
    assert result.returncode == 0 and "API_KEY_SHA256=" in private.read_text(), result.stderr


# -- scripts/bundle -----------------------------------------------------------------------------
@pytest.fixture
def clone(tmp_path) -> Path:
    """The project's files with real database options, under a folder with a space and a non-ASCII letter."""
    project = copy_project(tmp_path, "pro ject ü")
    (project / ".ebextensions" / "02-database-options.config").write_text(OPTIONS)
    return project


def test_linked_virtualenvs_and_a_worktrees_git_file_stay_out_of_both_zips(clone, eb_venv, tmp_path):
    """.ebignore's `.venv/` matched directories only: the EB CLI zipped a symlinked .venv (and
    .venv-eb) as link entries naming this machine's paths, and a git worktree's `.git` file
    went into both zips. tests/test_deploy.py compares the two zips on the repository's own tree."""
    outside = tmp_path / "elsewhere"
    (outside / "venv" / "bin").mkdir(parents=True)
    (clone / ".venv").symlink_to(outside / "venv")
    (clone / ".venv-eb").symlink_to(outside / "venv")
    (clone / ".git").write_text(f"gitdir: {outside}/repo/.git/worktrees/pro\n")
    (clone / ".vscode").mkdir()
    (clone / ".vscode" / "settings.json").write_text("{}")
    theirs = tmp_path / "eb.zip"
    script = ("import sys\nfrom ebcli.core import fileoperations as f\nroot = sys.argv[1]\n"
              "f.get_project_root = lambda: root\nf.get_ebignore_location = lambda: root + '/.ebignore'\n"
              "f.zip_up_folder(root, sys.argv[2], ignore_list=f.get_ebignore_list())\n")
    subprocess.run([str(eb_venv / "bin" / "python"), "-c", script, str(clone), str(theirs)], check=True,
                   cwd=clone, timeout=300, capture_output=True)
    with zipfile.ZipFile(theirs) as zf:
        eb_files = {os.path.normpath(i.filename) for i in zf.infolist() if not i.is_dir()}
    result = subprocess.run([str(clone / "scripts" / "bundle")], cwd="/", capture_output=True, text=True,
                            timeout=300, env=script_env())
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(clone / "dist" / "app.zip") as zf:
        ours = {i.filename for i in zf.infolist() if not i.is_dir()}
    assert ours == eb_files
    assert not {".venv", ".venv-eb", ".git", ".vscode/settings.json"} & ours, sorted(ours)


def test_bundle_check_names_link_entries_of_a_virtualenv_and_a_git_file(tmp_path):
    """What `--check` says of a zip the EB CLI made before .ebignore matched them."""
    bundle_tool = load_script("bundle")
    made = tmp_path / "eb.zip"
    with zipfile.ZipFile(made, "w") as zf:
        for name in ("application.py", "requirements.txt"):
            zf.writestr(name, (ROOT / name).read_bytes())
        zf.writestr("Procfile", "web: gunicorn application:application\n")
        link = zipfile.ZipInfo(".venv")
        link.external_attr = 2716663808  # the EB CLI's symlink entry
        zf.writestr(link, "/home/me/project/.venv")
        zf.writestr(".git", "gitdir: /home/me/project/.git/worktrees/x\n")
    problems = bundle_tool.check(made)
    assert ".venv: a virtualenv does not belong in the bundle; add it to .ebignore" in problems
    assert ".git: git data does not belong in the bundle; add it to .ebignore" in problems


def test_bundle_is_the_same_bytes_whatever_the_checkouts_umask(clone, tmp_path):
    """The zip kept each file's whole mode: a checkout made with umask 002 (group-writable
    files) gave other bytes than one with 022 for the same tree."""
    bundle_tool = load_script("bundle")
    first = bundle_tool.build(clone, tmp_path / "first.zip").read_bytes()
    for path in clone.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | stat.S_IWGRP)
    assert bundle_tool.build(clone, tmp_path / "second.zip").read_bytes() == first
    with zipfile.ZipFile(tmp_path / "second.zip") as zf:
        modes = {(i.external_attr >> 16) & 0o777 for i in zf.infolist()}
        hook = zf.getinfo(".platform/hooks/postdeploy/01_smoke_check.sh")
    assert modes == {0o644, 0o755} and (hook.external_attr >> 16) & 0o777 == 0o755


def test_an_interrupted_bundle_leaves_no_partial_zip(clone):
    """Ctrl-C while the zip was written left a dist/app.zip with a damaged member (ZipFile
    writes its directory on the way out), which --use-with-eb's `eb deploy` would upload."""
    with open(clone / "large.bin", "wb") as out:  # a few seconds of writing to interrupt
        out.write(os.urandom(24 * 1024 * 1024))
    dist = clone / "dist"

    def written() -> bool:  # the zip being written (app.zip, or a temporary file) holds data by now
        try:
            return any(entry.stat().st_size for entry in os.scandir(dist))
        except OSError:  # no dist yet, or a file renamed away while looking
            return False

    bundle = subprocess.Popen([str(clone / "scripts" / "bundle")], cwd=clone, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=script_env())
    try:
        deadline = time.monotonic() + 60
        while bundle.poll() is None and not written():
            assert time.monotonic() < deadline, "bundle wrote nothing"
            time.sleep(0.01)
        bundle.send_signal(signal.SIGINT)
        out, err = bundle.communicate(timeout=60)
    finally:
        bundle.kill()
    assert bundle.returncode == 130, out + err
    assert err.strip() == f"bundle: interrupted; {dist / 'app.zip'} was left as it was", err
    assert list(dist.iterdir()) == []


@pytest.mark.parametrize("damage", ["crc", "options list", "file name"])
def test_bundle_names_what_it_cannot_read_in_one_line(clone, tmp_path, damage):
    """Each of these ended in a traceback (BadZipFile, AttributeError, UnicodeEncodeError)."""
    if damage == "crc":
        made = tmp_path / "damaged.zip"
        with zipfile.ZipFile(made, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("application.py", "x = 1\n" * 50)
        data = bytearray(made.read_bytes())
        data[data.index(b"x = 1")] ^= 0x20
        made.write_bytes(bytes(data))
        args, expected = ["--check", str(made)], f"bundle: ERROR: {made}: a damaged zip (Bad CRC-32 for file "
    elif damage == "options list":
        (clone / ".ebextensions" / "06-extra.config").write_text("option_settings:\n  - PORT\n")
        args, expected = [], ("bundle: ERROR: .ebextensions/06-extra.config: each entry of the option_settings "
                              "list needs an option_name")
    else:
        (clone / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
        args, expected = [], "bundle: ERROR: b'caf\\xe9.txt': a file name that is not UTF-8"
    result = subprocess.run([str(clone / "scripts" / "bundle"), *args], cwd=clone, capture_output=True, text=True,
                            timeout=300, env=script_env(LC_ALL="C"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert not (clone / "dist").exists() or list((clone / "dist").iterdir()) == []  # no temporary file either


# -- the virtualenv messages ----------------------------------------------------------------------
def test_rm_rf_in_the_fix_is_quoted_for_a_path_with_a_space(tmp_path):
    """`remove it (rm -rf /x/my project/.venv)`, pasted as printed, removes /x/my and ./project/.venv."""
    venv = tmp_path / "my project" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    base = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    doctor = subprocess.run([str(SCRIPTS / "doctor"), "--help"], capture_output=True, text=True, timeout=120,
                            env={**base, "VENV": str(venv)})
    assert doctor.returncode == 1
    assert f"remove it (rm -rf '{venv}') and run ./scripts/doctor again" in doctor.stderr, doctor.stderr
    eb = subprocess.run([str(SCRIPTS / "install-eb-cli")], capture_output=True, text=True, timeout=120,
                        env={**base, "EB_VENV": str(venv)})
    assert eb.returncode == 1
    quoted = str(venv).replace(" ", "\\ ")
    assert f"remove it (rm -rf {quoted}) and run ./scripts/install-eb-cli again" in eb.stderr, eb.stderr


def test_install_eb_cli_without_its_packages_says_so_last():
    """With no index to install from (no network), pip's error was the last word; nothing named
    the script or what to do. PIP_NO_INDEX: pip resolves before it installs, so nothing lands in
    the virtualenv given."""
    result = subprocess.run([str(SCRIPTS / "install-eb-cli")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "EB_VENV": str(VENV), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
                                 "PIP_CONFIG_FILE": os.devnull})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"install-eb-cli: pip could not install requirements-eb.txt into {VENV} (pip says why above): with no "
        "network, or behind a proxy, set HTTPS_PROXY or PIP_INDEX_URL and run ./scripts/install-eb-cli again")


# -- scripts/profile-request ---------------------------------------------------------------------
def test_profile_request_names_a_database_it_cannot_use_in_one_line():
    """--use-environ without RDS_* was a KeyError traceback, an unreachable database the driver's."""
    bare = {k: v for k, v in script_env().items() if not k.startswith(("RDS_", "DB_"))}
    missing = subprocess.run([str(SCRIPTS / "profile-request"), "--use-environ"], capture_output=True, text=True,
                             timeout=120, env=bare)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.strip() == ("profile-request: --use-environ needs RDS_HOSTNAME, RDS_PORT, RDS_DB_NAME, "
                                      "RDS_USERNAME, RDS_PASSWORD set (a migrated database); or leave out "
                                      "--use-environ for a throwaway one")
    from localdb import free_port

    port = free_port()
    down = subprocess.run([str(SCRIPTS / "profile-request"), "--use-environ"], capture_output=True, text=True,
                          timeout=120, env={**bare, "RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(port),
                                            "RDS_DB_NAME": "ebdb", "RDS_USERNAME": "app", "RDS_PASSWORD": "pw"})
    assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
    assert down.stderr.startswith(f"profile-request: the database at 127.0.0.1:{port} failed: 2003"), down.stderr
