"""The fleet's connection budget: how many connections the whole environment may open.

Each gunicorn worker process has its own pool, so at full scale-out the fleet holds up to
Auto Scaling MaxSize × workers × DB_POOL_SIZE connections, plus one at deploy time for the
leader's bootstrap and migration (they run one after the other, one connection each). The
database refuses connections past max_connections (MySQL error 1040), so the sum must stay
well below it. Nothing here touches the database: the server's limit is read by the caller.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.config import ConfigError, Settings

# The leader-only container commands (app.bootstrap, then app.migrate) hold one connection at a
# time while the old version still serves.
DEPLOY_CONNECTIONS = 1
# Above this share of max_connections the budget is reported as a warning: room is needed for
# operators' sessions, RDS's own, a doctor run and the overlap of a deployment.
WARN_SHARE = 0.75
# RDS for MySQL's default max_connections is {DBInstanceClassMemory/12582880}
# (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html#RDS_Limits.MaxConnections).
RDS_MYSQL_BYTES_PER_CONNECTION = 12582880
# RDS Proxy endpoints: <name>.proxy-<id>.<region>.rds.amazonaws.com
_PROXY_HOST = re.compile(r"\.proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(\.cn)?$")


def workers(environ: Mapping[str, str]) -> int:
    """gunicorn's worker count, computed as gunicorn.conf.py computes it (WEB_CONCURRENCY or
    the CPU count); tests/test_doctor_budget.py runs gunicorn.conf.py to keep the two equal."""
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    if raw == "":
        return os.cpu_count() or 2
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise ConfigError(f"WEB_CONCURRENCY={raw!r} is invalid: expected an integer from 1 to 64 "
                          "(unset it for the CPU count)")
    return value


def rds_mysql_default_max_connections(memory_bytes: int) -> int:
    """RDS for MySQL's default max_connections for this much DBInstanceClassMemory (an upper
    bound when given the class's nominal memory: RDS subtracts what its own processes use)."""
    return memory_bytes // RDS_MYSQL_BYTES_PER_CONNECTION


def through_proxy(host: str | None) -> bool:
    """True for an RDS Proxy endpoint: the proxy, not the fleet, decides how many connections
    reach the database (MaxConnectionsPercent of its max_connections)."""
    return bool(host and _PROXY_HOST.search(host.lower()))


@dataclass(frozen=True)
class Budget:
    instances: int | None  # FLEET_MAX_INSTANCES (= the Auto Scaling group's MaxSize), if set
    workers: int
    pool_size: int
    proxy: bool = False

    @property
    def per_instance(self) -> int:
        return self.workers * self.pool_size

    @property
    def fleet(self) -> int | None:
        """Connections the fleet may hold at full scale-out during a deploy; None when the
        number of instances is unknown."""
        if self.instances is None:
            return None
        return self.instances * self.per_instance + DEPLOY_CONNECTIONS

    def share(self, limit: int) -> float | None:
        return None if self.fleet is None or limit <= 0 else self.fleet / limit

    def instances_that_fit(self, limit: int) -> int:
        """How many instances stay within WARN_SHARE of `limit`."""
        return max(0, int((limit * WARN_SHARE - DEPLOY_CONNECTIONS) // self.per_instance))

    def verdict(self, limit: int) -> str:
        """'ok', 'warn' (above WARN_SHARE) or 'over' (the fleet can exceed the limit)."""
        needed = self.fleet if self.fleet is not None else self.per_instance
        if needed > limit:
            return "over"
        return "warn" if needed > limit * WARN_SHARE else "ok"

    def formula(self) -> str:
        """The arithmetic in words, e.g. '4 instances × 2 workers × 8 (DB_POOL_SIZE) + 1 (deploy) = 65'."""
        per = f"{self.workers} workers × {self.pool_size} (DB_POOL_SIZE)"
        if self.instances is None:
            return f"{per} = {self.per_instance} per instance (FLEET_MAX_INSTANCES not set)"
        return (f"{self.instances} instances (FLEET_MAX_INSTANCES) × {per} + {DEPLOY_CONNECTIONS} "
                f"(deploy) = {self.fleet}")

    def describe(self) -> dict[str, object]:
        """The numbers, for the startup log line and the doctor's JSON."""
        return {"fleet_max_instances": self.instances, "workers": self.workers,
                "pool_size": self.pool_size, "per_instance": self.per_instance,
                "deploy_connections": DEPLOY_CONNECTIONS, "fleet_connections": self.fleet,
                "through_proxy": self.proxy}


def budget_for(settings: Settings, environ: Mapping[str, str]) -> Budget:
    return Budget(instances=settings.fleet_max_instances, workers=workers(environ),
                  pool_size=settings.pool_size, proxy=through_proxy(settings.host))
