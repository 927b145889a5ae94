"""What the README says about the repository, checked against it: the module map names every
module, the diagrams are Mermaid a renderer takes, and the AWS CLI lines no test can run (they
need an account) name operations and options that exist, with the app's own names in them."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT, readme_blocks

README = (ROOT / "README.md").read_text()


def module_table() -> list[str]:
    """The rows of the table under "How a request flows" that maps paths to what they hold."""
    section = README.split("\n## How a request flows\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows and rows[0].startswith("| `application.py` |")
    return rows


def test_the_module_map_names_every_module_of_the_app():
    """A reader finds each concern from the map: every module under app/ is named in it, by
    its path or in its folder's row (`app/users/`: `routes.py`, ...)."""
    rows = module_table()
    named = {span for row in rows for span in re.findall(r"`([^`]+)`", row)}
    unnamed = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        folder = relative.rsplit("/", 1)[0] + "/"
        in_folder_row = [row for row in rows if row.startswith(f"| `{folder}` |")]
        if relative in named or (in_folder_row and (path.name == "__init__.py"
                                                    or f"`{path.name}`" in in_folder_row[0])):
            continue
        unnamed.append(relative)
    assert unnamed == [], f"modules the README's module map does not name: {unnamed}"


# Diagram types Mermaid 11 knows (the first word of a diagram).
MERMAID_TYPES = {"flowchart", "graph", "sequenceDiagram", "classDiagram", "stateDiagram", "stateDiagram-v2",
                 "erDiagram", "journey", "gantt", "pie", "quadrantChart", "requirementDiagram", "gitGraph",
                 "C4Context", "mindmap", "timeline", "sankey-beta", "xychart-beta", "block-beta",
                 "architecture-beta"}
PAIRS = {"[": "]", "(": ")", "{": "}"}


def mermaid_problems(diagram: str) -> list[str]:
    """What would keep Mermaid from drawing a flowchart: an unknown diagram type, a node shape
    opened and not closed, an edge label not closed, a subgraph without its `end`. (Mermaid 11
    itself, run on this README once, parsed all three; this keeps them in that shape.)"""
    lines = [line.strip() for line in diagram.strip().splitlines() if line.strip()]
    problems = []
    kind = lines[0].split()[0]
    if kind not in MERMAID_TYPES:
        problems.append(f"unknown diagram type {kind!r}")
    depth = 0
    for line in lines[1:]:
        if line.startswith("%%"):
            continue
        if line.startswith("subgraph "):
            depth += 1
        elif line == "end":
            depth -= 1
        text = re.sub(r"\|[^|]*\|", "", line)  # edge labels -->|...|
        if line.count("|") % 2:
            problems.append(f"an edge label not closed: {line}")
        stack = []
        for char in text:
            if char in PAIRS:
                stack.append(PAIRS[char])
            elif char in PAIRS.values():
                if not stack or stack.pop() != char:
                    problems.append(f"{char!r} closes nothing: {line}")
                    break
        if stack:
            problems.append(f"{''.join(reversed(stack))!r} missing: {line}")
        if depth < 0:
            problems.append(f"`end` without a subgraph: {line}")
    if depth > 0:
        problems.append(f"{depth} subgraph(s) without `end`")
    return problems


def test_every_diagram_is_mermaid_that_parses():
    diagrams = readme_blocks("mermaid")
    assert len(diagrams) >= 3
    assert {p: mermaid_problems(d) for p, d in enumerate(diagrams) if mermaid_problems(d)} == {}
    # A diagram fenced as anything else (```text, ```, ```graph) is not drawn on GitHub.
    fences = re.findall(r"^```(\S*)\n(\S+)", README, re.MULTILINE)
    assert [(fence, first) for fence, first in fences if first in MERMAID_TYPES and fence != "mermaid"] == []


