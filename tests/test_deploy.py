"""The deployment files as code: the bundle eb deploy would upload, and the offline rehearsal.

The rehearsal must pass on what ships and fail, naming the file and the fix, on a copy of
the bundle broken the ways real deployments break.
"""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, load_script, readme_lines

PYTHON = sys.executable


def run(script: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


bundle_tool = load_script("bundle")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The working tree zipped as eb deploy would (02 still holds the repository's placeholders)."""
    return bundle_tool.build(ROOT, tmp_path_factory.mktemp("bundle") / "app.zip")


def broken_copy(bundle: Path, target: Path, edit) -> Path:
    """Copy the bundle, passing every (name, data, mode) through `edit` (which may drop it)."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            changed = edit(info.filename, src.read(info), (info.external_attr >> 16) & 0o777)
            if changed is None:
                continue
            data, mode = changed
            out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out.external_attr = (stat.S_IFREG | mode) << 16
            dst.writestr(out, data, zipfile.ZIP_DEFLATED)
    return target


def test_bundle_holds_what_beanstalk_needs_and_nothing_else(bundle):
    with zipfile.ZipFile(bundle) as zf:
        names = {i.filename: i for i in zf.infolist()}
    for required in ("application.py", "requirements.txt", "Procfile", "gunicorn.conf.py",
                     "app/__init__.py", "app/migrations/0001_create_users.sql",
                     ".ebextensions/03-database-ingress.config",
                     ".platform/nginx/conf.d/elasticbeanstalk/01_api.conf"):
        assert required in names, required
    assert not [n for n in names if n.startswith(("tests/", "scripts/", ".venv", ".git/", ".ci/"))
                or "__pycache__" in n or n.startswith("requirements-")]
    hooks = [n for n in names if n.startswith((".platform/hooks/", ".platform/confighooks/"))]
    assert len(hooks) == 4
    assert all((names[h].external_attr >> 16) & 0o111 == 0o111 for h in hooks)


def test_bundle_check_names_file_and_fix(bundle, tmp_path):
    def edit(name, data, mode):
        if name == "application.py":
            return None
        return data, mode

    broken = broken_copy(bundle, tmp_path / "no-app.zip", edit)
    with zipfile.ZipFile(broken, "a") as zf:
        zf.writestr("tests/test_x.py", "")
        zf.writestr(".env", "RDS_PASSWORD=x")
        zf.writestr(".envrc", "export RDS_PASSWORD=x")
    result = run("bundle", "--check", str(broken))
    assert result.returncode == 1
    assert "application.py: missing at the bundle root" in result.stderr
    assert "tests/test_x.py: test code does not belong in the bundle; add it to .ebignore" in result.stderr
    assert ".env: an .env file does not belong in the bundle" in result.stderr
    assert ".envrc: a direnv .envrc (often credentials) does not belong in the bundle" in result.stderr


def test_git_records_hooks_as_executable():
    listing = subprocess.run(["git", "ls-files", "-s", "--", ".platform"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    hooks = [line.split() for line in listing if "/hooks/" in line or "/confighooks/" in line]
    assert len(hooks) == 4
    assert all(mode == "100755" for mode, *_ in hooks), hooks


def test_gitattributes_forces_lf_on_deployment_files():
    paths = [".platform/hooks/prebuild/01_rds_ca_bundle.sh", ".ebextensions/01-environment.config",
             "Procfile", ".platform/nginx/conf.d/elasticbeanstalk/01_api.conf", "scripts/bundle"]
    out = subprocess.run(["git", "check-attr", "eol", "--", *paths], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == [f"{p}: eol: lf" for p in paths]


def test_readme_rehearsal_command_passes_on_what_ships():
    [line] = readme_lines(".venv/bin/python scripts/rehearse-deploy")
    env = {k: v for k, v in os.environ.items() if k != "REHEARSE_LINT_CACHE"}  # the linters run
    result = subprocess.run([PYTHON, *shlex.split(line)[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for step in ("checks passed", "cfn-lint: 2 resource(s), no findings", "checkov:", "none failed",
                 "parliament: 1 IAM policy document(s), no findings",
                 "hooks/prebuild/01_rds_ca_bundle.sh: ok",
                 # A first deploy: the leader creates the app's user with the master secret.
                 'container_commands.01_bootstrap_user (leader_only): ok {"event": "bootstrap", '
                 '"user": "app_first_deploy", "database": "ebdb", "created": true}',
                 'container_commands.02_migrate (leader_only): ok {"event": "migrate", "applied": ["0001',
                 "02-database-options.config: DatabaseSecurityGroupId, DatabaseResourceId, DatabaseSecretArn, "
                 "DatabaseSecretKmsKeyArn not set for a real database; scripts/bundle refuses",
                 "https: not configured",
                 "hooks/postdeploy/01_smoke_check.sh: ok", "DB_SSL_MODE=verify-identity",
                 "confighooks/postdeploy/01_smoke_check.sh: ok", "/health and /api/users: 200",
                 "API_AUTH=all: every /api request needs an API key",
                 "API_AUTH=all: POST /api/users without a key: 401"):
        assert step in output, step


# Parses each `eb` line with the argument definitions of the EB CLI's own controllers.
EB_PARSE = r"""
import argparse, importlib, pkgutil, shlex, sys
import ebcli.controllers as package

commands = {}
for module_info in pkgutil.iter_modules(package.__path__):
    module = importlib.import_module(f"ebcli.controllers.{module_info.name}")
    for obj in vars(module).values():
        meta = getattr(obj, "Meta", None)
        if isinstance(obj, type) and obj.__module__ == module.__name__ and hasattr(meta, "arguments"):
            commands.setdefault(getattr(meta, "label", None), meta.arguments)
failed = 0
for line in sys.stdin.read().splitlines():
    command, *args = shlex.split(line)[1:]
    if command not in commands:
        print(f"{line}: eb has no command {command!r}"); failed += 1; continue
    parser = argparse.ArgumentParser(prog=f"eb {command}", add_help=False, exit_on_error=False)
    for flags in (["-r", "--region"], ["--profile"]):
        parser.add_argument(*flags)
    for flag in ("--debug", "--quiet", "--verbose", "--no-verify-ssl"):
        parser.add_argument(flag, action="store_true")
    for flags, options in commands[command]:
        parser.add_argument(*flags, **{k: v for k, v in options.items() if k != "help"})
    try:
        parsed, unknown = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as err:
        print(f"{line}: {err}"); failed += 1; continue
    if unknown:
        print(f"{line}: eb {command} has no option {unknown}"); failed += 1
print(f"checked {len(commands)} commands")
sys.exit(1 if failed else 0)
"""


def eb_parse(eb_venv: Path, lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(eb_venv / "bin" / "python"), "-c", EB_PARSE], input="\n".join(lines),
                          capture_output=True, text=True, timeout=120)


def test_readme_eb_commands_parse_with_the_eb_cli(eb_venv):
    lines = [line for line in readme_lines("eb ") if line.startswith("eb ")]
    assert [shlex.split(line)[1] for line in lines] == ["init", "create", "create", "setenv", "deploy",
                                                        "health", "logs", "ssh", "deploy", "setenv", "terminate"]
    result = eb_parse(eb_venv, lines)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check itself catches a misspelt option and an unknown command.
    bad = eb_parse(eb_venv, ["eb create prod --instance-profile x", "eb deplyo"])
    assert bad.returncode == 1
    assert "--instance-profile" in bad.stdout and "eb has no command 'deplyo'" in bad.stdout


def test_bundle_matches_the_eb_clis_own_zip(eb_venv, bundle, tmp_path):
    """The EB CLI's own code zips the project with .ebignore: the same files must come out.

    The EB CLI lists the paths .ebignore matches before it walks the tree, so a file another
    test writes meanwhile (a .pyc under scripts/, seen in CI) is zipped although .ebignore
    leaves it out: what .ebignore matches after the walk and did not before is set aside."""
    theirs = tmp_path / "eb.zip"
    script = (
        "import json, sys\n"
        "from ebcli.core import fileoperations as f\n"
        "root = sys.argv[1]\n"
        "f.get_project_root = lambda: root\n"
        "f.get_ebignore_location = lambda: root + '/.ebignore'\n"
        "ignored = f.get_ebignore_list()\n"
        "f.zip_up_folder(root, sys.argv[2], ignore_list=ignored)\n"
        "print(json.dumps(sorted(f.get_ebignore_list() - ignored)))\n")
    result = subprocess.run([str(eb_venv / "bin" / "python"), "-c", script, str(ROOT), str(theirs)], check=True,
                            cwd=ROOT, timeout=300, stdout=subprocess.PIPE, text=True)
    written_meanwhile = {os.path.normpath(p) for p in json.loads(result.stdout.splitlines()[-1])}
    with zipfile.ZipFile(theirs) as zf:
        eb_files = {os.path.normpath(i.filename) for i in zf.infolist() if not i.is_dir()} - written_meanwhile
    with zipfile.ZipFile(bundle) as zf:
        our_files = {i.filename for i in zf.infolist() if not i.is_dir()}
    assert our_files == eb_files


def _replace(target: str, old: bytes, new: bytes):
    def edit(name, data, mode):
        if name == target:
            assert old in data, f"{old!r} not in {target}"
            return data.replace(old, new), mode
        return data, mode
    return edit


BREAKAGES = {
    # Platform versions released from 29 April 2022 grant the bit, older ones fail the deploy
    # (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.hooks.html).
    "non-executable hook": (
        lambda name, data, mode: (data, 0o644 if name.endswith("01_smoke_check.sh") else mode),
        [".platform/hooks/postdeploy/01_smoke_check.sh: not executable: Amazon Linux 2 platform versions "
         "released before 29 April 2022 fail the deployment on it (later ones, and every Amazon Linux 2023 one, "
         "grant the bit themselves)",
         "git update-index --chmod=+x .platform/hooks/postdeploy/01_smoke_check.sh",
         "platforms-linux-extend.hooks.html"]),
    "CRLF hook": (
        lambda name, data, mode: (data.replace(b"\n", b"\r\n") if name.endswith("01_rds_ca_bundle.sh")
                                  and "/hooks/" in name else data, mode),
        [".platform/hooks/prebuild/01_rds_ca_bundle.sh: CRLF line endings", "convert to LF"]),
    "bad namespace": (
        _replace(".ebextensions/01-environment.config", b"aws:elasticbeanstalk:cloudwatch:logs:",
                 b"aws:elasticbeanstalk:cloudwatch:log:"),
        [".ebextensions/01-environment.config: unknown option namespace "
         "'aws:elasticbeanstalk:cloudwatch:log'", "documented namespaces"]),
    "* resource": (
        _replace(".ebextensions/04-instance-role-policy.config",
                 b"Resource:\n              Fn::GetOptionSetting:\n                OptionName: DatabaseSecretArn",
                 b'Resource: "*"'),
        [".ebextensions/04-instance-role-policy.config", "DatabaseAccessPolicy"]),
    "rule description EC2 refuses": (
        _replace(".ebextensions/03-database-ingress.config", b"MySQL from the instances of this",
                 b"MySQL from this environment's"),
        [".ebextensions/03-database-ingress.config: DatabaseIngressFromInstances Description has "
         "characters EC2 refuses", "no apostrophes"]),
    "PORT moved without nginx's /api/": (
        _replace(".ebextensions/01-environment.config", b'PORT: "8000"', b'PORT: "9000"'),
        [".platform/nginx/conf.d/elasticbeanstalk/01_api.conf: /api/ proxies to port 8000 but PORT is 9000",
         "change both"]),
    "API_AUTH dropped: an open write endpoint": (
        _replace(".ebextensions/01-environment.config", b"    API_AUTH: all\n", b""),
        [".ebextensions/01-environment.config: API_AUTH is 'off': anyone who reaches the load balancer "
         "could change and delete users", "set API_AUTH: all"]),
    "wrong WSGI path": (
        _replace("Procfile", b"application:application", b"app:application"),
        ["Procfile: the WSGI path app:application does not load",
         "serves application:application from application.py"]),
    "WSGI module not in the bundle": (
        _replace("Procfile", b"application:application", b"wsgi:application"),
        ["Procfile: the WSGI path wsgi:application does not load (the bundle has no module wsgi)"]),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_rehearsal_fails_on_seeded_breakage(bundle, tmp_path, breakage):
    edit, expected = BREAKAGES[breakage]
    broken = broken_copy(bundle, tmp_path / "broken.zip", edit)
    result = run("rehearse-deploy", "--bundle", str(broken))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "rehearse: FAILED" in output
    for text in expected:
        assert text in output, (text, output[-3000:])
    assert "passed in" not in output


def test_the_linters_answer_each_input_once_with_a_cache(tmp_path, monkeypatch):
    """With REHEARSE_LINT_CACHE a linter's answer to the same command line and input is read
    back: here the linter is gone by the second call, which still gets its answer, paths in it
    pointing at the second call's input; another input runs the linter again."""
    rehearsal = load_script("rehearse-deploy")
    monkeypatch.setenv("REHEARSE_LINT_CACHE", str(tmp_path / "cache"))
    linter = tmp_path / "bin" / "cfn-lint"
    linter.parent.mkdir()
    linter.symlink_to(ROOT / ".venv-iac" / "bin" / "cfn-lint")
    runs = []
    for name, resources in (("first", {"Bad": {"Type": "AWS::EC2::SecurityGroup", "Properties": {}}}),
                            ("second", {"Bad": {"Type": "AWS::EC2::SecurityGroup", "Properties": {}}})):
        path = tmp_path / name / "template.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"Resources": resources}))
        runs.append((path, rehearsal.run_linter([str(linter), "--format", "parseable", "--", str(path)], path)))
        linter.unlink(missing_ok=True)  # the second call can only be answered from the cache
    (first_path, first), (second_path, second) = runs
    assert first.returncode != 0 and str(first_path) in first.stdout, first
    assert second.returncode == first.returncode
    assert second.stdout == first.stdout.replace(str(first_path), str(second_path))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"Resources": {"Fine": {"Type": "AWS::SNS::Topic"}}}))
    with pytest.raises(FileNotFoundError):  # a new input runs the (now missing) linter
        rehearsal.run_linter([str(linter), "--format", "parseable", "--", str(other)], other)


