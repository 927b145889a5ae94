"""The nginx settings in .platform, inside a server block shaped like Beanstalk's, in front of gunicorn.

The http and server blocks below are those of the Amazon Linux 2023 platform's nginx.conf
(including its `gzip off` and `gzip_types` lines, which our file must not repeat), and
00_application.conf is the platform's `location /` for the app's port.
"""

import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
import requests

import localdb
from conftest import ROOT

OUR_CONF = ROOT / ".platform/nginx/conf.d/elasticbeanstalk/01_api.conf"

NGINX_CONF = """
{user}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    server_tokens off;
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    access_log off;
    map $http_upgrade $connection_upgrade {{
        default     "upgrade";
    }}
    server {{
        listen        127.0.0.1:{port} default_server;
        client_header_timeout 60;
        client_body_timeout   60;
        keepalive_timeout     60;
        gzip                  off;
        gzip_comp_level       4;
        gzip_types text/plain text/css application/json application/javascript application/x-javascript text/xml application/xml application/xml+rss text/javascript;
        # Include the Elastic Beanstalk generated locations
        include {work}/conf.d/elasticbeanstalk/*.conf;
    }}
}}
"""

APPLICATION_CONF = """
location / {
    proxy_pass          http://127.0.0.1:8000;
    proxy_http_version  1.1;
    proxy_set_header    Connection          $connection_upgrade;
    proxy_set_header    Upgrade             $http_upgrade;
    proxy_set_header    Host                $host;
    proxy_set_header    X-Real-IP           $remote_addr;
    proxy_set_header    X-Forwarded-For     $proxy_add_x_forwarded_for;
}
"""


def nginx_binary():
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if not found:
        message = "nginx is not installed (apt-get install nginx-light)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return found


def write_config(work, port, app_port):
    """The platform's config with our file; the app's port is what Beanstalk fills in from PORT."""
    conf_dir = work / "conf.d" / "elasticbeanstalk"
    conf_dir.mkdir(parents=True)
    (conf_dir / "00_application.conf").write_text(APPLICATION_CONF.replace("8000", str(app_port)))
    (conf_dir / "01_api.conf").write_text(OUR_CONF.read_text().replace("127.0.0.1:8000",
                                                                        f"127.0.0.1:{app_port}"))
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir()
    config = work / "nginx.conf"
    # Workers write large bodies to client_body_temp_path: run them as the owner of the temp
    # directories (on Beanstalk, nginx owns /var/lib/nginx/tmp).
    user = "user root;" if os.geteuid() == 0 else ""
    config.write_text(NGINX_CONF.format(work=work, port=port, user=user))
    return config


def test_config_passes_nginx_t_in_beanstalks_server_block(tmp_path):
    nginx = nginx_binary()
    config = write_config(tmp_path, localdb.free_port(), 8000)
    result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The same check catches what Beanstalk's block would refuse: a repeated gzip directive.
    (tmp_path / "conf.d/elasticbeanstalk/02_bad.conf").write_text("gzip on;\n")
    result = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 1 and '"gzip" directive is duplicate' in result.stderr


def test_api_location_proxies_to_the_port_the_environment_sets():
    """01_api.conf names gunicorn's port itself (Beanstalk only rewrites its own location /)."""
    import re

    import yaml

    options = yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())["option_settings"]
    port = options["aws:elasticbeanstalk:application:environment"]["PORT"]
    assert re.findall(r"proxy_pass\s+http://127\.0\.0\.1:(\d+);", OUR_CONF.read_text()) == [port]


@contextlib.contextmanager
def nginx_in_front_of(app_port: int, work, ready_path: str | None = "/health", edit=lambda conf: conf):
    """nginx with our file in front of app_port; `edit` may change 01_api.conf's text first."""
    nginx = nginx_binary()
    port = localdb.free_port()
    config = write_config(work, port, app_port)
    ours = work / "conf.d/elasticbeanstalk/01_api.conf"
    ours.write_text(edit(ours.read_text()))
    log = work / "nginx.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([nginx, "-c", str(config), "-g", "daemon off;"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        if ready_path:
            localdb.wait_until_healthy(base + ready_path, 10, process=proc, output=log)
        else:  # no app behind it: wait until nginx itself accepts
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.05)
        yield base
    finally:
        localdb.stop_process(proc, 10)


@pytest.fixture
def proxied(db_env, start_gunicorn, tmp_path):
    server = start_gunicorn({**db_env, "WEB_CONCURRENCY": "1"})
    with nginx_in_front_of(int(server.url.rsplit(":", 1)[1]), tmp_path) as base:
        yield base


