"""A real S3 API server for the tests: moto's ThreadedMotoServer, with a request log.

:class:`LoggedMotoServer` is moto's :class:`~moto.server.ThreadedMotoServer`
on 127.0.0.1 and a free port, whose WSGI application is wrapped by
:class:`RequestLog`: every HTTP request the server answers is recorded with
its method, path, ``Range`` header and the bytes of its response body, so
tests count what a client really fetched. :meth:`RequestLog.hold` parks the
requests a predicate picks until released (to kill a client mid-upload).

:func:`start_s3` starts the server with IAM authentication on: it creates a
user with an access key allowed every S3 action and a bucket, then requires
signed requests, so wrong credentials are refused as a real S3 refuses them.

Example (``tests/test_remote.py`` starts one server per session):
    >>> log = RequestLog()
    >>> log.mark(), log.since(0)
    (0, [])
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

BUCKET = "models"
REGION = "us-east-1"


@dataclass(frozen=True)
class Request:
    """One request the server answered: method, path, query, Range header, body bytes sent."""

    method: str
    path: str
    query: str
    range: str | None
    sent: int


@dataclass
class RequestLog:
    """WSGI middleware that records every request and can hold some of them."""

    entries: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hold: Callable[[dict[str, Any]], bool] | None = None
    held: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _in_flight: int = 0

    def mark(self) -> int:
        """Return a position in the log (for :meth:`since`)."""
        with self._lock:
            return len(self.entries)

    def since(self, mark: int) -> list[Request]:
        """Return the requests answered after ``mark``, once none is being answered.

        A client has its response before the server has finished writing it,
        so this waits (up to 10 s) for every request in flight to be recorded.
        """
        deadline = time.monotonic() + 10
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            return list(self.entries[mark:])

    def hold(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Park each request whose WSGI environ ``predicate`` accepts until :meth:`release`."""
        self.held.clear()
        self._release.clear()
        self._hold = predicate

    def release(self) -> None:
        """Let parked requests go on and stop holding new ones."""
        self._hold = None
        self._release.set()

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterator[bytes]]:
        """Return ``app`` with every request recorded (and held when asked)."""

        def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            with self._lock:
                self._in_flight += 1
            hold = self._hold
            if hold is not None and hold(environ):
                self.held.set()
                self._release.wait(timeout=60)
            sent = 0
            try:
                for chunk in app(environ, start_response):
                    sent += len(chunk)
                    yield chunk
            finally:
                with self._lock:
                    self.entries.append(Request(
                        environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                        environ.get("QUERY_STRING", ""), environ.get("HTTP_RANGE"), sent,
                    ))
                    self._in_flight -= 1

        return logged


class LoggedMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose application is wrapped by a :class:`RequestLog`."""

    def __init__(self, log: RequestLog) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.log = log

    def _server_entry(self) -> None:  # moto's own, with the app wrapped
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, self.log.wrap(app), True,
            request_handler=MotoRequestHandler,
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@dataclass
class S3:
    """A running server: its endpoint, valid credentials, request log and bucket."""

    server: LoggedMotoServer
    endpoint: str
    key: str
    secret: str
    log: RequestLog
    bucket: str = BUCKET

    @property
    def storage_options(self) -> dict[str, Any]:
        """The ``storage_options`` that reach the bucket with valid credentials."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def url(self, key: str) -> str:
        """Return ``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}"

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop()


def start_s3() -> S3:
    """Start the server, create a user allowed S3 and a bucket, then require signed requests."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on stderr
    log = RequestLog()
    server = LoggedMotoServer(log)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = {"endpoint_url": endpoint, "region_name": REGION,
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="trainer")
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(policy))
    created = iam.create_access_key(UserName="trainer")["AccessKey"]
    key, secret = created["AccessKeyId"], created["SecretAccessKey"]
    boto3.client("s3", **{**setup, "aws_access_key_id": key,
                          "aws_secret_access_key": secret}).create_bucket(Bucket=BUCKET)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                     headers={"Content-Type": "text/plain"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):  # from now on every request is checked
        pass
    return S3(server, endpoint, key, secret, log)