def test_a_hook_without_its_exec_bit_is_named_as_the_platform_treats_it(tmp_path):
    """The rehearsal said such a hook "would fail the deploy"; Amazon Linux 2023 platform versions
    (and Amazon Linux 2 ones from 29 April 2022) grant the bit and run it
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.hooks.html).
    The rehearsal and scripts/bundle, which refuses the bundle first, now say the same."""
    rehearsal = load_script("rehearse-deploy")
    hook = tmp_path / ".platform/hooks/prebuild/01_x.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\necho ran\n")
    hook.chmod(0o644)
    with pytest.raises(rehearsal.RehearsalError) as raised:
        rehearsal.run_hooks(tmp_path, "prebuild", {"PATH": os.environ["PATH"]})
    message = str(raised.value)
    assert message == bundle_tool.hook_not_executable(".platform/hooks/prebuild/01_x.sh")
    assert "would fail the deploy" not in message
    assert "every Amazon Linux 2023 one, grant the bit themselves" in message, message


WSGI_MODULES_THAT_LOAD = {
    "walrus": "import sys\nif (application := sys.modules[__name__]):\n    pass\n",
    "except*": "try:\n    pass\nexcept* ValueError:\n    pass\nelse:\n    application = 1\n",
    "match": "match 1:\n    case _:\n        application = 1\n",
    "a function's global": "def build():\n    global application\n    application = 1\n\nbuild()\n",
}