def test_api_json_is_gzipped_through_nginx(proxied):
    session = requests.Session()
    for i in range(30):
        assert session.post(proxied + "/api/users", json={"email": f"g{i}@example.com",
                                                          "name": f"Gzip {i}"}).status_code == 201
    raw = session.get(proxied + "/api/users?limit=30", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert raw.status_code == 200
    assert raw.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in raw.headers["Vary"]
    body = gzip.decompress(raw.raw.read())
    assert body.startswith(b'{"data":') and len(body) > 1024
    plain = session.get(proxied + "/api/users?limit=30", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and len(plain.json()["data"]) == 30
    assert session.get(proxied + "/health").status_code == 200  # Beanstalk's location / still serves


def test_too_large_bodies_get_json_413_from_app_or_nginx(proxied):
    headers = {"Content-Type": "application/json"}
    from_app = requests.post(proxied + "/api/users", data=b'{"name": "' + b"x" * 20_000 + b'"}',
                             headers=headers)
    from_nginx = requests.post(proxied + "/api/users", data=b"x" * 100_000, headers=headers)
    for response in (from_app, from_nginx):
        assert response.status_code == 413
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]["code"] == "payload_too_large"
    assert "X-Request-Id" in from_app.headers and "X-Request-Id" not in from_nginx.headers


def _options() -> dict:
    import yaml

    return yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())["option_settings"]


def test_timeouts_nest_database_read_under_nginx_under_the_load_balancer():
    """DB_READ_TIMEOUT < proxy_read_timeout < the ALB's IdleTimeout.

    An ALB closes a connection idle for its idle timeout, 60 s by default
    (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-load-balancer-attributes.html),
    set through Beanstalk's aws:elbv2:loadbalancer IdleTimeout
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-general.html#command-options-general-elbv2).
    nginx must give up first, or clients get the balancer's 504 instead of nginx's; and after
    the app's own query timeout, or a slow query's 503 never reaches them.
    """
    import re

    from app.config import Settings

    idle = int(_options()["aws:elbv2:loadbalancer"]["IdleTimeout"])
    [nginx_read] = re.findall(r"^proxy_read_timeout\s+(\d+)s;", OUR_CONF.read_text(), re.MULTILINE)
    read_timeout = Settings.model_fields["read_timeout"].default
    assert read_timeout < int(nginx_read) < idle, (read_timeout, nginx_read, idle)
    # 01 sets DB_READ_TIMEOUT too; that is the value deployed environments start with.
    deployed = int(_options()["aws:elasticbeanstalk:application:environment"]["DB_READ_TIMEOUT"])
    assert deployed < int(nginx_read)


def test_only_health_check_path_sets_the_health_check():
    """`Application Healthcheck URL` (aws:elasticbeanstalk:application) and HealthCheckPath
    (aws:elasticbeanstalk:environment:process:default) both set the load balancer's check
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/command-options-general.html): one
    place only, and /health, which never touches the database."""
    options = _options()
    assert options["aws:elasticbeanstalk:environment:process:default"]["HealthCheckPath"] == "/health"
    setters = [(namespace, key) for namespace, values in options.items() for key in values
               if key.lower().replace(" ", "") in ("healthcheckpath", "applicationhealthcheckurl")]
    assert setters == [("aws:elasticbeanstalk:environment:process:default", "HealthCheckPath")]


