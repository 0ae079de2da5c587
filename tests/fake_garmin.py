"""A fake Garmin Connect for tests, reached through a local HTTPS CONNECT proxy.

`FakeGarmin` runs a CONNECT proxy on 127.0.0.1 (ephemeral port). For ``CONNECT host:443`` to a
known host it terminates TLS itself, with a leaf certificate issued by a `trustme.CA`, and
serves HTTP/1.1 (keep-alive) from an in-memory imitation of the services garminconnect talks
to: ``connectapi`` (activity list, count, originals), ``diauth`` (DI OAuth2 token grants) and
``sso`` (mobile login and MFA). Any other host is refused with ``502 Bad Gateway``, the way a
DNS failure looks through a proxy, so nothing can reach the real internet.

A client only needs ``HTTPS_PROXY=fake.proxy_url`` and the CA bundle (``REQUESTS_CA_BUNDLE``,
``SSL_CERT_FILE``, ``CURL_CA_BUNDLE``); both `requests` and curl_cffi work unchanged.

State, faults and the request log are plain attributes guarded by one lock. The module has no
pytest dependency, so a benchmark script can import it too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import secrets
import socket
import socketserver
import ssl
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trustme

KNOWN_HOSTS = (
    "connectapi.garmin.com",
    "diauth.garmin.com",
    "sso.garmin.com",
    "connect.garmin.com",
    "www.strava.com",
    "hc-ping.com",
    "localhost",
)
DI_CLIENT_ID = "GARMIN_CONNECT_MOBILE_ANDROID_DI_2025Q2"
SERVICE_TICKET_GRANT = "https://connectapi.garmin.com/di-oauth2-service/oauth/grant/service_ticket"
OWNER_ID = 81234567
DISPLAY_NAME = "fake-runner"
ZIP_TYPE = "application/x-zip-compressed"
# Web-login fallbacks of garminconnect; answered 429 so its 3-20 s anti-WAF sleeps never run.
BLOCKED_SSO_PATHS = ("/sso/embed", "/sso/signin", "/portal/sso/", "/portal/api/login")

# typeKey -> (typeId, parentTypeId): a subset of Garmin's activity type table, as
# /activity-service/activity/activityTypes lists it (ids seen in public code that calls it:
# gravel_cycling 143, virtual_ride 152, indoor_rowing 32; the others as Garmin numbers them
# where known, else plausible). "all" is the root: every top-level type's parent.
ACTIVITY_TYPES: dict[str, tuple[int, int]] = {
    "all": (17, 0),
    "running": (1, 17),
    "cycling": (2, 17),
    "hiking": (3, 17),
    "other": (4, 17),
    "mountain_biking": (5, 2),
    "trail_running": (6, 1),
    "walking": (9, 17),
    "road_biking": (10, 2),
    "strength_training": (13, 29),
    "treadmill_running": (18, 1),
    "indoor_cycling": (25, 2),
    "lap_swimming": (27, 26),
    "swimming": (26, 17),
    "fitness_equipment": (29, 17),
    "open_water_swimming": (28, 26),
    "multi_sport": (89, 17),
    "street_running": (7, 1),
    "track_running": (8, 1),
    "cyclocross": (19, 2),
    "downhill_biking": (20, 2),
    "track_cycling": (21, 2),
    "recumbent_cycling": (22, 2),
    "elliptical": (30, 29),
    "stair_climbing": (31, 29),
    "indoor_rowing": (32, 29),
    "gravel_cycling": (143, 2),
    "virtual_ride": (152, 2),
}
_TYPE_KEY_BY_ID = {type_id: key for key, (type_id, _) in ACTIVITY_TYPES.items()}


# --------------------------------------------------------------------------- activities


def make_activity(
    activity_id: int,
    start_local: datetime,
    type_key: str = "running",
    name: str | None = None,
    manual: bool = False,
    gmt_offset_hours: float = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Return one activity as `/activitylist-service/.../search/activities` lists it."""
    rnd = random.Random(activity_id)
    type_id, parent_id = ACTIVITY_TYPES[type_key]
    start_gmt = start_local - timedelta(hours=gmt_offset_hours)
    begin_ms = int(start_gmt.replace(tzinfo=timezone.utc).timestamp() * 1000)
    duration = round(rnd.uniform(900, 7200), 3)
    speed = round(rnd.uniform(2.2, 8.5 if parent_id == 2 else 4.2), 3)
    lat, lon = round(rnd.uniform(40, 55), 7), round(rnd.uniform(-5, 15), 7)
    has_track = not manual and type_key not in ("strength_training", "treadmill_running")
    activity: dict[str, Any] = {
        "activityId": activity_id,
        "activityName": name or f"{type_key.replace('_', ' ').title()}",
        "description": None,
        "startTimeLocal": start_local.strftime("%Y-%m-%d %H:%M:%S"),
        "startTimeGMT": start_gmt.strftime("%Y-%m-%d %H:%M:%S"),
        "activityType": {
            "typeId": type_id,
            "typeKey": type_key,
            "parentTypeId": parent_id,
            "isHidden": False,
            "restricted": False,
            "trimmable": True,
        },
        "eventType": {"typeId": 9, "typeKey": "uncategorized", "sortOrder": 10},
        "distance": round(duration * speed, 1) if has_track else 0.0,
        "duration": duration,
        "elapsedDuration": round(duration * 1.04, 3),
        "movingDuration": round(duration * 0.97, 3),
        "elevationGain": round(rnd.uniform(0, 400), 1),
        "elevationLoss": round(rnd.uniform(0, 400), 1),
        "averageSpeed": speed,
        "maxSpeed": round(speed * 1.4, 3),
        "startLatitude": lat if has_track else None,
        "startLongitude": lon if has_track else None,
        "endLatitude": lat + 0.001 if has_track else None,
        "endLongitude": lon + 0.001 if has_track else None,
        "hasPolyline": has_track,
        "hasImages": False,
        "ownerId": OWNER_ID,
        "ownerDisplayName": DISPLAY_NAME,
        "ownerFullName": "Fake Runner",
        "ownerProfileImageUrlSmall": "https://s3.amazonaws.com/garmin-connect-prod/profile_images/x.png",
        "calories": float(rnd.randint(150, 1500)),
        "bmrCalories": float(rnd.randint(20, 120)),
        "averageHR": float(rnd.randint(110, 165)),
        "maxHR": float(rnd.randint(165, 190)),
        "steps": rnd.randint(2000, 20000) if parent_id in (1, 17) else None,
        "userRoles": ["SCOPE_GOLF_API_READ", "SCOPE_CONNECT_READ", "SCOPE_CONNECT_WRITE"],
        "privacy": {"typeId": 2, "typeKey": "private"},
        "userPro": False,
        "hasVideo": False,
        "timeZoneId": 124,
        "beginTimestamp": begin_ms,
        "sportTypeId": 1 if parent_id in (1, 17) else 2,
        "aerobicTrainingEffect": round(rnd.uniform(1, 5), 1),
        "anaerobicTrainingEffect": round(rnd.uniform(0, 3), 1),
        "aerobicTrainingEffectMessage": "IMPROVING_AEROBIC_BASE_8",
        "anaerobicTrainingEffectMessage": "NO_ANAEROBIC_BENEFIT_0",
        "activityTrainingLoad": round(rnd.uniform(20, 250), 1),
        "trainingEffectLabel": "AEROBIC_BASE",
        "deviceId": None if manual else 3_900_000_000 + activity_id % 1_000_000,
        "minElevation": round(rnd.uniform(0, 300), 1),
        "maxElevation": round(rnd.uniform(300, 900), 1),
        "summarizedDiveInfo": {"summarizedDiveGases": []},
        "manufacturer": None if manual else "GARMIN",
        "locationName": None if manual else rnd.choice(["Berlin", "Lyon", "Boulder", "Bergen"]),
        "lapCount": 1 if manual else rnd.randint(1, 20),
        "waterEstimated": float(rnd.randint(100, 1500)),
        "minActivityLapDuration": round(rnd.uniform(30, 600), 3),
        "splitSummaries": [],
        "hasSplits": not manual,
        "moderateIntensityMinutes": rnd.randint(0, 60),
        "vigorousIntensityMinutes": rnd.randint(0, 60),
        "pr": False,
        "purposeful": False,
        "manualActivity": manual,
        "autoCalcCalories": False,
        "elevationCorrected": False,
        "atpActivity": False,
        "favorite": False,
        "decoDive": False,
        "parent": False,
        "hasHeatMap": False,
    }
    activity.update(overrides)
    return activity