@pytest.mark.parametrize("broken", [
    "flowchart LR\n    a[x --> b",  # a node not closed
    "flowchart LR\n    a -->|label b",  # an edge label not closed
    "flowchart LR\n    subgraph s[S]\n        a --> b\n",  # no end
    "flowhcart LR\n    a --> b",  # no such type
])
def test_the_diagram_check_notices_a_broken_diagram(broken):
    assert mermaid_problems(broken)


def aws_commands() -> list[list[str]]:
    """Every `aws <service> <operation> ...` the README gives, in sh blocks or inline, as words
    (placeholders such as <environment> kept as words)."""
    lines = [line.strip() for block in readme_blocks("sh") for line in block.replace("\\\n", " ").splitlines()
             if line.strip().startswith("aws ")]
    lines += [" ".join(span.split()) for span in re.findall(r"`(aws [a-z0-9-]+[^`]*)`", README)]
    return [shlex.split(line.replace("…", "X")) for line in lines]


def test_aws_cli_lines_name_operations_and_options_that_exist():
    """The AWS CLI lines need an account, so no test runs them: each names an operation of
    botocore's service model (what the AWS CLI is built from) and only options of its input."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    commands = aws_commands()
    assert len(commands) >= 8
    problems = []
    for words in commands:
        if words[1] == "configure" or words[1:3] == ["sso", "login"]:  # the CLI's own setup
            continue
        service, operation = words[1], words[2]
        if service == "s3":  # the high-level commands (s3 rm) are the CLI's own, not the API's
            assert operation in {"rm", "cp", "ls", "mb", "rb", "sync", "mv"}, words
            continue
        model = session.get_service_model(service)
        operations = {xform_name(name, "-"): name for name in model.operation_names}
        if operation not in operations:
            problems.append(f"aws {service} has no operation {operation}")
            continue
        shape = model.operation_model(operations[operation]).input_shape
        members = {xform_name(name, "-") for name in (shape.members if shape else {})}
        boolean = {f"no-{m}" for m in members}  # --no-<flag> for a boolean member
        for flag in (w[2:] for w in words if w.startswith("--")):
            if flag not in members | boolean | {"query", "region", "output", "profile"}:
                problems.append(f"aws {service} {operation} has no option --{flag}")
    assert problems == []


def test_the_alarm_line_names_the_metric_the_app_writes():
    """The alarm watches a metric only if namespace, metric name and dimension are the app's."""
    from app import metrics
    from app.config import Settings

    [alarm] = [w for w in aws_commands() if w[1:3] == ["cloudwatch", "put-metric-alarm"]]
    option = {alarm[i][2:]: alarm[i + 1] for i in range(len(alarm) - 1) if alarm[i].startswith("--")}
    assert option["namespace"] == Settings.model_fields["metrics_namespace"].default
    assert f'"{option["metric-name"]}"' in (ROOT / "app" / "metrics.py").read_text()
    assert option["dimensions"].startswith(f"Name={metrics.DIMENSION},")


def test_the_update_environment_line_sets_what_01_sets():
    """MaxSize and FLEET_MAX_INSTANCES, in the namespaces .ebextensions/01 sets them in."""
    [update] = [w for w in aws_commands() if w[1:3] == ["elasticbeanstalk", "update-environment"]]
    settings = [dict(part.split("=", 1) for part in word.split(",")) for word in update if word.startswith("Namespace=")]
    config = (ROOT / ".ebextensions" / "01-environment.config").read_text()
    assert {(s["Namespace"], s["OptionName"]) for s in settings} == {
        ("aws:autoscaling:asg", "MaxSize"), ("aws:elasticbeanstalk:application:environment", "FLEET_MAX_INSTANCES")}
    for s in settings:
        assert re.search(rf"^  {re.escape(s['Namespace'])}:\n(?:    .*\n|\s*#.*\n)*?    {s['OptionName']}:",
                         config, re.MULTILINE), s
    assert len({s["Value"] for s in settings}) == 1  # changed together


