"""What every request and response passes through outside Flask's routing: WSGI middleware
that guards the router, the response class, and the headers every answer carries."""

from __future__ import annotations

from flask import Flask
from flask import Response as FlaskResponse
from werkzeug.exceptions import NotFound


class RoutingGuards:
    """WSGI middleware: what Werkzeug's router would make of a request before it matches.

    A path that starts with `//` is not found (404 `not_found`, from the error table), like any
    other path with doubled slashes: the router strips leading slashes, so without this
    `//api/users` would be `/api/users` while `/api//users` is not found.

    An `Upgrade` header is ignored (RFC 9110 7.8 allows it; nothing here speaks WebSocket).
    With `Upgrade: websocket` and `Connection: upgrade`, which Beanstalk's nginx sends on every
    request, the router matches ws:// rules only, and there are none: GET /api/users/1 answered
    405 with an Allow that left GET out, /health 400.

    Requests with a plain path and no Upgrade pay one startswith and one lookup.
    """

    def __init__(self, app: Flask):
        self.app = app
        self.wsgi_app = app.wsgi_app

    def __call__(self, environ, start_response):
        if "HTTP_UPGRADE" in environ:
            del environ["HTTP_UPGRADE"]
        if environ.get("PATH_INFO", "").startswith("//"):
            with self.app.request_context(environ):
                response = self.app.make_response(self.app.handle_user_exception(NotFound()))
            return response(environ, start_response)
        return self.wsgi_app(environ, start_response)


# Every answer carries user data or says something about the service: no cache, shared or
# the browser's, may keep it (a list of emails read with one client's key must not be served
# to the next from a proxy, nor stay on a shared computer's disk), and a browser must not
# sniff JSON, which echoes some of what it was sent (a query parameter's name), into HTML.
# /openapi.json too: it changes with each deploy, and a stale copy would describe another API.
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


class Response(FlaskResponse):
    """Flask's response with no default Content-Type: every body the app sends says it is
    JSON, and the answer to OPTIONS (Werkzeug's: Allow and no body) claimed text/html."""

    default_mimetype = None


class SecurityHeaders:
    """WSGI middleware: SECURITY_HEADERS on every response the app makes, as the request id
    middleware (app/logs.py) adds its header, so that the responses Flask builds without
    after_request hooks (RoutingGuards' 404, an unhandled error's 500) have them too."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            headers.extend(SECURITY_HEADERS)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_with_headers)


def init_app(app: Flask) -> None:
    """The response class, and the middleware inside logs' (app/logs.py): RoutingGuards' own
    404 gets its request id, and every response these headers."""
    app.response_class = Response  # an empty answer claims no Content-Type
    app.wsgi_app = RoutingGuards(app)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)
