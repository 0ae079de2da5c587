"""A fake Strava API (www.strava.com) served by the fake Garmin's HTTPS proxy.

It speaks the three endpoints garminsync uses: `POST /oauth/token` (authorization code and
refresh grants; the refresh token rotates and the old one stops working), `POST
/api/v3/uploads` (multipart) and `GET /api/v3/uploads/{id}` (processing, then ready, or an
error such as a duplicate). Every API answer carries Strava's rate-limit headers.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fake_garmin import Reply, Request, json_reply

READY = "Your activity is ready."
PROCESSING = "Your activity is still being processed."
ERRORED = "There was an error processing your activity."
INACTIVE = {"resource": "Application", "field": "Status", "code": "Inactive"}


@dataclass
class Upload:
    upload_id: int
    external_id: str
    data_type: str
    name: str | None
    digest: str
    polls_left: int
    activity_id: int | None = None
    error: str | None = None


@dataclass
class FakeStrava:
    """State of the fake Strava; attach with `FakeGarmin.strava = FakeStrava()`."""

    client_id: str = "48213"
    client_secret: str = field(default_factory=lambda: secrets.token_hex(20))
    access_token: str = field(default_factory=lambda: secrets.token_hex(20))
    refresh_token: str = field(default_factory=lambda: secrets.token_hex(20))
    expires_at: int = field(default_factory=lambda: int(time.time()) + 6 * 3600)
    code: str = field(default_factory=lambda: secrets.token_hex(10))
    granted_scope: str = "read,activity:write,activity:read_all"
    polls_until_ready: int = 0  # GETs answering "processing" before "ready"
    broken_files: set[str] = field(default_factory=set)  # external ids Strava cannot process
    existing: dict[str, int] = field(default_factory=dict)  # file sha256 -> activity id
    limits: tuple[int, int] = (200, 2000)  # overall, per 15 minutes and per day
    read_limits: tuple[int, int] = (100, 1000)  # non-upload requests
    usage: list[int] = field(default_factory=lambda: [0, 0])
    read_usage: list[int] = field(default_factory=lambda: [0, 0])
    uploads: dict[int, Upload] = field(default_factory=dict)
    revoked: bool = False
    # An API application whose owner has no Strava subscription (since 2026-06-30): token
    # grants still work, every /api/v3 call answers 403 with the body below, as reported
    # in dreeveapp/dreeve#2562 and stravalib/stravalib#730.
    inactive: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = 9_000_000_001

    def token_file(self, expires_at: int | None = None) -> str:
        """The JSON garminsync keeps in strava_tokens.json for the current tokens."""
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": self.expires_at if expires_at is None else expires_at,
            }
        )

    def handle(self, req: Request) -> Reply:
        with self._lock:
            if req.path == "/oauth/token" and req.method == "POST":
                return self._token(dict(parse_qsl(req.body.decode())))
            if req.path.startswith("/api/v3/"):
                return self._api(req)
        return json_reply({"message": "Record Not Found"}, 404)

    def _issue(self) -> Reply:
        self.access_token = secrets.token_hex(20)
        self.refresh_token = secrets.token_hex(20)
        self.expires_at = int(time.time()) + 6 * 3600
        return json_reply(
            {
                "token_type": "Bearer",
                "expires_at": self.expires_at,
                "expires_in": 21600,
                "refresh_token": self.refresh_token,
                "access_token": self.access_token,
                "athlete": {"id": 1234567, "firstname": "Test"},
            }
        )

    def _token(self, form: dict[str, str]) -> Reply:
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return json_reply({"message": "Bad Request", "errors": [{"field": "client_id"}]}, 400)
        grant = form.get("grant_type")
        if grant == "authorization_code" and form.get("code") == self.code:
            self.code = secrets.token_hex(10)  # a code works once
            return self._issue()
        if grant == "refresh_token" and form.get("refresh_token") == self.refresh_token:
            if not self.revoked:
                return self._issue()
        return json_reply({"message": "Bad Request", "errors": [{"code": "invalid"}]}, 400)

    def _api(self, req: Request) -> Reply:
        is_upload = req.method == "POST"
        self.usage = [n + 1 for n in self.usage]
        if not is_upload:
            self.read_usage = [n + 1 for n in self.read_usage]
        over = any(u > lim for u, lim in zip(self.usage, self.limits, strict=True)) or (
            not is_upload
            and any(u > lim for u, lim in zip(self.read_usage, self.read_limits, strict=True))
        )
        if over:
            reply = json_reply({"message": "Rate Limit Exceeded"}, 429)
        elif self.inactive:
            reply = json_reply({"message": "Forbidden", "errors": [INACTIVE]}, 403)
        elif self.revoked or req.headers.get("Authorization") != f"Bearer {self.access_token}":
            reply = json_reply({"message": "Authorization Error"}, 401)
        elif is_upload and req.path == "/api/v3/uploads":
            reply = self._upload(req)
        elif req.method == "GET" and req.path.startswith("/api/v3/uploads/"):
            reply = self._poll(int(req.path.rsplit("/", 1)[1]))
        else:
            reply = json_reply({"message": "Record Not Found"}, 404)
        reply.headers.update(self._limit_headers())
        return reply

    def _limit_headers(self) -> dict[str, str]:
        def pair(values: Any) -> str:
            return ",".join(str(v) for v in values)

        return {
            "X-RateLimit-Limit": pair(self.limits),
            "X-RateLimit-Usage": pair(self.usage),
            "X-ReadRateLimit-Limit": pair(self.read_limits),
            "X-ReadRateLimit-Usage": pair(self.read_usage),
        }

    def _upload(self, req: Request) -> Reply:
        head = f"Content-Type: {req.headers.get('Content-Type')}\r\n\r\n".encode()
        message = email.parser.BytesParser().parsebytes(head + req.body)
        parts = {
            p.get_param("name", header="content-disposition"): p for p in message.get_payload()
        }
        content = parts["file"].get_payload(decode=True)
        text = {k: v.get_payload(decode=True).decode() for k, v in parts.items() if k != "file"}
        upload = Upload(
            self._next_id,
            text["external_id"],
            text["data_type"],
            text.get("name"),
            hashlib.sha256(content).hexdigest(),
            self.polls_until_ready,
        )
        self._next_id += 1
        self.uploads[upload.upload_id] = upload
        return json_reply(self._describe(upload), 201)

    def _poll(self, upload_id: int) -> Reply:
        upload = self.uploads.get(upload_id)
        if upload is None:
            return json_reply({"message": "Record Not Found"}, 404)
        if upload.polls_left > 0:
            upload.polls_left -= 1
        elif upload.activity_id is None and upload.error is None:
            if upload.external_id in self.broken_files:
                upload.error = "Error parsing file: the file is corrupt"
            elif upload.digest in self.existing:
                found = self.existing[upload.digest]
                upload.error = (
                    f"{upload.external_id}.fit duplicate of <a href='/activities/"
                    f"{found}' target='_blank'>Morning Run</a>"
                )
            else:
                upload.activity_id = 12_000_000_000 + upload.upload_id % 1_000_000
                self.existing[upload.digest] = upload.activity_id
        return json_reply(self._describe(upload))

    @staticmethod
    def _describe(upload: Upload) -> dict[str, Any]:
        status = ERRORED if upload.error else READY if upload.activity_id else PROCESSING
        return {
            "id": upload.upload_id,
            "id_str": str(upload.upload_id),
            "external_id": upload.external_id,
            "error": upload.error,
            "status": status,
            "activity_id": upload.activity_id,
        }
