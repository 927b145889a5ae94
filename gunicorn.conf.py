"""gunicorn settings for Elastic Beanstalk (the Procfile passes this file with -c).

Threads (gthread) suit an API that mostly waits on the database; each worker process
builds its own connection pool after fork (app/db), sized like its thread count so a
thread rarely waits for a connection. Defaults fit a 2-vCPU instance; override with
environment properties.
"""

import faulthandler
import gc
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time

from gunicorn.glogging import Logger


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()  # as app/config.py reads a property: pasted spaces
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise SystemExit(f"{name}={raw!r} is invalid: expected an integer from {low} to {high} "
                         f"(unset it for the default {default})")
    return value


# Beanstalk's nginx proxies to 127.0.0.1:8000; PORT moves both sides.
bind = f"127.0.0.1:{_int('PORT', 8000, 1, 65535)}"
workers = _int("WEB_CONCURRENCY", os.cpu_count() or 2, 1, 64)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 8, 1, 256)
# A worker whose main loop is silent this long is restarted. With gthread the main loop keeps
# beating while a request thread hangs, so this does not bound a request: DB_READ_TIMEOUT
# bounds its queries and nginx's proxy_read_timeout the client's wait.
timeout = _int("GUNICORN_TIMEOUT", 60, 5, 3600)
graceful_timeout = 30  # in-flight requests get this long on deploy or scale-in
# Idle keep-alive connections wait this long. Beanstalk's nginx opens one connection per
# request (no upstream keepalive), so this matters only to clients that reach gunicorn directly.
keepalive = 75
max_requests = 0
accesslog = "-"
errorlog = "-"
forwarded_allow_ips = "127.0.0.1"  # trust X-Forwarded-* only from the local nginx
# Of those, only the one the load balancer sets (and overwrites): X-Forwarded-Ssl and
# X-Forwarded-Protocol come from the client as it sent them, and gunicorn's default trusts
# all three and answers its own HTML 400 when they disagree.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
# Request line and header limits above nginx's (01_api.conf: lines of 8000 bytes, four buffers
# of header lines, which hold at most about 11,000 lines of three bytes), so that behind nginx it
# is nginx that refuses an oversized request, as JSON. Run alone (scripts/run-local), gunicorn
# refuses beyond these with its own HTML 400/431; it only listens on 127.0.0.1.
limit_request_line = 8190  # gunicorn's maximum (its default, 4094, is below nginx's)
limit_request_field_size = 8190  # bytes per header line with its CRLF (gunicorn's default)
limit_request_fields = 16384  # header lines (gunicorn's default, 100, is below nginx's)


def on_starting(arbiter):
    """Once the master halts, it reaps the workers that exit without raising HaltServer again.

    When the workers cannot load the app (a bad setting), each exits with code 4 and the first
    exit makes gunicorn 23's master halt. Halting, it waits for the others, and the next exit
    with code 4 raised HaltServer inside halt(): a 40-line traceback in web.stdout.log instead
    of the JSON "Reason: App failed to load.", and exit status 1 instead of 4 (with 4 workers,
    nearly every time; benoitc/gunicorn#2186). A worker's exit while halting is logged like
    gunicorn's own, and its process forgotten.

    Also names the file that says a worker has loaded the app (_mark_for_loaded_workers).
    """
    halt = arbiter.halt

    def reap_while_halting():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if pid == arbiter.reexec_pid:  # a new master started by USR2, as gunicorn reaps it
                arbiter.reexec_pid = 0
                continue
            code = os.waitstatus_to_exitcode(status)
            if code > 0:
                arbiter.log.error("Worker (pid:%s) exited with code %s", pid, code)
            elif code < 0:  # killed, e.g. after graceful_timeout: an error, as gunicorn says it
                try:
                    name = signal.Signals(-code).name
                except ValueError:  # a real-time signal has no name
                    name = f"code {-code}"
                hint = " Perhaps out of memory?" if -code == signal.SIGKILL else ""
                arbiter.log.error("Worker (pid:%s) was sent %s!%s", pid, name, hint)
            worker = arbiter.WORKERS.pop(pid, None)
            if worker:
                worker.tmp.close()
                arbiter.cfg.child_exit(arbiter, worker)

    def halt_reaping_quietly(reason=None, exit_status=0):
        arbiter.reap_workers = reap_while_halting
        reap_while_halting()  # the workers that exited along with the one that made it halt
        halt(reason=reason, exit_status=exit_status)

    arbiter.halt = halt_reaping_quietly
    _mark_for_loaded_workers()


# application.py reads it: the file exists once a worker of this master has loaded the app.
WORKER_LOADED_MARK = "APP_WORKER_LOADED_MARK"