def command_lines() -> list[tuple[int, list[str]]]:
    """(offset in the README, words) of every command line of its sh blocks."""
    found = []
    for block in re.finditer(r"```sh\n(.*?)```", README, re.DOTALL):
        for line in block[1].replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                found.append((block.start(), shlex.split(line, comments=True)))
    return found


def program(words: list[str]) -> str | None:
    """The program a command line starts: its first word after NAME=value assignments, or the
    one a NAME=$(...) assignment runs."""
    for word in words:
        assignment = re.match(r"^[A-Za-z_][A-Za-z0-9_]*=(.*)$", word)
        if not assignment:
            return word
        if assignment[1].startswith("$("):
            return assignment[1][2:] or None
    return None


AWS_CLI_INSTALL = "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"


def section_slug(text: str) -> str:
    """GitHub's anchor of the (sub)section whose text holds `text`."""
    heading = re.findall(r"^#{2,6} (.+)$", README[:README.index(text)], re.MULTILINE)[-1]
    return github_anchor(heading)


def test_every_program_the_commands_start_is_one_the_readme_says_how_to_get():
    """A newcomer runs the README's lines on a machine set up as the README says: each program
    they start is the project's, the shell's, in the Quick start's install list, or one the
    README installs or points to before its first use (the AWS CLI is not the EB CLI's)."""
    quick_start = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    first_use: dict[str, int] = {}
    for offset, words in command_lines():
        name = program(words)
        if name:
            first_use.setdefault(name, offset)
    where = {}
    for name, offset in first_use.items():
        before = README[:offset]
        if name.startswith("./scripts/") or name.startswith(".venv/bin/"):
            assert name.startswith(".venv/") or (ROOT / name).exists(), name
            where[name] = "the project's"
        elif name in ("export", "cd", "echo"):
            where[name] = "the shell's"
        elif f"`{name}`" in quick_start:
            where[name] = "the Quick start's list"
        elif name == "eb" and "./scripts/install-eb-cli" in before:
            where[name] = "scripts/install-eb-cli"
        elif name == "aws" and AWS_CLI_INSTALL in README and (
                AWS_CLI_INSTALL in before or f"](#{section_slug(AWS_CLI_INSTALL)})" in before):
            where[name] = "AWS's installer, linked (or its section) before"
        else:
            where[name] = None
    assert {"./scripts/run-local", "curl", "eb", "aws"} <= set(where)
    assert [name for name, source in where.items() if source is None] == [], \
        "programs the README runs without saying where they come from"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_section_link_resolves_to_a_heading():
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)  # a "# comment" is no heading
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", prose)
    assert len(links) >= 5 and "api-keys-what-is-protected" in anchors
    assert [link for link in links if link not in anchors] == []
    # Sections named in the text ("section "Doctor"") exist too.
    named = re.findall(r'section "([^"]+)"|\(section ([^)"]+)\)', prose)
    headings = set(re.findall(r"^#{1,6} (.+)$", prose, re.MULTILINE))
    assert [n for pair in named for n in pair if n and n.strip('"') not in headings] == []


def test_the_scripts_that_start_a_throwaway_database_are_the_ones_named():
    """The module map says whose throwaway server scripts/localdb.py is: every executable
    script that starts one through it (run-local by way of run_local.py)."""
    [row] = [row for row in module_table() if row.startswith("| `scripts/` |")]
    sentence = row.split("`localdb.py` is a module:", 1)[1].split(";", 1)[0]
    named = set(re.findall(r"`([\w-]+)`", sentence))
    scripts = ROOT / "scripts"
    users = set()
    for path in scripts.iterdir():
        if path.is_file() and path.name != "localdb.py" and re.search(r"\blocaldb\.\w+\(", path.read_text()):
            users.add("run-local" if path.name == "run_local.py" else path.name)
    assert {"run-local", "faults"} <= users
    assert named == users
