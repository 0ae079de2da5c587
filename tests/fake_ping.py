"""A fake healthchecks.io ping service (hc-ping.com) served by the fake Garmin's HTTPS proxy.

It records every ping, its path and body, in order, and answers 200 "OK" as healthchecks.io
does. Its failures are the fake's faults: `garmin.add_fault("", status(500), times=None,
host="hc-ping.com")` makes every ping fail, `garmin.unreachable.add("hc-ping.com")` refuses
the connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fake_garmin import Reply, Request

HOST = "hc-ping.com"


@dataclass
class FakePings:
    """The pings received; attach with `FakeGarmin.pings = FakePings()`."""

    uuid: str = "5bd3b4f6-1c0e-4a8e-9d5e-2f1f7c0a9e41"
    received: list[tuple[str, str]] = field(default_factory=list)  # (path, body)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"https://{HOST}/{self.uuid}"

    def handle(self, req: Request) -> Reply:
        with self._lock:
            self.received.append((req.path, req.body.decode("utf-8", "replace")))
        return Reply(200, b"OK", "text/plain; charset=utf-8")

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.received]

    def bodies(self) -> list[str]:
        with self._lock:
            return [body for _, body in self.received]