def activity_type_table() -> list[dict[str, Any]]:
    """GET /activity-service/activity/activityTypes: Garmin's whole table of activity types,
    one row per type (python-garminconnect's get_activity_types reads this path)."""
    return [
        {
            "typeId": type_id,
            "typeKey": key,
            "parentTypeId": parent_id,
            "isHidden": False,
            "restricted": False,
            "trimmable": key != "all",
        }
        for key, (type_id, parent_id) in ACTIVITY_TYPES.items()
    ]


def _sort_key(activity: dict[str, Any]) -> tuple[str, int]:
    return activity["startTimeLocal"], activity["activityId"]


def _type_matches(activity: dict[str, Any], type_key: str) -> bool:
    """Garmin's `activityType` filter also matches child types (running: trail_running)."""
    kind = activity["activityType"]
    return type_key in (kind["typeKey"], _TYPE_KEY_BY_ID.get(kind["parentTypeId"]))


# --------------------------------------------------------------------------- files


PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


# Variables that could change garminsync's behaviour or route traffic past the fake.
DROPPED_PREFIXES = ("GARMIN", "GARTH_", "XDG_", "STRAVA_")
DROPPED = {
    "CREDENTIALS_DIRECTORY",
    "NETRC",
    "JOURNAL_STREAM",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_DIR",
    "PYTHONPATH",
}


def dropped(name: str) -> bool:
    """Whether a variable of the calling environment must not reach a client under test."""
    return name in DROPPED or name.startswith(DROPPED_PREFIXES)


def clean_environ() -> dict[str, str]:
    """This process's environment without the variables `dropped` names."""
    return {key: value for key, value in os.environ.items() if not dropped(key)}


def routing_env(proxy_url: str, ca_bundle: str | os.PathLike[str]) -> dict[str, str]:
    """The variables that send a client's traffic through the fake and trust only its CA."""
    env = dict.fromkeys(PROXY_VARIABLES, proxy_url)
    env.update(dict.fromkeys(CA_VARIABLES, str(ca_bundle)))
    return env