def _mark_for_loaded_workers() -> None:
    """Name, in the environment the workers inherit, a file of this master's that
    post_worker_init creates: a worker that cannot load the app later (a secret revoked hours
    into the master's life) then exits for a respawn instead of halting every serving worker
    (application.py). A directory of its own, removed by on_exit."""
    os.environ[WORKER_LOADED_MARK] = os.path.join(tempfile.mkdtemp(prefix="gunicorn-app-"), "loaded")


def on_exit(arbiter):
    mark = os.environ.get(WORKER_LOADED_MARK)
    if mark:
        shutil.rmtree(os.path.dirname(mark), ignore_errors=True)


def _stop_gracefully_on_interrupt(worker) -> None:
    """SIGINT and SIGQUIT stop a worker the way SIGTERM does: its loop ends, the requests in
    flight finish, and it exits from its main thread's own flow.

    Ctrl-C reaches every process of scripts/run-local's group, and the master answers its own
    SIGINT with SIGQUIT to each worker. gunicorn's gthread worker handles both with handle_quit,
    which calls its thread pool's shutdown and raises SystemExit from inside the signal
    handler, wherever the main thread was. Where it held a lock, the worker hung until the
    master killed it after graceful_timeout (30 s, then "was sent SIGKILL! Perhaps out of
    memory?"): inside ThreadPoolExecutor.submit, shutdown waited on the executor's lock the
    thread itself held (python/cpython#121649); between a Future's lock taken and its `with`
    block entered, the exception left the lock held and a request thread waited on it at
    exit. Seen in 3 of 4 runs of tests/test_run_local.py (one stop of its six each time).
    handle_exit only clears the worker's `alive`; the loop sees it within a second. The master
    still SIGKILLs a worker that has not exited after graceful_timeout.
    """
    signal.signal(signal.SIGINT, worker.handle_exit)
    signal.signal(signal.SIGQUIT, worker.handle_exit)


def post_worker_init(worker):
    """Once the worker has built the app: mark that one did (_mark_for_loaded_workers), stop
    gracefully on SIGINT and SIGQUIT (_stop_gracefully_on_interrupt), leave a traceback if it
    crashes (faulthandler), collect, then freeze what is left (gc.freeze).

    A crash in C code (the driver's extension, a segmentation fault) kills the worker with no
    Python traceback: the master's "Worker (pid:N) was sent SIGSEGV!" is all the log would say,
    and the requests it held get a reset connection. faulthandler writes every thread's Python
    stack to stderr (web.stdout.log) first, as plain text, so the crash names the code it was in.

    The imports (Flask, pydantic, SQLAlchemy, the driver) leave about 70,000 objects that live
    as long as the worker. Unfrozen, every full collection walks them all with the GIL held,
    stopping each of the worker's threads for tens of milliseconds (docs/request-budget.md,
    round 6); frozen, collections walk only what requests create. Collecting first keeps the
    startup's garbage out of the frozen set, which is never collected.
    """
    mark = os.environ.get(WORKER_LOADED_MARK)
    if mark:
        open(mark, "a").close()
    _stop_gracefully_on_interrupt(worker)
    faulthandler.enable(all_threads=True)
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    worker.log.info("froze %d objects the app's startup left", frozen,
                    extra={"event": "gc_frozen", "objects": frozen,
                           "ms": round((time.perf_counter() - started) * 1000, 1)})


def client_address(environ) -> str | None:
    """The client's address as the load balancer saw it: X-Forwarded-For's second entry from the
    right.

    Behind the ALB (its default `append` mode) and Beanstalk's nginx (`proxy_set_header
    X-Forwarded-For $proxy_add_x_forwarded_for`), gunicorn gets `<what the client sent>, <the
    client, appended by the ALB>, <the ALB, appended by nginx>`. Every entry left of the ALB's
    comes from the client as it sent it, forged or not. With one entry the request reached nginx
    without a proxy in front (nginx appended its peer); with none it reached gunicorn directly.
    """
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    # rsplit: the two entries on the right, however long a chain the client forged on the left
    hops = [hop.strip() for hop in forwarded.rsplit(",", 2)[-2:]] if forwarded else []
    if len(hops) >= 2:
        return hops[-2]
    return hops[-1] if hops else environ.get("REMOTE_ADDR")


# gunicorn's warning for a request it could not parse quotes the request line, what follows its
# second space (as the HTTP version: a query with a space in it runs on there), or the header
# line, as Python's repr: in double quotes when the text holds a single one.
_UNPARSED = re.compile(r"""^(Invalid request from ip=\S* ?: Invalid HTTP (?:request line|Version|Header)): """
                       r"""(?:'(.*)'|"(.*)")$""", re.DOTALL)