def test_leading_double_slashes_reach_the_app_unmerged_and_are_not_found(proxied):
    """nginx merges slashes to pick the location (merge_slashes is on by default), but a
    proxy_pass without a URI passes the path as the client sent it: the app's 404 answers."""
    import http.client

    host, port = proxied.removeprefix("http://").split(":")
    for path in ("//api/users", "///api/users/1", "//health"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 404, (path, body[:200])
        assert response.getheader("Content-Type").startswith("application/json")
        assert response.getheader("X-Request-Id")  # the app's answer, not nginx's
        assert json.loads(body)["error"]["code"] == "not_found"


# nginx's large_client_header_buffers in 01_api.conf: a request line or header line must fit in
# one 8000-byte buffer with its line end.
BUFFER = 8000


def raw(base, request: bytes):
    """(status, headers, body) of raw request bytes sent to nginx."""
    from test_hostile import exchange, parse

    return parse(exchange(base, request))


def request_line(length: int) -> bytes:
    """GET /api/users/xxx... HTTP/1.1, `length` bytes without its line end."""
    return b"GET /api/users/" + b"x" * (length - len(b"GET /api/users/ HTTP/1.1")) + b" HTTP/1.1"


def from_app(answer) -> dict:
    status, headers, body = answer
    assert headers.get("content-type", "").startswith("application/json"), (status, body[:300])
    assert "x-request-id" in headers, (status, body[:300])  # the app answered, not nginx
    return json.loads(body)["error"] if status >= 400 else json.loads(body)


def from_nginx(answer, status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, (got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), body[:300]
    assert "x-request-id" not in headers
    assert json.loads(body)["error"]["code"] == code


def test_oversized_request_lines_and_headers_are_refused_by_nginx_as_json(proxied):
    """nginx binds before gunicorn: just under each of its limits the app answers, just over
    nginx does, as JSON; never gunicorn's HTML 400/431 (its limits in gunicorn.conf.py are higher)."""
    end = b"\r\nHost: a\r\nConnection: close\r\n\r\n"
    # The request line: BUFFER bytes with CRLF, one more with a bare LF (nginx forwards CRLF).
    assert from_app(raw(proxied, request_line(BUFFER - 2) + end))["code"] == "not_found"
    assert from_app(raw(proxied, request_line(BUFFER - 1) + end.replace(b"\r\n", b"\n")))["code"] == "not_found"
    from_nginx(raw(proxied, request_line(BUFFER - 1) + end), 414, "uri_too_long")
    from_nginx(raw(proxied, b"POST" + request_line(BUFFER + 500)[3:] + end), 414, "uri_too_long")

    # One header line: nginx forwards "X-Pad:value" as "X-Pad: value", a byte longer.
    def header(length, separator=b": ", eol=b"\r\n"):
        name = b"X-Pad" + separator
        return (b"GET /health HTTP/1.1" + eol + b"Host: a" + eol + name + b"v" * (length - len(name))
                + eol + b"Connection: close" + eol + eol)

    assert from_app(raw(proxied, header(BUFFER - 2)))["status"] == "ok"
    assert from_app(raw(proxied, header(BUFFER - 1, b":", b"\n")))["status"] == "ok"
    from_nginx(raw(proxied, header(BUFFER - 1)), 431, "headers_too_large")
    from_nginx(raw(proxied, header(9000)), 431, "headers_too_large")

    # Many header lines: gunicorn's default limit is 100; nginx's buffers hold about 11,000 short
    # ones (10,995 measured), fewer where nginx has a max_headers limit (Debian's 1.22 here
    # backports one: 1000 lines), in which case nginx refuses the most the buffers hold.
    def headers(lines):
        return b"GET /health HTTP/1.1\nHost: a\n" + b"a:\n" * lines + b"Connection: close\n\n"

    assert from_app(raw(proxied, headers(150)))["status"] == "ok"
    most = raw(proxied, headers(10_900))  # what the buffers can hold
    if "x-request-id" in most[1]:
        assert from_app(most)["status"] == "ok"
    else:
        from_nginx(most, 431, "headers_too_large")
    from_nginx(raw(proxied, headers(12_000)), 431, "headers_too_large")
    big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 7000) for i in range(5))  # 5 lines, 4 buffers
    from_nginx(raw(proxied, b"GET /health HTTP/1.1\r\nHost: a\r\n" + big + b"Connection: close\r\n\r\n"),
               431, "headers_too_large")