def zip_of_members(members: list[tuple[str, bytes]]) -> bytes:
    """A deflated zip of these members, in this order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def zip_of(member_name: str, data: bytes) -> bytes:
    """A deflated zip holding one member, as Garmin serves an activity original."""
    return zip_of_members([(member_name, data)])


_FIT_CRC_TABLE = (0x0000, 0xCC01, 0xD801, 0x1400, 0xF001, 0x3C00, 0x2800, 0xE401,
                  0xA001, 0x6C00, 0x7800, 0xB401, 0x5000, 0x9C01, 0x8801, 0x4400)  # fmt: skip


def fit_crc(data: bytes, crc: int = 0) -> int:
    """The FIT protocol's CRC-16, as specified by the FIT SDK."""
    for byte in data:
        for nibble in (byte & 0xF, byte >> 4):
            tmp = _FIT_CRC_TABLE[crc & 0xF]
            crc = ((crc >> 4) & 0x0FFF) ^ tmp ^ _FIT_CRC_TABLE[nibble]
    return crc


def synthetic_fit(activity_id: int, records: int | None = None) -> bytes:
    """A small, valid FIT activity file (file_id + record messages), deterministic per id."""
    rnd = random.Random(activity_id)
    records = records if records is not None else 20 + activity_id % 180
    t0 = 1_000_000_000 + (activity_id * 7919) % 50_000_000  # seconds since the FIT epoch
    data = bytearray()
    # definition, local 0 -> file_id (0): type, manufacturer, product, serial, time_created
    data += bytes([0x40, 0, 0]) + struct.pack("<HB", 0, 5)
    data += bytes([0, 1, 0x00, 1, 2, 0x84, 2, 2, 0x84, 3, 4, 0x8C, 4, 4, 0x86])
    data += bytes([0x00]) + struct.pack("<BHHII", 4, 1, 2697, activity_id & 0xFFFFFFFF, t0)
    # definition, local 1 -> record (20): timestamp, heart_rate, distance (cm)
    data += bytes([0x41, 0, 0]) + struct.pack("<HB", 20, 3)
    data += bytes([253, 4, 0x86, 3, 1, 0x02, 5, 4, 0x86])
    for i in range(records):
        data += bytes([0x01]) + struct.pack("<IBI", t0 + i, rnd.randint(90, 180), i * 280)
    header = struct.pack("<BBHI4s", 14, 0x20, 2132, len(data), b".FIT")
    header += struct.pack("<H", fit_crc(header))
    content = header + bytes(data)
    return content + struct.pack("<H", fit_crc(content))


def gpx_document(
    start_utc: datetime, points: int = 30, lat: float = 46.5, lon: float = 7.9
) -> bytes:
    """A small valid GPX 1.1 track starting at `start_utc` (naive = UTC)."""
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    pts = "\n".join(
        f'      <trkpt lat="{lat + i * 1e-4:.7f}" lon="{lon + i * 1.5e-4:.7f}">'
        f"<ele>{1200 + i * 1.5:.1f}</ele>"
        f"<time>{(start_utc + timedelta(seconds=10 * i)).strftime(stamp)}</time></trkpt>"
        for i in range(points)
    )
    doc = f"""<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="fake_garmin" xmlns="http://www.topografix.com/GPX/1/1">
  <metadata><time>{start_utc.strftime(stamp)}</time></metadata>
  <trk>
    <name>Hike</name>
    <trkseg>
{pts}
    </trkseg>
  </trk>
</gpx>
"""
    return doc.encode()


