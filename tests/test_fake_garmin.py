"""The fake Garmin Connect itself: it must behave like the real service to real clients."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zipfile
from pathlib import Path

import pytest
import requests
from fake_garmin import (
    FakeGarmin,
    body,
    cut,
    fit_crc,
    reset,
    status,
    synthetic_fit,
    trickle,
)
from garminconnect.client import Client
from garminconnect.exceptions import GarminConnectAuthenticationError

API = "https://connectapi.garmin.com"
SEARCH = "/activitylist-service/activities/search/activities"


def get(fake: FakeGarmin, path: str, **kwargs) -> requests.Response:
    """GET from connectapi with the fake's current token (proxy and CA come from proxy_env)."""
    headers = {"Authorization": f"Bearer {fake.access_token}"}
    return requests.get(API + path, headers=headers, timeout=10, **kwargs)


def client_for(fake: FakeGarmin, tmp_path: Path) -> Client:
    client = Client()
    client.load(str(fake.seed_tokens(tmp_path / "tokens")))
    return client


def test_listing_paging_filters_and_order(garmin, real_account, proxy_env):
    listed = get(garmin, SEARCH, params={"start": 0, "limit": 100}).json()
    assert [a["activityId"] for a in listed] == real_account
    assert 1500 <= len(json.dumps(listed[0])) <= 3000
    page = get(garmin, SEARCH, params={"start": 2, "limit": 3}).json()
    assert [a["activityId"] for a in page] == real_account[2:5]
    oldest = get(garmin, SEARCH, params={"sortOrder": "asc", "limit": 1}).json()
    assert oldest[0]["activityId"] == real_account[-1]
    dated = get(garmin, SEARCH, params={"startDate": "2017-05-18", "endDate": "2017-06-11"})
    assert [a["activityId"] for a in dated.json()] == [1761234567, 1740899583]
    rides = get(garmin, SEARCH, params={"activityType": "cycling"}).json()
    assert [a["activityId"] for a in rides] == [1763456789]
    assert get(garmin, SEARCH, params={"limit": 1001}).status_code == 400
    assert get(garmin, "/activitylist-service/activities/count").json()["totalCount"] == 10


def test_download_serves_zipped_original(garmin, real_account, proxy_env):
    r = get(garmin, "/download-service/files/activity/196389836")
    assert r.headers["Content-Type"] == "application/x-zip-compressed"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        (info,) = zf.infolist()
        assert info.filename == "196389836_ACTIVITY.tcx"
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert zf.read(info) == garmin.original(196389836)
    assert get(garmin, "/download-service/files/activity/3345678901").status_code == 404  # manual
    assert get(garmin, "/download-service/files/activity/1").status_code == 404


def test_synthetic_fit_is_well_formed():
    data = synthetic_fit(42)
    assert data[8:12] == b".FIT" and data[0] == 14
    assert struct.unpack("<H", data[12:14])[0] == fit_crc(data[:12])
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 16
    assert fit_crc(data) == 0  # trailing file CRC checks out
    assert synthetic_fit(42) == data != synthetic_fit(43)