def test_requests_nginx_cannot_parse_get_json_400(proxied):
    from_nginx(raw(proxied, b"GET /api/users HTTP/1.1\r\nHost: x\r\nX-Id: a\rSet-Cookie: s=1\r\n\r\n"),
               400, "bad_request")
    from_nginx(raw(proxied, b"G@T /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
               400, "bad_request")  # refused in the request line: no URI yet
    from_nginx(raw(proxied, b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                            b"Content-Length: 40\r\nConnection: close\r\n\r\n{}"), 400, "bad_request")
    # The internal URIs these refusals go to are not found from outside, as JSON too.
    from_nginx(raw(proxied, b"GET /.nginx/414 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
               404, "not_found")
    # The app's own 400s pass through as the app wrote them.
    assert from_app(raw(proxied, b"GET /api/users?limit=x HTTP/1.1\r\nHost: x\r\nConnection: close"
                                 b"\r\n\r\n"))["code"] == "invalid_parameter"


def test_what_nginx_refuses_itself_is_json_too(proxied):
    request = b" /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    from_nginx(raw(proxied, b"TRACE" + request), 405, "method_not_allowed")
    from_nginx(raw(proxied, b"POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n"
                            b"Connection: close\r\n\r\n{}"), 501, "not_implemented")
    from_nginx(raw(proxied, b"GET /api/users HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n"),
               505, "http_version_not_supported")


def test_an_app_that_does_not_answer_gets_json_502_and_504_from_nginx(tmp_path):
    """gunicorn down (a deploy restarting it): 502 with Retry-After; gunicorn accepting but not
    answering within proxy_read_timeout (1 s here instead of 55 s): 504."""
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        closed_port = localdb.free_port()
        with nginx_in_front_of(closed_port, tmp_path / "down", ready_path=None) as base:
            status, headers, body = raw(base, b"GET /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            from_nginx((status, headers, body), 502, "app_unavailable")
            assert headers["retry-after"] == "5"
        def shorter(conf):
            assert "proxy_read_timeout 55s;" in conf  # else the test would wait 55 s
            return conf.replace("proxy_read_timeout 55s;", "proxy_read_timeout 1s;")

        with nginx_in_front_of(silent.getsockname()[1], tmp_path / "slow", ready_path=None, edit=shorter) as base:
            from_nginx(raw(base, b"GET /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                       504, "app_timeout")


def test_an_upgrade_header_is_ignored_not_routed_as_a_websocket(proxied):
    """Beanstalk's nginx sends `Connection: upgrade` on every request (its map's default), so a
    client's `Upgrade: websocket` alone made Werkzeug match the request as ws://, which no
    route serves: a GET answered 405 with an Allow that left GET out, /health 400. Nothing here
    speaks WebSocket; RFC 9110 7.8 lets a server ignore Upgrade, and the app does."""
    created = requests.post(proxied + "/api/users", json={"email": "ws@example.com", "name": "W"})
    assert created.status_code == 201
    url = proxied + created.headers["Location"]
    upgrade = {"Upgrade": "websocket"}
    for method, target, body, status in (
            ("GET", url, None, 200), ("GET", proxied + "/api/users", None, 200),
            ("HEAD", url, None, 200), ("PATCH", url, {"name": "Wes"}, 200),
            ("GET", proxied + "/health", None, 200), ("GET", proxied + "/openapi.json", None, 200),
            ("DELETE", url, None, 204)):
        response = requests.request(method, target, json=body, headers=upgrade, timeout=10)
        assert response.status_code == status, (method, target, response.status_code, response.text)
        assert "X-Request-Id" in response.headers
    assert requests.get(url, timeout=10).status_code == 404  # the DELETE did delete
    # A wrong method still names the right ones.
    response = requests.put(url, json={"name": "x"}, headers=upgrade, timeout=10)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}


def test_scheme_headers_a_client_adds_do_not_get_gunicorns_html_400(proxied):
    """The load balancer sets X-Forwarded-Proto; X-Forwarded-Ssl and X-Forwarded-Protocol
    are the client's own, passed on by it and by nginx. gunicorn trusts all three from nginx
    by default and refuses a request whose three disagree with its own HTML 400
    ('Contradictory scheme headers'), on every route: gunicorn.conf.py trusts only the one
    the load balancer sets."""
    for extra in ({"X-Forwarded-Ssl": "on"}, {"X-Forwarded-Ssl": "off"},
                  {"X-Forwarded-Protocol": "ssl"}, {"X-Forwarded-Protocol": "x"}):
        for proto in ("http", "https"):
            headers = {"X-Forwarded-Proto": proto, **extra}
            for path, status in (("/api/users", 200), ("/api/users/1", 404), ("/health", 200)):
                response = requests.get(proxied + path, headers=headers, timeout=10)
                assert response.status_code == status, (headers, path, response.text[:300])
                assert response.headers["Content-Type"].startswith("application/json"), headers
                assert "X-Request-Id" in response.headers  # the app answered


def test_methods_gunicorn_would_refuse_get_nginx_json_501(proxied):
    """nginx passes any method of capitals, '_' and '-'; gunicorn refuses one shorter than 3 or
    longer than 20 characters with its own HTML 400. nginx answers those itself, as JSON (the
    method is not implemented); the lengths gunicorn takes still reach the app."""
    end = b" /api/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for method in (b"M", b"AB", b"A" * 21, b"PROPFIND_" + b"X" * 30):
        from_nginx(raw(proxied, method + end), 501, "not_implemented")
        from_nginx(raw(proxied, method + end.replace(b"/api/users", b"/health")), 501, "not_implemented")
    for method in (b"ABC", b"A" * 20, b"FOO_BAR"):
        assert from_app(raw(proxied, method + end))["code"] == "method_not_allowed"
    from_nginx(raw(proxied, b"TRACE" + end), 405, "method_not_allowed")


def test_http_0_9_is_not_served(proxied):
    """A request line without a version is HTTP/0.9, which nginx serves as a bare body with no
    status line or headers: the users themselves, though only HTTP/1.0 and 1.1 are served
    here (gunicorn alone refuses it, test_hostile). nginx answers its 505 instead, which in
    HTTP/0.9 is the JSON body alone."""
    from test_hostile import exchange

    requests.post(proxied + "/api/users", json={"email": "old@example.com", "name": "Old"})
    for path in (b"/api/users", b"/api/users/1", b"/health"):
        answer = exchange(proxied, b"GET " + path + b"\r\n")
        assert json.loads(answer) == {"error": {
            "code": "http_version_not_supported",
            "message": "Only HTTP/1.0 and HTTP/1.1 are served here."}}, answer[:300]
    assert requests.get(proxied + "/api/users/1", timeout=10).json()["email"] == "old@example.com"