_VERSION = re.compile(r"[A-Za-z0-9/.]{1,16}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Its configuration dump (at --log-level debug) lists -e/--env as given: NAME=value.
_RAW_ENV = re.compile(r"^(  raw_env: )(\[.*\])$", re.MULTILINE)


class CredentialTextFilter(logging.Filter):
    """Keeps out of gunicorn's own lines the text that may hold a credential, never parsed: the
    query string of a request line it refused (`GET /api/users?api_key=...`; what it took for
    the HTTP version, `b&api_key=... HTTP/1.1` after a space in the query) or of a request
    the app crashed on, a header line without its colon (`Authorization Bearer <key>`; a bare
    header name is still shown), and the values of `-e NAME=value` in the configuration it
    dumps at debug (`-e RDS_PASSWORD=...`). Behind Beanstalk's nginx such requests stop at
    nginx; run alone (scripts/run-local) they reach gunicorn, which logs them at WARNING.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        unparsed = _UNPARSED.match(message)
        if unparsed:
            kind, text = unparsed[1], unparsed[2] if unparsed[2] is not None else unparsed[3]
            if kind.endswith("request line"):
                shown = text.split("?", 1)[0] + ("?..." if "?" in text else "")
            elif kind.endswith("Version"):
                shown = text if _VERSION.fullmatch(text) else "..."
            else:
                shown = text if _HEADER_NAME.fullmatch(text) else re.split(r"[\s:]", text, 1)[0] + " ..."
            if shown != text:
                record.msg, record.args = f"{kind}: {shown!r} ({len(text)} characters, not all shown)", ()
        elif record.msg == "Error handling request %s" and record.args:  # a crash: its URI
            record.args = (str(record.args[0]).split("?", 1)[0],)
        elif message.startswith("Current configuration:") and "raw_env:" in message:
            record.msg, record.args = _RAW_ENV.sub(_env_names, message), ()
        return True


def _env_names(match: re.Match) -> str:
    names = re.findall(r"""['"]([A-Za-z_][A-Za-z0-9_]*)=""", match[2])
    return f"{match[1]}{[name + '=<not shown>' for name in names]}"


# rsyslog, which writes web.stdout.log on Beanstalk's platforms, cuts a message at 8 KB by
# default ($MaxMessageSize, https://www.rsyslog.com/doc/global.html): the end of a longer access
# line would be lost and what is left no longer JSON. The fields the client chooses (a path up
# to nginx's 8,000-byte request line, an X-Forwarded-For of as much) are cut well before: 512
# characters each, at most 3 KB once JSON escapes them (\u00ff for a %FF in the path).
CLIENT_TEXT_LIMIT = 512


def clipped(text: str | None, *, keep_end: bool = False) -> str | None:
    """`text`, or CLIENT_TEXT_LIMIT characters of it, its start (or its end) and an ellipsis."""
    if text is None or len(text) <= CLIENT_TEXT_LIMIT:
        return text
    if keep_end:
        return "\u2026" + text[-CLIENT_TEXT_LIMIT:]
    return text[:CLIENT_TEXT_LIMIT] + "\u2026"


class JsonAccessLogger(Logger):
    """Access log lines as JSON, with the request id the app assigned; gunicorn's own lines
    (starting, booting a worker, a worker timeout or crash) as JSON too, so that every line
    gunicorn writes to web.stdout.log parses like the app's."""

    def setup(self, cfg):
        super().setup(cfg)
        from pythonjsonlogger.json import JsonFormatter

        formatter = JsonFormatter(
            "{asctime}{levelname}{name}{message}{process}", style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                           "process": "pid"},
            datefmt="%Y-%m-%dT%H:%M:%S%z")
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)
        if not any(isinstance(f, CredentialTextFilter) for f in self.error_log.filters):
            self.error_log.addFilter(CredentialTextFilter())

    def access(self, resp, req, environ, request_time):
        if not self.cfg.accesslog:
            return
        try:
            headers = dict(resp.headers) if isinstance(resp.headers, list) else {}
            # gunicorn's own error responses (to a request that never reached the app) set only
            # resp.status, e.g. "400 Bad Request"; status_code comes from start_response.
            status = getattr(resp, "status_code", None) or int(str(resp.status).split(None, 1)[0])
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "event": "access",
                "method": environ.get("REQUEST_METHOD"),
                "path": clipped(environ.get("PATH_INFO")),
                "status": status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "request_id": headers.get("X-Request-Id"),
                "remote": client_address(environ),
                # The chain, for a look at what the client claimed: only `remote` is trusted. Its
                # end when cut: the entries the load balancer and nginx appended are the last.
                "forwarded_for": clipped(environ.get("HTTP_X_FORWARDED_FOR"), keep_end=True),
                "pid": os.getpid(),
            }
            self.access_log.info(json.dumps(record))
        except Exception:  # noqa: BLE001 - logging must never fail a request (nor its error page)
            self.exception("access log failed")


logger_class = JsonAccessLogger