def test_unauthorized_and_unknown_host(garmin, proxy_env):
    r = requests.get(API + SEARCH, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401
    garmin.expire_access_token()
    assert get(garmin, SEARCH).status_code == 401
    with pytest.raises(requests.exceptions.ProxyError, match="502"):
        requests.get("https://example.com/", timeout=10)
    assert garmin.log[-1].method == "CONNECT" and garmin.log[-1].status == 502


def test_faults(garmin, many_activities, proxy_env):
    ids = many_activities(3)
    path = f"/download-service/files/activity/{ids[0]}"
    garmin.add_fault("^/download-service/", status(429, {"Retry-After": "7"}), times=2)
    assert [get(garmin, path).status_code for _ in range(3)] == [429, 429, 200]
    garmin.add_fault(SEARCH, body(b"<html>maintenance</html>", content_type="text/html"))
    assert get(garmin, SEARCH).text == "<html>maintenance</html>"
    garmin.add_fault("^/download-service/", cut(0.5))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(garmin, path)
    garmin.add_fault("^/download-service/", reset())
    with pytest.raises(requests.exceptions.ConnectionError):
        get(garmin, path)
    size = len(get(garmin, path).content)
    garmin.add_fault("^/download-service/", trickle(size * 4))
    started = time.monotonic()
    assert len(get(garmin, path).content) == size
    assert time.monotonic() - started >= 0.2
    assert [e.fault for e in garmin.requests_to("/download-service/")] == [
        "status", "status", None, "cut", "reset", None, "trickle",
    ]  # fmt: skip


def test_on_request_hook_sees_each_page(garmin, many_activities, proxy_env):
    many_activities(5)
    seen = []
    garmin.on_request = lambda host, path, query: seen.append((host, path, query.get("start")))
    get(garmin, SEARCH, params={"start": 2, "limit": 2})
    assert seen == [("connectapi.garmin.com", SEARCH, "2")]


def test_client_refreshes_expired_token_via_curl_cffi(garmin, many_activities, proxy_env, tmp_path):
    ids = many_activities(2)
    client = client_for(garmin, tmp_path)
    old_refresh = garmin.refresh_token
    garmin.expire_access_token()
    listed = client.connectapi(SEARCH, params={"start": 0, "limit": 5})
    assert [a["activityId"] for a in listed] == ids
    assert client.di_token == garmin.access_token
    assert client.di_refresh_token == garmin.refresh_token != old_refresh
    saved = json.loads((tmp_path / "tokens" / "garmin_tokens.json").read_text())
    assert saved["di_refresh_token"] == garmin.refresh_token  # the client saved the rotation
    assert [e.status for e in garmin.requests_to("/di-oauth2-service/")] == [200]
    stale = requests.post(
        "https://diauth.garmin.com/di-oauth2-service/oauth/token",
        data={"grant_type": "refresh_token", "client_id": "x", "refresh_token": old_refresh},
        timeout=10,
    )
    assert stale.status_code == 401  # rotated: the old refresh token is dead
    zipped = client.download(f"/download-service/files/activity/{ids[1]}")
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        assert zf.read(f"{ids[1]}_ACTIVITY.fit") == synthetic_fit(ids[1])


@pytest.mark.parametrize("mfa", [None, "123456"])
def test_client_login_first_strategy(garmin, proxy_env, mfa):
    garmin.mfa_code = mfa
    client = Client()
    client.login(garmin.email, garmin.password, prompt_mfa=lambda: mfa)
    assert client.di_token == garmin.access_token
    assert client.connectapi("/userprofile-service/socialProfile")["displayName"]
    hosts = {e.host for e in garmin.log}
    assert hosts == {"sso.garmin.com", "diauth.garmin.com", "connectapi.garmin.com"}
    printable = repr(garmin.log)
    assert garmin.password not in printable and garmin.access_token not in printable


def test_client_login_rejections(garmin, proxy_env):
    with pytest.raises(GarminConnectAuthenticationError):
        Client().login(garmin.email, "wrong password")
    garmin.mfa_code = "123456"
    with pytest.raises(GarminConnectAuthenticationError):
        Client().login(garmin.email, garmin.password, prompt_mfa=lambda: "000000")


def test_seed_tokens_modes(garmin, tmp_path):
    path = garmin.seed_tokens(tmp_path / "state" / "garminsync")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads(path.read_text())["di_token"] == garmin.access_token


def test_stop_frees_port_promptly(ca, proxy_env):
    fake = FakeGarmin(ca).start()
    port = fake.proxy_port
    session = requests.Session()  # keeps an idle keep-alive tunnel open
    session.proxies = {"https": fake.proxy_url}
    session.get(API + SEARCH, timeout=10)
    fake.stop()  # does not wait for the idle tunnel to close by itself
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