@pytest.mark.parametrize("form", WSGI_MODULES_THAT_LOAD)
def test_the_static_wsgi_check_passes_a_module_that_binds_the_name(tmp_path, form):
    """Step 3 refuses only what step 4's import would: a module binding `application` by a
    walrus, inside try/except* or match, or through a function's `global` loads (its import
    exits 0), and was refused as "defines no application" before the virtualenv was made."""
    rehearsal = load_script("rehearse-deploy")
    (tmp_path / "Procfile").write_text("web: gunicorn --config gunicorn.conf.py application:application\n")
    (tmp_path / "application.py").write_text(WSGI_MODULES_THAT_LOAD[form])
    loads = subprocess.run([sys.executable, "-c", "import application; application.application"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert loads.returncode == 0, loads.stderr
    rehearsal.check_wsgi_target(tmp_path)  # raised RehearsalError for each before


def test_the_static_wsgi_check_names_a_syntax_error(tmp_path):
    """An application.py that does not compile is a RehearsalError naming the file and line,
    as step 4's import said it; the static check's ast.parse let the SyntaxError escape, and
    the rehearsal ended in a traceback."""
    rehearsal = load_script("rehearse-deploy")
    (tmp_path / "Procfile").write_text("web: gunicorn --config gunicorn.conf.py application:application\n")
    (tmp_path / "application.py").write_text("application = 1\ndef broken(:\n    pass\n")
    with pytest.raises(rehearsal.RehearsalError) as raised:
        rehearsal.check_wsgi_target(tmp_path)
    message = str(raised.value)
    assert message.startswith("Procfile: the WSGI path application:application does not load "
                              "(application.py does not compile (SyntaxError: "), message
    assert "line 2" in message, message


def rehearse_as_a_user(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """./scripts/rehearse-deploy as typed in a shell with the project's virtualenv active: its
    shebang starts the first python3 on PATH."""
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(ROOT / "scripts" / "rehearse-deploy"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _append(target: str, text: bytes):
    """Add lines at the end of `target` (01 ends inside its option_settings mapping)."""
    def edit(name, data, mode):
        return (data + text, mode) if name == target else (data, mode)
    return edit


def test_rehearsal_refuses_the_static_files_namespace_of_amazon_linux_ami(bundle, tmp_path):
    """aws:elasticbeanstalk:container:python:staticfiles belongs to the Python platform versions
    on Amazon Linux AMI (before Amazon Linux 2); from Amazon Linux 2 on the platform serves static
    files through aws:elasticbeanstalk:environment:proxy:staticfiles, with the same options
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/create-deploy-python-container.html#python-namespaces,
    https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-specific.html#command-options-python)."""
    broken = broken_copy(bundle, tmp_path / "al1.zip", _append(
        ".ebextensions/01-environment.config",
        b"  aws:elasticbeanstalk:container:python:staticfiles:\n    /static: static\n"))
    result = rehearse_as_a_user("--static-only", "--bundle", str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert (".ebextensions/01-environment.config: aws:elasticbeanstalk:container:python:staticfiles is a "
            "namespace of the Amazon Linux AMI platform versions (before Amazon Linux 2); on Amazon Linux "
            "2023 use aws:elasticbeanstalk:environment:proxy:staticfiles") in result.stderr


GENERAL = "https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-general.html"
PYTHON_SPECIFIC = "https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-specific.html#command-options-python"
ENV01 = ".ebextensions/01-environment.config"

# Option settings as AWS documents them, broken one at a time in a copy of the bundle: each
# names the file, the namespace, the option and the fix, and the page (the URL) that says so.
OPTION_BREAKAGES = {
    # Option names exist per namespace (GENERAL#command-options-general-environmentprocess).
    "misspelt option name": (
        _replace(ENV01, b"    MatcherHTTPCode:", b"    MatcherHttpCode:"),
        [f"{ENV01}: aws:elasticbeanstalk:environment:process:default has no option 'MatcherHttpCode'; "
         "did you mean 'MatcherHTTPCode'?", GENERAL + "#command-options-general-environmentprocess"]),
    # MatcherHTTPCode: with an application load balancer, 200 to 499 (same page).
    "health check code outside 200-499": (
        _replace(ENV01, b'MatcherHTTPCode: "200"', b'MatcherHTTPCode: "200,503"'),
        [f"{ENV01}: aws:elasticbeanstalk:environment:process:default MatcherHTTPCode '200,503' is not valid: "
         "it must be HTTP codes from 200 to 499"]),
    # Port: 1 to 65535 (same page).
    "non-numeric process port": (
        _append(ENV01, b"  aws:elasticbeanstalk:environment:process:default:\n    Port: eighty\n"),
        [f"{ENV01}: aws:elasticbeanstalk:environment:process:default Port 'eighty' is not valid: it must be "
         "a whole number from 1 to 65535"]),
    # HealthCheckPath: "A routable path" (same page).
    "health check path without its slash": (
        _replace(ENV01, b"HealthCheckPath: /health", b"HealthCheckPath: health"),
        [f"{ENV01}: aws:elasticbeanstalk:environment:process:default HealthCheckPath 'health' is not valid: "
         "it must be an absolute path (starting with /"]),
    # HealthCheckInterval: 5 to 300 with an application load balancer (same page).
    "health check interval out of range": (
        _replace(ENV01, b'HealthCheckInterval: "15"', b'HealthCheckInterval: "3"'),
        ["HealthCheckInterval '3' is not valid: it must be a whole number from 5 to 300"]),
    # RetentionInDays: 1, 3, 5, 7, 14, 30, 60, ... (GENERAL#command-options-general-cloudwatchlogs).
    "log retention CloudWatch does not offer": (
        _replace(ENV01, b"RetentionInDays: 30", b"RetentionInDays: 31"),
        [f"{ENV01}: aws:elasticbeanstalk:cloudwatch:logs RetentionInDays '31' is not valid: it must be one of "
         "1, 3, 5, 7, 14, 30, 60", GENERAL + "#command-options-general-cloudwatchlogs"]),
    "log streaming flag that is not a boolean": (
        _replace(ENV01, b"StreamLogs: true", b"StreamLogs: enabled"),
        ["aws:elasticbeanstalk:cloudwatch:logs StreamLogs 'enabled' is not valid: it must be one of true, false"]),
    # IdleTimeout: 1 to 3600 (GENERAL#command-options-general-elbv2).
    "load balancer idle timeout out of range": (
        _replace(ENV01, b'IdleTimeout: "60"', b'IdleTimeout: "4000"'),
        ["aws:elbv2:loadbalancer IdleTimeout '4000' is not valid: it must be a whole number from 1 to 3600",
         GENERAL + "#command-options-general-elbv2"]),
    # MaxSize: 1 to 10000 (GENERAL#command-options-general-autoscalingasg).
    "auto scaling maximum of zero": (
        _replace(ENV01, b'MaxSize: "4"', b'MaxSize: "0"'),
        ["aws:autoscaling:asg MaxSize '0' is not valid: it must be a whole number from 1 to 10000"]),
    # IamInstanceProfile (GENERAL#command-options-general-autoscalinglaunchconfiguration).
    "misspelt instance profile option": (
        _append(ENV01, b"  aws:autoscaling:launchconfiguration:\n    InstanceProfile: flask-rds-app-ec2\n"),
        [f"{ENV01}: aws:autoscaling:launchconfiguration has no option 'InstanceProfile'; did you mean "
         "'IamInstanceProfile'?", GENERAL + "#command-options-general-autoscalinglaunchconfiguration"]),
    # SystemType: basic or enhanced (GENERAL#command-options-general-elasticbeanstalkhealthreporting).
    "health reporting system that does not exist": (
        _append(ENV01, b"  aws:elasticbeanstalk:healthreporting:system:\n    SystemType: enhance\n"),
        ["aws:elasticbeanstalk:healthreporting:system SystemType 'enhance' is not valid: it must be one of "
         "basic, enhanced"]),
    # ProxyServer on the Python platform: nginx or apache (PYTHON_SPECIFIC).
    "proxy server the Python platform does not offer": (
        _append(ENV01, b"  aws:elasticbeanstalk:environment:proxy:\n    ProxyServer: haproxy\n"),
        ["aws:elasticbeanstalk:environment:proxy ProxyServer 'haproxy' is not valid: it must be one of nginx, "
         "apache", PYTHON_SPECIFIC]),
    # Static files: a URL path starting with / mapped to a folder of the bundle
    # (GENERAL#command-options-general-environmentproxystaticfiles).
    "static files from a folder the bundle lacks": (
        _append(ENV01, b"  aws:elasticbeanstalk:environment:proxy:staticfiles:\n    /images: staticimages\n"),
        [f"{ENV01}: aws:elasticbeanstalk:environment:proxy:staticfiles /images: 'staticimages' is no folder of "
         "the bundle"]),
    # Environment property names: letters, digits and _ . : / + \\ - @
    # (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environments-cfg-softwaresettings.html).
    "environment property name with a space": (
        _replace(ENV01, b"    LOG_LEVEL: INFO\n", b"    LOG LEVEL: INFO\n"),
        [f"{ENV01}: aws:elasticbeanstalk:application:environment 'LOG LEVEL' is not a valid environment "
         "property name", "environments-cfg-softwaresettings.html"]),
    # ... and all of them, as key=value, 4,096 bytes at most (same page).
    "environment properties over 4096 bytes": (
        _replace(ENV01, b"    LOG_LEVEL: INFO\n", b"    LOG_LEVEL: INFO\n    NOTE: " + b"x" * 4000 + b"\n"),
        [f"{ENV01}: the aws:elasticbeanstalk:application:environment properties take", "over Beanstalk's 4096"]),
    # WSGIPath names a module with an `application` callable (PYTHON_SPECIFIC; module:callable on
    # Amazon Linux 2 and later, https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/create-deploy-python-container.html#python-namespaces).
    "WSGIPath to a module the bundle lacks": (
        _append(ENV01, b"  aws:elasticbeanstalk:container:python:\n    WSGIPath: ebdjango.wsgi:application\n"),
        [f"{ENV01}: aws:elasticbeanstalk:container:python WSGIPath 'ebdjango.wsgi:application': the bundle has "
         "no module ebdjango.wsgi (ebdjango/wsgi.py)", "as application:application"]),
    "WSGIPath to a module without `application`": (
        _append(ENV01, b"  aws:elasticbeanstalk:container:python:\n    WSGIPath: app\n"),
        [f"{ENV01}: aws:elasticbeanstalk:container:python WSGIPath 'app': app/__init__.py defines no "
         "'application', the callable Beanstalk would serve"]),
    # A Procfile overrides the aws:elasticbeanstalk:container:python options
    # (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/python-configuration-procfile.html).
    "WSGI option the Procfile overrides": (
        _append(ENV01, b"  aws:elasticbeanstalk:container:python:\n    NumThreads: 20\n"),
        [f"{ENV01}: aws:elasticbeanstalk:container:python NumThreads '20' is ignored: a Procfile overrides the "
         "aws:elasticbeanstalk:container:python options, and its web: command serves application:application",
         "python-configuration-procfile.html"]),
}


# The load balancer type: LoadBalancerType defaults to classic and is chosen at creation only
# (GENERAL#command-options-general-elasticbeanstalkenvironment,
# https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environments-cfg-alb.html); MatcherHTTPCode is
# for an application or network load balancer, aws:elbv2:loadbalancer for an application one
# (GENERAL#command-options-general-environmentprocess, GENERAL#command-options-general-elbv2).
OPTION_BREAKAGES |= {
    "ALB options without LoadBalancerType": (
        _replace(ENV01, b"  aws:elasticbeanstalk:environment:\n    LoadBalancerType: application\n", b""),
        [f"{ENV01}: aws:elasticbeanstalk:environment:process:default MatcherHTTPCode applies to an application "
         "load balancer or a network load balancer only, and no .ebextensions file sets "
         "aws:elasticbeanstalk:environment LoadBalancerType, whose default is classic; set LoadBalancerType: "
         "application",
         f"{ENV01}: aws:elbv2:loadbalancer IdleTimeout applies to an application load balancer only"]),
    "ALB options with a classic load balancer": (
        _replace(ENV01, b"LoadBalancerType: application", b"LoadBalancerType: classic"),
        [f"{ENV01}: aws:elbv2:loadbalancer IdleTimeout applies to an application load balancer only, and "
         "LoadBalancerType is classic; remove the option, or create the environment with LoadBalancerType: "
         "application"]),
}


# Scaling and deployment options a user of the project is likely to add
# (GENERAL#command-options-general-autoscalingtrigger,
# GENERAL#command-options-general-autoscalingupdatepolicyrollingupdate).
OPTION_BREAKAGES |= {
    "scaling trigger on a metric Beanstalk does not offer": (
        _append(ENV01, b"  aws:autoscaling:trigger:\n    MeasureName: CPU\n"),
        [f"{ENV01}: aws:autoscaling:trigger MeasureName 'CPU' is not valid: it must be one of CPUUtilization, "
         "NetworkIn", GENERAL + "#command-options-general-autoscalingtrigger"]),
    "rolling update pause that is not an ISO 8601 duration": (
        _append(ENV01, b"  aws:autoscaling:updatepolicy:rollingupdate:\n    PauseTime: 90s\n"),
        ["aws:autoscaling:updatepolicy:rollingupdate PauseTime '90s' is not valid: it must be an ISO 8601 "
         "duration such as PT5M"]),
    "misspelt rolling update option": (
        _append(ENV01, b"  aws:autoscaling:updatepolicy:rollingupdate:\n    MaxBatch: 1\n"),
        ["aws:autoscaling:updatepolicy:rollingupdate has no option 'MaxBatch'; did you mean 'MaxBatchSize'?"]),
}


@pytest.mark.parametrize("breakage", list(OPTION_BREAKAGES))
def test_rehearsal_checks_option_settings_against_the_docs(bundle, tmp_path, breakage):
    edit, expected = OPTION_BREAKAGES[breakage]
    broken = broken_copy(bundle, tmp_path / "broken.zip", edit)
    result = rehearse_as_a_user("--static-only", "--bundle", str(broken))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "rehearse: FAILED" in result.stderr
    for text in expected:
        assert text in result.stderr, (text, output[-3000:])


def test_rehearsal_passes_the_option_settings_that_ship(bundle, tmp_path):
    """The real 01-05 pass, and so do the documented forms the checks must not refuse: a
    WSGIPath that agrees with the Procfile, in its Amazon Linux 2 form (module, callable
    `application`), codes as a range (https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_Matcher.html),
    YAML booleans, and a namespace documented but not modelled."""
    result = rehearse_as_a_user("--static-only", "--bundle", str(bundle))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("option_settings: 34 setting(s) in 7 namespace(s) checked against Beanstalk's documented "
            "options and values") in result.stdout
    variants = broken_copy(bundle, tmp_path / "variants.zip", lambda name, data, mode: (
        data.replace(b'MatcherHTTPCode: "200"', b'MatcherHTTPCode: "200-299"')
        + b"  aws:elasticbeanstalk:container:python:\n    WSGIPath: application\n"
        b"  aws:elasticbeanstalk:xray:\n    XRayEnabled: false\n"
        b"  aws:autoscaling:trigger:\n    MeasureName: CPUUtilization\n    UpperThreshold: 70\n"
        b"  aws:autoscaling:updatepolicy:rollingupdate:\n    RollingUpdateType: Health\n    PauseTime: PT1M30S\n"
        b"  aws:elasticbeanstalk:sqsd:\n    HttpPath: /\n", mode) if name == ENV01 else (data, mode))
    result = rehearse_as_a_user("--static-only", "--bundle", str(variants))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "options not modelled in aws:elasticbeanstalk:sqsd" in result.stdout


TARGET_GROUP_HEALTH = "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/target-group-health-checks.html"
ELB_HEALTH_CHECK = "https://docs.aws.amazon.com/elasticloadbalancing/2012-06-01/APIReference/API_HealthCheck.html"
UPDATE_POLICY = ("https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-attribute-updatepolicy.html"
                 "#cfn-attributes-updatepolicy-rollingupdate-mininstancesinservice")
ROLLOUT = ".ebextensions/06-rollout.config"


def test_rehearsal_checks_the_rules_between_options(bundle, tmp_path):
    """Values each within its own range that AWS refuses together, and ranges the model had too
    wide, in one broken copy (one rehearsal run): a health check timeout not below its interval
    (ELB_HEALTH_CHECK: "must be less than the Interval value"; CreateTargetGroup refuses it) or
    under the target group's 2 s (TARGET_GROUP_HEALTH); PauseTime beyond PT1H and Timeout under
    PT5M (GENERAL#command-options-general-autoscalingupdatepolicyrollingupdate);
    MinInstancesInService not below MaxSize (UPDATE_POLICY); a Fixed BatchSize above MaxSize
    (GENERAL#command-options-general-elasticbeanstalkcommand). The model accepted all six."""
    broken = broken_copy(bundle, tmp_path / "related.zip", _replace(
        ENV01, b'HealthCheckInterval: "15"\n', b'HealthCheckInterval: "15"\n    HealthCheckTimeout: "15"\n'))
    with zipfile.ZipFile(broken, "a") as zf:
        zf.writestr(ROLLOUT, "option_settings:\n"
                             "  aws:elasticbeanstalk:environment:process:admin:\n"
                             "    HealthCheckTimeout: 1\n"
                             "  aws:autoscaling:updatepolicy:rollingupdate:\n"
                             "    RollingUpdateType: Time\n    PauseTime: PT90M\n    Timeout: PT2M\n"
                             "    MinInstancesInService: 4\n"
                             "  aws:elasticbeanstalk:command:\n"
                             "    DeploymentPolicy: Rolling\n    BatchSizeType: Fixed\n    BatchSize: 5\n")
    result = rehearse_as_a_user("--static-only", "--bundle", str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 option settings Beanstalk would refuse or ignore" in result.stderr, result.stderr
    for expected in (
            f"{ENV01}: aws:elasticbeanstalk:environment:process:default HealthCheckTimeout 15 (set in {ENV01}) is "
            f"not below HealthCheckInterval 15 (set in {ENV01}): the load balancer refuses a health check whose "
            "timeout is not shorter than its interval, and the environment's stack fails; set HealthCheckTimeout "
            f"below 15, or HealthCheckInterval above 15 ({ELB_HEALTH_CHECK}; {TARGET_GROUP_HEALTH})",
            f"{ROLLOUT}: aws:elasticbeanstalk:environment:process:admin HealthCheckTimeout '1' is not valid: it must "
            f"be a whole number from 2 to 60 (Beanstalk takes 1 to 60, the target group 2 to 120: {TARGET_GROUP_HEALTH})",
            f"{ROLLOUT}: aws:autoscaling:updatepolicy:rollingupdate PauseTime 'PT90M' is not valid: it must be an ISO "
            "8601 duration such as PT5M or PT1H30M, from PT0S to PT1H "
            f"({GENERAL}#command-options-general-autoscalingupdatepolicyrollingupdate)",
            f"{ROLLOUT}: aws:autoscaling:updatepolicy:rollingupdate Timeout 'PT2M' is not valid: it must be an ISO "
            "8601 duration such as PT5M or PT1H30M, from PT5M to PT1H",
            f"{ROLLOUT}: aws:autoscaling:updatepolicy:rollingupdate MinInstancesInService 4 is not below "
            f"aws:autoscaling:asg MaxSize 4 (set in {ENV01}): CloudFormation's rolling update policy requires it to "
            f"be less; set MinInstancesInService to at most 3, or raise MaxSize ({UPDATE_POLICY}; ",
            f"{ROLLOUT}: aws:elasticbeanstalk:command BatchSize 5 with BatchSizeType Fixed (set in {ROLLOUT}) is not "
            f"valid: it must be from 1 to aws:autoscaling:asg MaxSize, 4 (set in {ENV01}); set BatchSize to at most 4 "
            f"({GENERAL}#command-options-general-elasticbeanstalkcommand)"):
        assert expected in result.stderr, (expected, result.stderr)


def test_option_rules_compare_with_beanstalks_defaults():
    """An option left out takes Beanstalk's default (GENERAL): HealthCheckTimeout 5 with an
    application load balancer, MaxSize 4, BatchSizeType Percentage (1 to 100); the last file
    that sets an option wins; values at the documented bounds pass."""
    import eb_options

    process, rolling, command = ("aws:elasticbeanstalk:environment:process:default",
                                 "aws:autoscaling:updatepolicy:rollingupdate", "aws:elasticbeanstalk:command")
    alb = ("00", "aws:elasticbeanstalk:environment", "LoadBalancerType", "application")
    [problem] = eb_options.check([alb, ("01", process, "HealthCheckInterval", "5")], ROOT, None)
    assert problem.startswith(f"01: {process} HealthCheckTimeout 5 (not set: Beanstalk's default) is not below "
                              "HealthCheckInterval 5 (set in 01)"), problem
    [problem] = eb_options.check([("01", rolling, "MinInstancesInService", "4")], ROOT, None)
    assert "MaxSize 4 (not set: Beanstalk's default)" in problem and "at most 3" in problem, problem
    [problem] = eb_options.check([("01", command, "BatchSize", "101")], ROOT, None)
    assert problem.startswith(f"01: {command} BatchSize 101 with BatchSizeType Percentage (not set: Beanstalk's "
                              "default) is not valid: it must be from 1 to 100 (a percentage of the instances)"), problem
    assert eb_options.check([
        alb, ("01", process, "HealthCheckInterval", "5"), ("01", process, "HealthCheckTimeout", "4"),
        ("01", rolling, "PauseTime", "PT0S"), ("02", rolling, "PauseTime", "PT1H"), ("01", rolling, "Timeout", "PT5M"),
        ("01", "aws:autoscaling:asg", "MaxSize", "4"), ("01", rolling, "MinInstancesInService", "4"),
        ("02", "aws:autoscaling:asg", "MaxSize", "5"),  # the later file wins
        ("01", command, "BatchSize", "100"), ("01", "aws:elasticbeanstalk:environment:process:api",
                                              "HealthCheckTimeout", "2")], ROOT, None) == []
    # A network load balancer has no HealthCheckTimeout: its intervals (10 or 30) are not compared.
    assert eb_options.check([("00", "aws:elasticbeanstalk:environment", "LoadBalancerType", "network"),
                             ("01", process, "HealthCheckInterval", "10")], ROOT, None) == []


def test_option_rules_wait_for_a_value_refused_on_its_own():
    """A value out of its own range has its message, and no rule compares it (the docstring of
    _related_options): a HealthCheckTimeout of 70 was compared as Beanstalk's default 5, "not
    set", and reported not below an interval of 5; a MaxSize of 0 as the default 4."""
    import eb_options

    process, rolling = "aws:elasticbeanstalk:environment:process:default", "aws:autoscaling:updatepolicy:rollingupdate"
    alb = ("00", "aws:elasticbeanstalk:environment", "LoadBalancerType", "application")
    [problem] = eb_options.check([alb, ("01", process, "HealthCheckTimeout", "70"),
                                  ("01", process, "HealthCheckInterval", "5")], ROOT, None)
    assert "HealthCheckTimeout '70' is not valid" in problem, problem
    problems = eb_options.check([("01", "aws:autoscaling:asg", "MaxSize", "0"),
                                 ("01", rolling, "MinInstancesInService", "4")], ROOT, None)
    assert len(problems) == 1 and "MaxSize '0' is not valid" in problems[0], problems


def test_option_checks_read_the_load_balancer_type():
    """With a network load balancer MatcherHTTPCode is 200 to 399 and HealthCheckInterval 10 or 30
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-general.html#command-options-general-environmentprocess)."""
    import eb_options

    process = "aws:elasticbeanstalk:environment:process:default"
    settings = [("01", process, "MatcherHTTPCode", "404"), ("01", process, "HealthCheckInterval", "15")]
    assert eb_options.check([("00", "aws:elasticbeanstalk:environment", "LoadBalancerType", "application"),
                             *settings], ROOT, None) == []
    network = [("00", "aws:elasticbeanstalk:environment", "LoadBalancerType", "network"), *settings]
    problems = eb_options.check(network, ROOT, None)
    assert len(problems) == 2
    assert "MatcherHTTPCode '404' is not valid" in problems[0] and "network load balancer: HTTP codes from 200 to 399" in problems[0]
    assert "HealthCheckInterval '15' is not valid" in problems[1]


def test_option_names_yaml_reads_as_numbers_are_checked_as_text(tmp_path):
    """An environment property named 1000 (digits are letters and digits enough,
    https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environments-cfg-softwaresettings.html)
    is YAML's integer: the check reads it as the text Beanstalk gets, and a static files path
    without its / is named (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-general.html#command-options-general-environmentproxystaticfiles)."""
    rehearsal = load_script("rehearse-deploy")
    staging = tmp_path / "staging"
    (staging / ".ebextensions").mkdir(parents=True)
    (staging / "static").mkdir()
    (staging / ".ebextensions/01.config").write_text(
        "option_settings:\n  aws:elasticbeanstalk:application:environment:\n    1000: x\n")
    options, _, _ = rehearsal.load_ebextensions(staging)
    assert options["aws:elasticbeanstalk:application:environment"] == {"1000": "x"}
    (staging / ".ebextensions/01.config").write_text(
        "option_settings:\n  aws:elasticbeanstalk:environment:proxy:staticfiles:\n    2024: static\n")
    with pytest.raises(rehearsal.RehearsalError, match="'2024': the option name is the URL path the proxy "
                                                        "serves and starts with /, e.g. /2024"):
        rehearsal.load_ebextensions(staging)


def test_option_checks_want_a_port_number_in_port():
    """PORT is the port nginx forwards requests to
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.proxy.html); the
    rehearsal meets scripts/bundle's /api/ port comparison first, so the check is called here."""
    import eb_options

    environment = "aws:elasticbeanstalk:application:environment"
    assert eb_options.check([("01", environment, "PORT", "8000")], ROOT, None) == []
    assert eb_options.check([("01", environment, "PORT", "eighty")], ROOT, None) == [
        "01: aws:elasticbeanstalk:application:environment PORT 'eighty' is not valid: it must be a whole "
        "number from 1 to 65535 (the port nginx forwards requests to, "
        "https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/platforms-linux-extend.proxy.html)"]


def test_rehearsal_of_something_that_is_not_a_bundle_says_so(tmp_path):
    not_a_zip = tmp_path / "app.zip"
    not_a_zip.write_text("hello")
    temp = tmp_path / "temp"  # its own temporary directory: other tests rehearse side by side
    temp.mkdir()
    result = run("rehearse-deploy", "--bundle", str(not_a_zip), env={"TMPDIR": str(temp)})
    assert result.returncode == 1
    assert f"rehearse: FAILED: the bundle is not deployable:\n  {not_a_zip}: not a readable zip file" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(temp.iterdir()) == []  # nothing left behind


def test_instance_policy_arns_follow_the_stacks_partition(monkeypatch, tmp_path):
    """04 builds its ARNs from AWS::Partition, AWS::Region and AWS::URLSuffix, so the same file
    works in aws-cn and aws-us-gov; what the auth mode does not use is an ARN of nothing."""
    rehearsal = load_script("rehearse-deploy")
    for pseudo, value in (("AWS::Partition", "aws-cn"), ("AWS::Region", "cn-north-1"),
                          ("AWS::URLSuffix", "amazonaws.com.cn")):
        monkeypatch.setitem(rehearsal.PSEUDO, pseudo, value)
    staging = tmp_path / "staging"
    (staging / ".ebextensions").mkdir(parents=True)
    shutil.copy(ROOT / ".ebextensions/04-instance-role-policy.config", staging / ".ebextensions")
    _, resources, _ = rehearsal.load_ebextensions(staging)
    name, resource = resources["DatabaseAccessPolicy"]
    custom = {"DatabaseResourceId": "none", "DatabaseUser": "app",
              "DatabaseSecretArn": "arn:aws-cn:secretsmanager:cn-north-1:210987654321:secret:app-AbCdEf",
              "DatabaseSecretKmsKeyArn": "arn:aws-cn:kms:cn-north-1:210987654321:key/none"}
    statements = rehearsal.resolve(resource, custom, name, literal_getatt=True)["Properties"]["PolicyDocument"]["Statement"]
    account = rehearsal.PSEUDO["AWS::AccountId"]
    assert [s["Resource"] for s in statements] == [
        f"arn:aws-cn:rds-db:cn-north-1:{account}:dbuser:none/app",
        custom["DatabaseSecretArn"], custom["DatabaseSecretKmsKeyArn"],
        # No API keys' secret (ApiKeysSecretName's default): a grant of nothing.
        f"arn:aws-cn:secretsmanager:cn-north-1:{account}:secret:none-??????"]
    assert statements[2]["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.cn-north-1.amazonaws.com.cn"}}
    assert "arn:aws:" not in (ROOT / ".ebextensions/04-instance-role-policy.config").read_text()
    # With one, that secret by name: its ARN ends in -<6 random characters>.
    custom["ApiKeysSecretName"] = "app/api-keys"
    statements = rehearsal.resolve(resource, custom, name, literal_getatt=True)["Properties"]["PolicyDocument"]["Statement"]
    assert statements[3] == {"Sid": "ReadTheApiKeysSecret", "Effect": "Allow",
                             "Action": "secretsmanager:GetSecretValue",
                             "Resource": f"arn:aws-cn:secretsmanager:cn-north-1:{account}:secret:app/api-keys-??????"}


def test_a_fresh_deployment_is_not_an_open_endpoint(db_env):
    """01's environment properties, as a fresh `eb create` gets them: no key, no start; with the
    digest of one, every /api request without it is refused and /health stays open."""
    import hashlib
    import secrets

    import yaml

    from app import create_app
    from app.config import ConfigError

    doc = yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())
    shipped = {k: v for k, v in doc["option_settings"]["aws:elasticbeanstalk:application:environment"].items()
               if not k.startswith("DB_SSL_") and k != "AWS_REGION"}  # TLS: the test database has none
    assert shipped["API_AUTH"] == "all"
    with pytest.raises(ConfigError, match="API_AUTH=all needs API_KEY_SHA256 or API_KEYS_SECRET_ID"):
        create_app({**shipped, **db_env})
    key = secrets.token_urlsafe(32)
    app = create_app({**shipped, **db_env, "API_KEY_SHA256": hashlib.sha256(key.encode()).hexdigest()})
    try:
        client = app.test_client()
        assert client.post("/api/users", json={"email": "a@example.com", "name": "A"}).status_code == 401
        assert client.get("/api/users").status_code == 401
        assert client.get("/health").status_code == 200
        assert client.get("/api/users", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        app.extensions["database"].dispose()


def test_scripts_run_as_their_shebang_says(tmp_path):
    """`./scripts/X` starts the first python3 on PATH: one without the project's packages hands
    over to the project's virtualenv instead of failing with ModuleNotFoundError."""
    bare = tmp_path / "bare"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{bare / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VENV": str(Path(PYTHON).parent.parent)}
    for script in ("bundle", "provision", "rehearse-deploy", "doctor"):
        result = subprocess.run([str(ROOT / "scripts" / script), "--help"], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stderr[-2000:])
        assert "ModuleNotFoundError" not in result.stderr


def _third_party_imports(*paths: Path) -> set[str]:
    """Modules `paths` import that are neither the standard library's nor scripts/'s own."""
    import ast

    local = {p.stem for p in (ROOT / "scripts").iterdir()}
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found |= {n for n in names if n.split(".")[0] not in sys.stdlib_module_names | local | {"__future__"}}
    return found


def test_rehearsal_hands_over_for_every_package_it_imports():
    """project_venv.ensure re-runs the rehearsal with .venv when a package is missing: it must
    list every package the rehearsal, scripts/bundle and scripts/localdb.py import."""
    import ast

    source = (ROOT / "scripts" / "rehearse-deploy").read_text()
    [call] = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
              and getattr(n.func, "attr", None) == "ensure"]
    ensured = {arg.value for arg in call.args}
    imported = _third_party_imports(*(ROOT / "scripts" / name for name in
                                      ("rehearse-deploy", "bundle", "localdb.py", "eb_options.py")))
    assert {m for m in imported if not any(m == e or m.startswith(e + ".") or e.startswith(m + ".")
                                           for e in ensured)} == set()


def test_rehearsal_started_by_a_python3_with_some_of_its_packages_hands_over(tmp_path):
    """The first python3 on PATH may have the packages the rehearsal checked for and not the
    others (pathspec, which scripts/bundle imports to build the bundle): it must hand over to
    the project's virtualenv, not stop with a ModuleNotFoundError traceback."""
    import yaml

    partial = tmp_path / "partial"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(partial)], check=True, timeout=120)
    [site] = (partial / "lib").glob("python3*/site-packages")
    ours = Path(yaml.__file__).parents[1]  # the project's site-packages: the real packages
    for package in ("yaml", "requests", "boto3", "moto", "flask_cors"):
        (site / package).symlink_to(ours / package)
    env = {**os.environ, "PATH": f"{partial / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VENV": str(Path(PYTHON).parent.parent)}
    result = subprocess.run([str(ROOT / "scripts" / "rehearse-deploy"), "--static-only"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "ModuleNotFoundError" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0 and "rehearse: passed" in result.stdout, result.stderr[-3000:]


def test_the_environment_gets_its_region_from_the_stack():
    """botocore raises NoRegionError without one and does not ask the instance metadata: 01 sets
    AWS_REGION with Beanstalk's backtick syntax for functions in option values
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environments-cfg-softwaresettings.html)."""
    rehearsal = load_script("rehearse-deploy")
    import yaml

    doc = yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())
    value = doc["option_settings"]["aws:elasticbeanstalk:application:environment"]["AWS_REGION"]
    assert value == '`{"Ref" : "AWS::Region"}`'
    assert rehearsal.evaluate_option(value, "01") == rehearsal.PSEUDO["AWS::Region"]
    with pytest.raises(rehearsal.RehearsalError, match="evaluates only Ref"):
        rehearsal.evaluate_option('`{"Fn::GetAtt" : ["X", "Y"]}`', "01")


def test_instances_are_replaced_for_ec2_health_only():
    """README Health checks: when the database holds every thread, /health times out and the
    load balancer takes the instance out (all of them: it then routes to all, fail open,
    https://docs.aws.amazon.com/elasticloadbalancing/latest/application/target-group-health-checks.html);
    the instances stay, because the Auto Scaling group keeps Beanstalk's default EC2 status checks
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environmentconfig-autoscaling-healthchecktype.html).
    An .ebextensions file setting HealthCheckType: ELB would make a database outage replace the fleet."""
    for path in sorted((ROOT / ".ebextensions").glob("*.config")):
        assert "HealthCheckType" not in path.read_text(), path.name


def test_bundle_requires_the_database_options_only_where_resources_read_them(bundle, tmp_path):
    """02's placeholders fail the stack only through 03 and 04; without them (provision keeps the
    ingress rule and the policy outside the environment) the bundle is deployable."""
    refused = run("bundle", "--check", str(bundle))
    assert refused.returncode == 1 and "DatabaseSecurityGroupId=sg-placeholder" in refused.stderr
    without = broken_copy(bundle, tmp_path / "without-03-04.zip", lambda name, data, mode: None if name in (
        ".ebextensions/03-database-ingress.config", ".ebextensions/04-instance-role-policy.config") else (data, mode))
    accepted = run("bundle", "--check", str(without))
    assert accepted.returncode == 0, accepted.stderr
