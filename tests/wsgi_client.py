"""Calling a WSGI app in-process, the way a browser would over HTTP."""

from __future__ import annotations

import sys
from io import BytesIO


def request(app, path: str) -> tuple[str, dict[str, str], bytes]:
    """GET `path` (with an optional ?query): the status line, headers and body."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
        "wsgi.input": BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    status = {}

    def start_response(code, headers, exc_info=None):
        status["code"], status["headers"] = code, dict(headers)

    body = b"".join(app(environ, start_response))
    return status["code"], status["headers"], body


def call_wsgi(app, path: str) -> tuple[str, bytes]:
    code, _, body = request(app, path)
    return code, body