def tcx_document(start_local: str, points: int = 30) -> str:
    """A small valid TCX running activity, a stand-in for a real Garmin TCX export."""
    start = datetime.fromisoformat(start_local)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    pts = "\n".join(
        f"<Trackpoint><Time>{(start + timedelta(seconds=5 * i)).strftime(stamp)}</Time>"
        f"<DistanceMeters>{i * 12.5:.1f}</DistanceMeters></Trackpoint>"
        for i in range(points)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<TrainingCenterDatabase xmlns="http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2">
  <Activities><Activity Sport="Running"><Id>{start.strftime(stamp)}</Id>
    <Lap StartTime="{start.strftime(stamp)}"><Track>
{pts}
    </Track></Lap>
  </Activity></Activities>
</TrainingCenterDatabase>
"""


# --------------------------------------------------------------------------- tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(client_id: str = DI_CLIENT_ID, exp: float | None = None) -> str:
    """A JWT-shaped DI access token (unsigned: the signature part is random)."""
    now = int(time.time())
    payload = {
        "scope": ["CONNECT_READ", "CONNECT_WRITE"],
        "iss": "https://diauth.garmin.com",
        "client_id": client_id,
        "garmin_guid": "0e0f0a0b-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        "iat": now,
        "exp": int(exp if exp is not None else now + 86400),
        "jti": secrets.token_hex(16),
    }
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(payload).encode())
    return f"{header}.{body}.{_b64url(secrets.token_bytes(32))}"


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """What to do instead of (or while) answering a request; build with the functions below."""

    kind: str  # status | body | cut | reset | trickle
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None
    fraction: float = 0.5
    rate: float = 0.0


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Fault:
    """Answer with this status, headers and body (e.g. 429 + Retry-After, or 200 + HTML)."""
    return Fault("status", status=code, headers=dict(headers or {}), body=body)


def body(data: bytes, status: int = 200, content_type: str = "application/json") -> Fault:
    """Answer with this body instead of the real one."""
    return Fault("body", status=status, body=data, content_type=content_type)


def cut(fraction: float = 0.5) -> Fault:
    """Send the real headers (full Content-Length), part of the body, then close."""
    return Fault("cut", fraction=fraction)


def reset(fraction: float | None = None) -> Fault:
    """Abort the connection with a TCP RST: before answering, or after part of the body."""
    return Fault("reset", fraction=-1.0 if fraction is None else fraction)


def trickle(bytes_per_sec: float) -> Fault:
    """Send the real response body at about this rate."""
    return Fault("trickle", rate=bytes_per_sec)


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    action: Fault
    remaining: int | None
    host: str | None


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    host: str
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length


def chunked_body(data: bytes, size: int = 16384) -> bytes:
    """The body in HTTP/1.1 chunked transfer coding."""
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def json_reply(obj: Any, code: int = 200) -> Reply:
    return Reply(code, json.dumps(obj).encode())


@dataclass
class LogEntry:
    """One request as the fake saw it; holds no credentials and no request body."""

    time: float
    host: str
    method: str
    path: str
    query: dict[str, str]
    status: int | None
    bytes_sent: int  # status line + headers + body bytes actually written
    auth_ok: bool
    fault: str | None = None


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    fake: FakeGarmin

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client-side aborts are expected in fault tests; stay quiet."""


class _ProxyHandler(BaseHTTPRequestHandler):
    """Speaks to the client before the tunnel: answers CONNECT, refuses everything else."""

    protocol_version = "HTTP/1.1"
    rbufsize = 0  # unbuffered, so no TLS bytes are swallowed while reading the CONNECT
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        fake = self.server.fake
        if host not in KNOWN_HOSTS or host in fake.unreachable or port != "443":
            self._refuse(host)
            return
        with fake._lock:
            fake.connects.append(host)
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.close_connection = True
        fake._tunnel(self.connection, self.client_address, host)

    def _refuse(self, host: str) -> None:
        self.server.fake._record(LogEntry(time.time(), host, self.command, "", {}, 502, 0, False))
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_GET(self) -> None:  # plain-HTTP proxying is refused, never forwarded
        self._refuse(urlsplit(self.path).hostname or "")

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET


class _TunnelHandler(BaseHTTPRequestHandler):
    """Serves HTTP/1.1 requests arriving inside one TLS tunnel."""

    protocol_version = "HTTP/1.1"
    timeout = 60

    def __init__(self, sock: Any, addr: Any, server: Any, host: str, fake: FakeGarmin) -> None:
        self.tunnel_host = host
        self.fake = fake
        super().__init__(sock, addr, server)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.fake._serve(self)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(handler.rfile.readline().split(b";")[0], 16):
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


# --------------------------------------------------------------------------- the fake


class FakeGarmin:
    """The fake service: state, faults, request log, and the proxy serving them."""

    def __init__(self, ca: trustme.CA | None = None) -> None:
        self.ca = ca or trustme.CA()
        self._lock = threading.RLock()
        self.activities: list[dict[str, Any]] = []
        self.originals: dict[int, tuple[bytes, str]] = {}
        self.email = "runner@example.com"
        self.password = "correct horse battery staple"  # noqa: S105
        self.mfa_code: str | None = None
        self.client_id = DI_CLIENT_ID
        self.access_token = make_jwt(self.client_id, exp=time.time() + 365 * 86400)
        self.refresh_token = secrets.token_urlsafe(32)
        self.access_expired = False
        self.on_request: Callable[[str, str, dict[str, str]], None] | None = None
        self.strava: Any = None  # a fake_strava.FakeStrava answers www.strava.com when set
        self.pings: Any = None  # a fake_ping.FakePings answers hc-ping.com when set
        self.unreachable: set[str] = set()  # hosts the proxy answers 502 for, like a DNS failure
        # Garmin's count minus what its list holds. Whether the count takes in multisport
        # legs, or items the list shows without a usable id, is not documented: tests set
        # it either way (negative: the list holds more than the count says).
        self.count_extra = 0
        self.multisport: dict[int, list[tuple[int, bytes]]] = {}  # parent id -> legs
        self.connects: list[str] = []  # the host of every tunnel opened through the proxy
        self.log: list[LogEntry] = []
        self.errors: list[str] = []  # exceptions inside the fake itself (bugs, not faults)
        self._rules: list[_Rule] = []
        self._tickets: set[str] = set()
        self._mfa_pending = False
        self._stopping = threading.Event()
        self._conns: set[Any] = set()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*KNOWN_HOSTS).configure_cert(self._tls)
        self._tls.set_alpn_protocols(["http/1.1"])

    # -- lifecycle

    def start(self) -> FakeGarmin:
        """Listen on 127.0.0.1:<ephemeral> and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, drop open connections and free the port."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGarmin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def proxy_port(self) -> int:
        assert self._server is not None, "FakeGarmin is not started"
        return self._server.server_address[1]

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    # -- state

    def add_activity(
        self, activity: dict[str, Any], original: bytes | None = None, ext: str = "fit"
    ) -> int:
        """Add an activity, with its original file (None: no file, like a manual entry)."""
        with self._lock:
            self.activities.append(activity)
            if original is not None:
                self.originals[activity["activityId"]] = (original, ext)
        return activity["activityId"]

    def add_multisport(
        self, parent: dict[str, Any], legs: list[tuple[dict[str, Any], bytes]], list_legs: bool
    ) -> int:
        """Add a multisport activity (triathlon, duathlon, brick) with its legs, each a child
        activity with its own id and FIT file. As garmin-health-data#72 found on a real
        triathlon: the parent is listed with typeKey multi_sport, its legs' ids in childIds;
        the legs are not listed on their own (list_legs=True lists them too, with a
        parentId, in case Garmin does for some accounts). The original of the parent, and of
        any leg, is one zip holding one FIT file per leg, in leg order."""
        child_ids = [leg["activityId"] for leg, _ in legs]
        parent.update(isMultiSportParent=True, parent=True, childIds=child_ids)
        with self._lock:
            self.activities.append(parent)
            self.multisport[parent["activityId"]] = [(leg["activityId"], fit) for leg, fit in legs]
            for leg, _ in legs:
                leg.update(parentId=parent["activityId"], isMultiSportParent=False)
                if list_legs:
                    self.activities.append(leg)
        return parent["activityId"]

    def multisport_zip(self, activity_id: int) -> bytes | None:
        """The original Garmin serves for a multisport parent or one of its legs."""
        with self._lock:
            for parent_id, legs in self.multisport.items():
                if activity_id == parent_id or activity_id in (i for i, _ in legs):
                    return zip_of_members([(f"{i}_ACTIVITY.fit", fit) for i, fit in legs])
        return None

    def tunnels_to(self, host: str) -> int:
        """How many TLS connections clients opened to this host."""
        with self._lock:
            return self.connects.count(host)

    def remove_activity(self, activity_id: int) -> None:
        with self._lock:
            self.activities = [a for a in self.activities if a["activityId"] != activity_id]
            self.originals.pop(activity_id, None)

    def original(self, activity_id: int) -> bytes | None:
        with self._lock:
            entry = self.originals.get(activity_id)
        return entry[0] if entry else None

    def add_fault(
        self, path_regex: str, action: Fault, times: int | None = 1, host: str | None = None
    ) -> None:
        """Apply `action` to the next `times` requests (None: all) whose path matches."""
        with self._lock:
            self._rules.append(_Rule(re.compile(path_regex), action, times, host))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def expire_access_token(self) -> None:
        """Make the current access token answer 401, so the client must refresh."""
        with self._lock:
            self.access_expired = True

    def seed_tokens(self, dirpath: str | os.PathLike[str], exp: float | None = None) -> Path:
        """Write garmin_tokens.json (0600, dir 0700) for the current tokens.

        With `exp` (Unix time) the access token is first reissued with that expiry.
        """
        with self._lock:
            if exp is not None:
                self.access_token = make_jwt(self.client_id, exp=exp)
            tokens = {
                "di_token": self.access_token,
                "di_refresh_token": self.refresh_token,
                "di_client_id": self.client_id,
            }
        directory = Path(dirpath)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        path = directory / "garmin_tokens.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(tokens, fh)
        path.chmod(0o600)
        return path

    # -- log

    def requests_to(self, path_prefix: str, host: str | None = None) -> list[LogEntry]:
        """Logged requests whose path starts with `path_prefix` (and on `host`, if given)."""
        with self._lock:
            return [
                e
                for e in self.log
                if e.path.startswith(path_prefix) and (host is None or e.host == host)
            ]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    @property
    def bytes_sent(self) -> int:
        """Total bytes written to clients (status lines, headers and bodies)."""
        with self._lock:
            return sum(e.bytes_sent for e in self.log)

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self.log.append(entry)

    # -- connection handling

    def _tunnel(self, raw: socket.socket, addr: Any, host: str) -> None:
        """Terminate TLS on a CONNECTed socket and serve requests until it closes."""
        with self._lock:
            self._conns.add(raw)
        try:
            raw.settimeout(10)
            tls = self._tls.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return  # e.g. the client rejected our certificate
        finally:
            with self._lock:
                self._conns.discard(raw)
        with self._lock:
            self._conns.add(tls)
        try:
            _TunnelHandler(tls, addr, self._server, host, self)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._conns.discard(tls)
            tls.close()

    def _serve(self, h: _TunnelHandler) -> None:
        """Answer one request: hook, fault rule, then the app."""
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        req = Request(h.tunnel_host, h.command, url.path, query, h.headers, _read_body(h))
        if self.on_request is not None:
            try:
                self.on_request(req.host, req.path, req.query)
            except Exception as err:  # a bug in the test's hook: report it, carry on
                with self._lock:
                    self.errors.append(f"on_request hook: {err!r}")
        auth_ok = self._auth_ok(req)
        fault = self._take_fault(req)
        entry = LogEntry(time.time(), req.host, req.method, req.path, query, None, 0, auth_ok)
        entry.fault = fault.kind if fault else None
        self._record(entry)  # logged before answering, so a client never outruns the log
        if fault is not None and fault.kind == "reset" and fault.fraction < 0:
            self._reset(h)
            return
        if fault is not None and fault.kind in ("status", "body"):
            reply = Reply(fault.status, fault.body, fault.content_type or "", fault.headers)
            if not reply.content_type:
                looks_json = fault.body.lstrip()[:1] in (b"{", b"[")
                reply.content_type = "application/json" if looks_json else "text/html"
        else:
            reply = self._app_safely(req)
        entry.status = reply.status
        self._send(h, reply, fault, entry)

    def _app_safely(self, req: Request) -> Reply:
        try:
            return self._app(req)
        except Exception as err:  # a bug in the fake: report it, answer 500
            with self._lock:
                self.errors.append(f"{req.method} {req.host}{req.path}: {err!r}")
            return json_reply({"message": "fake_garmin internal error"}, 500)

    def _take_fault(self, req: Request) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining == 0 or (rule.host and rule.host != req.host):
                    continue
                if rule.pattern.search(req.path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.action
        return None

    def _send(self, h: _TunnelHandler, reply: Reply, fault: Fault | None, entry: LogEntry) -> None:
        """Write `reply`, shaped by a cut/trickle fault; count bytes into `entry`."""
        try:
            reason = HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body))}
        payload = b"" if h.command == "HEAD" else reply.body
        if reply.chunked:
            del headers["Content-Length"]
            headers["Transfer-Encoding"] = "chunked"
            payload = chunked_body(payload)
        headers.update(reply.headers)
        if h.close_connection or (fault and fault.kind == "cut"):
            headers["Connection"] = "close"
        lines = [f"HTTP/1.1 {reply.status} {reason}", "Server: fake-garmin"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if not fault or fault.kind not in ("cut", "reset", "trickle"):
                self._write(h, head + payload, entry)  # one write: no Nagle/delayed-ACK stall
                return
            self._write(h, head, entry)
            if fault.kind == "trickle":
                self._trickle(h, payload, fault.rate, entry)
                return
            self._write(h, payload[: int(len(payload) * fault.fraction)], entry)
            h.close_connection = True
            if fault.kind == "reset":
                h.wfile.flush()
                self._reset(h)
        except OSError:
            h.close_connection = True

    @staticmethod
    def _reset(h: _TunnelHandler) -> None:
        """Close the tunnel's socket with an RST (SO_LINGER 0) instead of a FIN."""
        linger = struct.pack("ii", 1, 0)
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        h.close_connection = True
        h.connection.close()

    @staticmethod
    def _write(h: _TunnelHandler, data: bytes, entry: LogEntry) -> None:
        entry.bytes_sent += len(data)  # counted first: the client may read before we return
        h.wfile.write(data)

    def _trickle(self, h: _TunnelHandler, payload: bytes, rate: float, entry: LogEntry) -> None:
        step = max(1, int(rate / 20))
        for i in range(0, len(payload), step):
            if i:
                time.sleep(step / rate)
            if self._stopping.is_set():
                h.close_connection = True
                return
            self._write(h, payload[i : i + step], entry)

    # -- the services

    def _auth_ok(self, req: Request) -> bool:
        with self._lock:
            expected = f"Bearer {self.access_token}"
            return not self.access_expired and req.headers.get("Authorization") == expected

    def _app(self, req: Request) -> Reply:
        if req.host == "connectapi.garmin.com":
            return self._connectapi(req)
        if req.host == "diauth.garmin.com":
            return self._diauth(req)
        if req.host == "sso.garmin.com":
            return self._sso(req)
        if req.host == "www.strava.com" and self.strava is not None:
            return self.strava.handle(req)
        if req.host == "hc-ping.com" and self.pings is not None:
            return self.pings.handle(req)
        return json_reply({"message": "Not Found"}, 404)

    def _connectapi(self, req: Request) -> Reply:
        if not self._auth_ok(req):
            return json_reply({"message": "Unauthorized", "error": "InvalidTokenException"}, 401)
        path = req.path
        if req.method != "GET":
            return json_reply({"message": "Method Not Allowed"}, 405)
        if path == "/activitylist-service/activities/search/activities":
            return self._search(req.query)
        if path == "/activitylist-service/activities/count":
            return self._count()
        if m := re.fullmatch(r"/download-service/files/activity/(\d+)", path):
            return self._download(int(m.group(1)))
        if m := re.fullmatch(r"/download-service/export/(gpx|tcx)/activity/(\d+)", path):
            return self._export(m.group(1), int(m.group(2)))
        if path == "/activity-service/activity/activityTypes":
            return json_reply(activity_type_table())
        if path == "/userprofile-service/socialProfile":
            return json_reply(self._social_profile())
        if path == "/userprofile-service/userprofile/user-settings":
            return json_reply(self._user_settings())
        return json_reply({"message": f"No handler for {path}"}, 404)

    def _search(self, query: dict[str, str]) -> Reply:
        try:
            start = int(query.get("start", "0"))
            limit = int(query.get("limit", "20"))
        except ValueError:
            return json_reply({"message": "start and limit must be integers"}, 400)
        if start < 0 or limit < 0 or limit > 1000:
            return json_reply({"message": "limit must be between 0 and 1000"}, 400)
        first, last = query.get("startDate"), query.get("endDate")
        kind = query.get("activityType")
        with self._lock:
            found = [
                a
                for a in self.activities
                if (not first or a["startTimeLocal"][:10] >= first)
                and (not last or a["startTimeLocal"][:10] <= last)
                and (not kind or _type_matches(a, kind))
            ]
            found = json.loads(json.dumps(found))  # a snapshot, safe from later mutation
        found.sort(key=_sort_key, reverse=query.get("sortOrder", "desc").lower() != "asc")
        return json_reply(found[start : start + limit])

    def _count(self) -> Reply:
        with self._lock:
            acts = list(self.activities)
        return json_reply(
            {
                "totalCount": len(acts) + self.count_extra,
                "totalDistance": round(sum(a.get("distance") or 0 for a in acts), 1),
                "totalDuration": round(sum(a.get("duration") or 0 for a in acts), 3),
                "totalCalories": round(sum(a.get("calories") or 0 for a in acts), 1),
            }
        )

    def _download(self, activity_id: int) -> Reply:
        """The original as a zip. Garmin's real answer has no Content-Length: it comes chunked
        (python-garminconnect's recorded cassettes of connectapi answers)."""
        with self._lock:
            entry = self.originals.get(activity_id)
            known = any(a["activityId"] == activity_id for a in self.activities)
        zipped = self.multisport_zip(activity_id)
        if zipped is None and entry is not None and known:
            data, ext = entry
            zipped = zip_of(f"{activity_id}_ACTIVITY.{ext}", data)
        if zipped is None:
            return json_reply({"message": f"Activity {activity_id} has no original file"}, 404)
        disposition = {"Content-Disposition": f'attachment; filename="{activity_id}.zip"'}
        return Reply(200, zipped, ZIP_TYPE, disposition, chunked=True)

    def _export(self, fmt: str, activity_id: int) -> Reply:
        """Garmin's GPX or TCX export: the XML document itself (not zipped), made from the
        activity's recording; 404 when there is no recording (a manual entry)."""
        with self._lock:
            act = next((a for a in self.activities if a["activityId"] == activity_id), None)
            recorded = activity_id in self.originals or activity_id in self.multisport
        if act is None or act.get("manualActivity") or not recorded:
            return json_reply({"message": f"Activity {activity_id} has no track to export"}, 404)
        if fmt == "gpx":
            start = datetime.fromisoformat(act["startTimeGMT"])
            # Garmin writes its own GPX (creator "Garmin Connect"), even of a GPX upload
            doc = gpx_document(start).replace(b'"fake_garmin"', b'"Garmin Connect"', 1)
            return Reply(200, doc, "application/gpx+xml")
        doc = tcx_document(act["startTimeLocal"]).encode()
        return Reply(200, doc, "application/vnd.garmin.tcx+xml")

    def _social_profile(self) -> dict[str, Any]:
        return {
            "id": 71234567,
            "profileId": OWNER_ID,
            "garminGUID": "0e0f0a0b-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "displayName": DISPLAY_NAME,
            "fullName": "Fake Runner",
            "userName": self.email,
            "location": None,
            "profileVisibility": "private",
            "activityStartVisibility": "private",
            "userLevel": 3,
        }

    def _user_settings(self) -> dict[str, Any]:
        return {
            "id": OWNER_ID,
            "userData": {
                "gender": "FEMALE",
                "weight": 61000.0,
                "height": 168.0,
                "timeFormat": "time_twenty_four_hr",
                "birthDate": "1990-04-01",
                "measurementSystem": "metric",
                "firstDayOfWeek": {"dayId": 2, "dayName": "monday", "isPossibleFirstDay": True},
            },
            "userSleep": {"sleepTime": 79200, "wakeTime": 23400, "defaultSleepTime": False},
            "connectDate": None,
            "sourceType": None,
        }

    def _issue_tokens(self, client_id: str) -> Reply:
        with self._lock:
            self.client_id = client_id
            self.access_token = make_jwt(client_id)
            self.refresh_token = secrets.token_urlsafe(32)
            self.access_expired = False
            tokens = {
                "scope": "CONNECT_READ CONNECT_WRITE",
                "jti": secrets.token_hex(16),
                "access_token": self.access_token,
                "token_type": "bearer",
                "refresh_token": self.refresh_token,
                "expires_in": 86399,
                "refresh_token_expires_in": 7775999,
            }
        return json_reply(tokens)

    def _diauth(self, req: Request) -> Reply:
        if req.method != "POST" or req.path != "/di-oauth2-service/oauth/token":
            return json_reply({"message": "Not Found"}, 404)
        form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
        grant = form.get("grant_type")
        client_id = form.get("client_id") or self.client_id
        if grant == "refresh_token":
            with self._lock:
                valid = secrets.compare_digest(form.get("refresh_token", ""), self.refresh_token)
            if valid:
                return self._issue_tokens(client_id)
            return json_reply({"error": "invalid_grant", "error_description": "bad token"}, 401)
        if grant == SERVICE_TICKET_GRANT:
            with self._lock:
                ticket = form.get("service_ticket", "")
                valid = ticket in self._tickets
                self._tickets.discard(ticket)
            if valid:
                return self._issue_tokens(client_id)
            return json_reply({"error": "invalid_grant", "error_description": "bad ticket"}, 400)
        return json_reply({"error": "unsupported_grant_type"}, 400)

    def _new_ticket(self) -> dict[str, Any]:
        ticket = f"ST-{random.randint(1_000_000, 9_999_999)}-{secrets.token_hex(10)}-cas"
        with self._lock:
            self._tickets.add(ticket)
        return {"responseStatus": {"type": "SUCCESSFUL"}, "serviceTicketId": ticket}

    def _sso(self, req: Request) -> Reply:
        if req.path.startswith(BLOCKED_SSO_PATHS):
            html = b"<html><head><title>Just a moment...</title></head><body></body></html>"
            return Reply(429, html, "text/html; charset=UTF-8", {"Retry-After": "60"})
        if req.method != "POST":
            return json_reply({"message": "Not Found"}, 404)
        try:
            sent = json.loads(req.body or b"{}")
        except ValueError:
            return json_reply({"message": "Bad Request"}, 400)
        if req.path == "/mobile/api/login":
            return self._login(sent)
        if req.path in ("/mobile/api/mfa/verifyCode", "/portal/api/mfa/verifyCode"):
            return self._verify_mfa(sent)
        return json_reply({"message": "Not Found"}, 404)

    def _login(self, sent: dict[str, Any]) -> Reply:
        with self._lock:
            ok = sent.get("username") == self.email and sent.get("password") == self.password
            mfa = self.mfa_code
            self._mfa_pending = ok and mfa is not None
        if not ok:
            return json_reply({"responseStatus": {"type": "INVALID_USERNAME_PASSWORD"}})
        if mfa is not None:
            info = {"mfaLastMethodUsed": "email", "email": "r***@example.com"}
            return json_reply({"responseStatus": {"type": "MFA_REQUIRED"}, "customerMfaInfo": info})
        return json_reply(self._new_ticket())

    def _verify_mfa(self, sent: dict[str, Any]) -> Reply:
        with self._lock:
            ok = self._mfa_pending and str(sent.get("mfaVerificationCode")) == self.mfa_code
            if ok:
                self._mfa_pending = False
        if not ok:
            return json_reply({"responseStatus": {"type": "INVALID_MFA_CODE"}})
        return json_reply(self._new_ticket())


