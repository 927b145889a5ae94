"""The fleet's connection budget: one source for each number, and the README's table computed."""

from __future__ import annotations

import json
import re
import runpy

import pytest
import yaml

from app.config import load_settings
from app.db.budget import Budget, budget_for, rds_mysql_default_max_connections, through_proxy, workers
from conftest import ROOT

README = (ROOT / "README.md").read_text()
BASE = {"RDS_HOSTNAME": "db.example.internal", "RDS_DB_NAME": "ebdb", "RDS_USERNAME": "app",
        "RDS_PASSWORD": "pw"}
GIB = 1024 ** 3


# Spaces around a value, or only spaces, as app/config.py reads a property: gunicorn.conf.py
# refused "  " (the settings' unset) and stopped gunicorn.
@pytest.mark.parametrize("value", [None, "1", "3", "64", " 3\n", "  "])
def test_workers_are_what_gunicorn_conf_computes(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", value)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert workers({} if value is None else {"WEB_CONCURRENCY": value}) == config["workers"]


def test_max_size_and_fleet_max_instances_agree_in_01():
    """An environment property cannot read an option: 01 sets MaxSize and FLEET_MAX_INSTANCES side
    by side, and they must not drift apart."""
    options = yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())["option_settings"]
    max_size = options["aws:autoscaling:asg"]["MaxSize"]
    assert options["aws:elasticbeanstalk:application:environment"]["FLEET_MAX_INSTANCES"] == max_size
    settings = load_settings({**BASE, "FLEET_MAX_INSTANCES": max_size})
    assert settings.fleet_max_instances == int(max_size)


def test_the_arithmetic():
    budget = budget_for(load_settings({**BASE, "FLEET_MAX_INSTANCES": "4"}), {"WEB_CONCURRENCY": "2"})
    assert (budget.per_instance, budget.fleet) == (16, 65)
    assert budget.formula() == "4 instances (FLEET_MAX_INSTANCES) × 2 workers × 8 (DB_POOL_SIZE) + 1 (deploy) = 65"
    assert [budget.verdict(limit) for limit in (100, 87, 86, 65, 64)] == ["ok", "ok", "warn", "warn", "over"]
    assert budget.instances_that_fit(85) == 3
    unknown = Budget(instances=None, workers=2, pool_size=8)
    assert unknown.fleet is None and unknown.share(100) is None and unknown.verdict(20) == "warn"
    assert through_proxy("app.proxy-abcdefghijkl.eu-west-1.rds.amazonaws.com")
    assert not through_proxy("appdb.abcdefghijkl.eu-west-1.rds.amazonaws.com")


def test_readme_table_is_computed_from_the_rds_formula():
    """Each row: the class's memory, {DBInstanceClassMemory/12582880} on it, the shipped fleet's
    share (4 instances of 2 workers × 8) and how many such instances fit within 75%."""
    section = README.split("## Connection budget", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(db\.[^`]+)`.*? \| (\d+) GiB \| (\d+) \| (\d+)% \| (\d+) \|$", section, re.MULTILINE)
    assert len(rows) >= 4, section
    shipped = Budget(instances=4, workers=2, pool_size=8)
    for name, gib, limit, share, fit in rows:
        computed = rds_mysql_default_max_connections(int(gib) * GIB)
        assert int(limit) == computed, name
        assert f"{shipped.share(computed):.0%}" == f"{share}%", name
        assert int(fit) == shipped.instances_that_fit(computed), name
    assert "4 × 2 × 8 + 1 = 65" in section


def test_each_worker_logs_its_budget_at_startup_and_against_the_server_once(mysql_server, make_database,
                                                                            start_gunicorn):
    """`db_budget` at startup, from every worker, without a query; `db_budget_checked` when the
    worker's first connection opens, with the server's max_connections."""
    import urllib.request

    env = {**make_database(), "WEB_CONCURRENCY": "2", "DB_POOL_SIZE": "3", "FLEET_MAX_INSTANCES": "30"}
    server = start_gunicorn(env)
    pids = server.worker_pids(expect=2)
    for _ in range(6):
        with urllib.request.urlopen(server.url + "/health/ready", timeout=10) as response:
            assert response.status == 200
    server.stop()
    events = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    startup = [e for e in events if e.get("event") == "db_budget"]
    assert {e["pid"] for e in startup} == pids and len(startup) == 2
    assert startup[0]["fleet_connections"] == 30 * 2 * 3 + 1 and startup[0]["per_instance"] == 6
    checked = [e for e in events if e.get("event") == "db_budget_checked"]
    assert checked and len({e["pid"] for e in checked}) == len(checked)  # once per worker
    [(limit,)] = mysql_server.sql(["SELECT @@global.max_connections"])
    assert limit < 181  # MariaDB's default is 151: the fleet's 181 is over, a warning with the numbers
    assert checked[0]["max_connections"] == limit and checked[0]["verdict"] == "over"
    assert checked[0]["level"] == "WARNING" and checked[0]["fleet_connections"] == 181