# --------------------------------------------------------------------------- accounts

# (file under fit/, activityId, session start UTC, hours east of UTC, typeKey) per fit/README.md
REAL_FIT = (
    ("12129115726_ACTIVITY.fit", 12129115726, "2023-09-29 00:10:57", -4, "running"),
    ("20170518-191602-1740899583.fit", 1740899583, "2017-05-18 16:37:30", -4, "running"),
    ("garmin-fenix-5-run.fit", 1761234567, "2017-06-11 14:34:09", 2, "running"),
    ("garmin-edge-820-bike.fit", 1763456789, "2017-06-12 16:10:15", 2, "road_biking"),
    ("2013-02-06-12-11-14.fit", 270412345, "2013-02-06 12:11:14", 0, "running"),
    ("activity-small-fenix2-run.fit", 870123456, "2015-08-15 14:45:08", 2, "running"),
)
# (file under tcx/, activityId, local start, hours east of UTC) per tcx/README.md
REAL_TCX = (
    ("activity_196389836_2012-07-03_22-31-14.tcx", 196389836, "2012-07-03 22:31:14", 0),
    ("activity_196389845_2012-07-06_14-52-10.tcx", 196389845, "2012-07-06 14:52:10", -4),
)
GPX_ID, GPX_START_UTC = 2634567890, datetime(2018, 4, 21, 8, 15, 0)
MANUAL_ID, MANUAL_START_LOCAL = 3345678901, datetime(2019, 1, 15, 18, 30, 0)


def load_real_account(fake: FakeGarmin, fixtures: Path) -> list[int]:
    """Load 6 real FIT, 2 TCX, 1 GPX and 1 manual activity; return ids, newest first."""
    for name, aid, start_utc, offset, kind in REAL_FIT:
        local = datetime.fromisoformat(start_utc) + timedelta(hours=offset)
        act = make_activity(aid, local, kind, gmt_offset_hours=offset)
        fake.add_activity(act, (fixtures / "fit" / name).read_bytes(), "fit")
    for name, aid, local, offset in REAL_TCX:
        start = datetime.fromisoformat(local)
        act = make_activity(aid, start, "running", gmt_offset_hours=offset)
        fake.add_activity(act, (fixtures / "tcx" / name).read_bytes(), "tcx")
    gpx_local = GPX_START_UTC + timedelta(hours=2)
    hike = make_activity(GPX_ID, gpx_local, "hiking", name="Eiger trail", gmt_offset_hours=2)
    fake.add_activity(hike, gpx_document(GPX_START_UTC), "gpx")
    gym = make_activity(MANUAL_ID, MANUAL_START_LOCAL, "strength_training", manual=True)
    fake.add_activity(gym, None)
    added = {aid for _, aid, *_ in REAL_FIT + REAL_TCX} | {GPX_ID, MANUAL_ID}
    acts = sorted((a for a in fake.activities if a["activityId"] in added), key=_sort_key)
    return [a["activityId"] for a in reversed(acts)]


def add_many_activities(
    fake: FakeGarmin,
    n: int,
    first_id: int = 15_000_000_000,
    newest: datetime = datetime(2024, 6, 1, 7, 30),
) -> list[int]:
    """Add n synthetic runs, about one a day going back from `newest`; return ids newest first.

    Ids grow with time like real ones: the newest activity has id `first_id + n - 1`.
    Each original is `synthetic_fit(id)`.
    """
    ids = []
    for i in range(n):
        aid = first_id + n - 1 - i
        start = newest - timedelta(days=i, minutes=(aid * 37) % 180)
        fake.add_activity(make_activity(aid, start, "running"), synthetic_fit(aid), "fit")
        ids.append(aid)
    return ids
