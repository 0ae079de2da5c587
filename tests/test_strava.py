"""Strava uploads (issue 5): opt-in, once per activity, never older than the start date,
duplicates recorded and skipped, rotating tokens never lost, rate limits respected."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import sys
import time
import urllib.request
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import SCRIPT
from fake_garmin import cut, make_activity, status, synthetic_fit, trickle
from helpers import manifest, saved_files, wait_for

UPLOADS = "/api/v3/uploads"
# add_today's activities are today's; a run that starts after midnight must still take them.
SINCE_YESTERDAY = ("--strava-since", (date.today() - timedelta(days=1)).isoformat())


def strava_requests(garmin) -> list:
    return [e for e in garmin.log if e.host == "www.strava.com"]


def strava_of(dest: Path, activity_id: int) -> dict:
    return manifest(dest)["activities"][str(activity_id)].get("strava") or {}


def add_today(garmin, activity_id: int, hours_ago: int = 1) -> None:
    """Add an activity started earlier today, local time, even just after midnight."""
    now = datetime.now().replace(microsecond=0)
    start = now - timedelta(hours=hours_ago)
    if start.date() != now.date():  # keep it today and keep the order: older still first
        midnight = datetime.combine(now.date(), datetime.min.time())
        start = midnight + timedelta(seconds=60 - hours_ago)
    garmin.add_activity(
        make_activity(activity_id, start, name=f"Run {activity_id}"), synthetic_fit(activity_id)
    )


def test_first_upload_sends_each_file_once_with_a_stable_external_id(
    garmin, real_account, strava, run, bare_env, dest
):
    result = run(
        "--missing",
        "--strava",
        "--strava-since",
        "2010-01-01",
        "--dest",
        dest,
        env=bare_env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    uploads = {u.external_id: u for u in strava.uploads.values()}
    assert sorted(uploads) == sorted(f"garmin_{i}" for i in saved_files(dest))
    assert uploads["garmin_196389836"].data_type == "tcx"
    assert uploads["garmin_2634567890"].data_type == "gpx"
    assert uploads["garmin_2634567890"].name == "Eiger trail"
    assert (
        uploads["garmin_12129115726"].digest
        == hashlib.sha256(garmin.original(12129115726)).hexdigest()
    )
    record = strava_of(dest, 12129115726)
    assert record["status"] == "uploaded" and record["activity_id"] and record["upload_id"]


def test_nothing_is_uploaded_twice_and_a_quiet_run_asks_strava_nothing(
    garmin, strava, run, bare_env, dest
):
    add_today(garmin, 50_000_000_012)
    add_today(garmin, 50_000_000_013, hours_ago=2)
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    garmin.clear_log()
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert strava_requests(garmin) == []
    assert len(strava.uploads) == 2


def test_without_a_start_date_only_activities_from_the_day_uploads_began_go_up(
    garmin, real_account, strava, run, bare_env, dest
):
    day_before_run = datetime.now().date().isoformat()
    result = run("--strava", "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert strava_requests(garmin) == [] and not strava.uploads
    day_after_run = datetime.now().date().isoformat()
    assert manifest(dest)["strava_since"] in {day_before_run, day_after_run}
    add_today(garmin, 50_000_000_001)
    result = run("--strava", "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert [u.external_id for u in strava.uploads.values()] == ["garmin_50000000001"]


def test_the_environment_switch_enables_uploads_like_the_flag(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_002)
    result = run(*SINCE_YESTERDAY, "--dest", dest, env={**bare_env, "GARMINSYNC_STRAVA": "1"})
    assert result.returncode == 0, result.stderr
    assert len(strava.uploads) == 1


def test_a_duplicate_is_recorded_with_its_activity_and_never_tried_again(
    garmin, strava, run, bare_env, dest
):
    add_today(garmin, 50_000_000_014, hours_ago=3)
    add_today(garmin, 50_000_000_015)
    strava.existing[hashlib.sha256(garmin.original(50_000_000_014)).hexdigest()] = 777
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    record = strava_of(dest, 50_000_000_014)
    assert record["status"] == "duplicate" and record["activity_id"] == 777
    assert strava_of(dest, 50_000_000_015)["status"] == "uploaded"  # went on with the rest
    garmin.clear_log()
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    assert strava_requests(garmin) == []


def test_a_processing_error_is_recorded_failed_and_retried_next_run(
    garmin, strava, run, bare_env, dest
):
    add_today(garmin, 50_000_000_003)
    strava.broken_files.add("garmin_50000000003")
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 1
    record = strava_of(dest, 50_000_000_003)
    assert record["status"] == "failed" and "corrupt" in record["error"]
    strava.broken_files.clear()
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    assert strava_of(dest, 50_000_000_003)["status"] == "uploaded"


def test_polls_wait_at_least_a_second_between_them(garmin, strava, run, bare_env, dest):
    strava.polls_until_ready = 2
    add_today(garmin, 50_000_000_004)  # polled: processing, processing, ready
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    polls = [e.time for e in strava_requests(garmin) if e.method == "GET"]
    assert len(polls) == 3
    assert all(b - a >= 0.95 for a, b in zip(polls, polls[1:], strict=False))


def test_a_kill_right_after_a_token_refresh_does_not_lose_the_rotated_token(
    garmin, strava, run, bare_env, dest
):
    add_today(garmin, 50_000_000_005)
    run("--dest", dest, env=bare_env)  # downloads; Strava not yet enabled
    store = Path(bare_env["GARMINTOKENS"])
    (store / "strava_tokens.json").write_text(strava.token_file(expires_at=int(time.time())))
    old_refresh = strava.refresh_token
    garmin.add_fault(f"^{UPLOADS}$", trickle(50), times=1)  # the upload hangs after the refresh
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--strava-only",
            "--strava-since",
            "2000-01-01",
            "--dest",
            str(dest),
        ],
        env=bare_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: [e for e in strava_requests(garmin) if e.path == UPLOADS])
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert strava.refresh_token != old_refresh  # rotated: the old one no longer works
    saved = json.loads((store / "strava_tokens.json").read_text())
    assert saved["refresh_token"] == strava.refresh_token
    result = run("--strava-only", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert strava_of(dest, 50_000_000_005)["status"] == "uploaded"


def test_uploads_stop_with_75_before_a_rate_limit_window_is_used_up(
    garmin, real_account, strava, run, bare_env, dest
):
    strava.usage = [185, 185]  # of 200 per 15 minutes
    result = run(
        "--strava", "--strava-since", "2010-01-01", "--dest", dest, env=bare_env, timeout=120
    )
    assert result.returncode == 75
    assert "rate limit" in result.stderr
    assert strava.usage[0] <= 200 and not [e for e in garmin.log if e.status == 429]
    uploaded = [i for i in saved_files(dest) if strava_of(dest, i).get("status") == "uploaded"]
    assert 0 < len(uploaded) < 9
    assert len(saved_files(dest)) == 9  # the Garmin step was not held back


def test_a_429_from_strava_stops_uploads_with_75(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_006)
    strava.usage = [200, 200]
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 75
    assert "HTTP 429" in result.stderr
    assert strava_of(dest, 50_000_000_006) == {}  # not counted as an attempt


def test_revoked_authorisation_exits_3_after_the_garmin_step(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_007)
    strava.revoked = True
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 3
    assert "--strava-login" in result.stderr
    assert 50_000_000_007 in saved_files(dest)


def test_an_upload_cut_short_while_processing_is_looked_at_next_run_not_sent_again(
    garmin, strava, run, bare_env, dest
):
    strava.polls_until_ready = 1
    add_today(garmin, 50_000_000_016)
    garmin.add_fault(f"^{UPLOADS}/", status(429, {"Retry-After": "900"}), times=1)  # first poll
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 75
    assert strava_of(dest, 50_000_000_016)["status"] == "processing"
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert len([e for e in strava_requests(garmin) if e.method == "POST"]) == 1
    assert strava_of(dest, 50_000_000_016)["status"] == "uploaded"


def test_a_strava_outage_never_blocks_the_garmin_step(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_008)
    garmin.unreachable.add("www.strava.com")
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 75
    assert "Strava is unreachable" in result.stderr
    assert 50_000_000_008 in saved_files(dest)
    assert manifest(dest)["activities"]["50000000008"]["status"] == "downloaded"


def test_strava_only_asks_garmin_nothing(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_009)
    run("--dest", dest, env=bare_env)
    garmin.clear_log()
    result = run("--strava-only", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert {e.host for e in garmin.log} == {"www.strava.com"}


def test_dry_run_shows_what_would_be_uploaded_and_sends_nothing(
    garmin, strava, run, bare_env, dest
):
    add_today(garmin, 50_000_000_010)
    run("--dest", dest, env=bare_env)
    garmin.clear_log()
    result = run(
        "--strava-only", "--dry-run", "--strava-since", "2000-01-01", "--dest", dest, env=bare_env
    )
    assert result.returncode == 0, result.stderr
    assert "activity_50000000010_" in result.stdout
    assert strava_requests(garmin) == []


def browser_visit(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as answer:
        return answer.read().decode()


@pytest.mark.parametrize("delivery", ["browser", "pasted"])
def test_strava_login_runs_the_code_flow_and_saves_tokens_0600(
    garmin, strava, bare_env, delivery, port_9321
):
    store = Path(bare_env["GARMINTOKENS"])
    (store / "strava_tokens.json").unlink()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--strava-login"],
        env=bare_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = ""
        while "oauth/authorize" not in url:
            url = proc.stdout.readline()
            assert url, proc.stderr.read()
        assert "scope=activity%3Awrite%2Cactivity%3Aread_all" in url
        assert "redirect_uri=http%3A%2F%2Flocalhost%3A9321%2F" in url
        state = re.search(r"state=([0-9a-f]+)", url).group(1)
        redirect = (
            f"http://localhost:9321/?state={state}&code={strava.code}&scope={strava.granted_scope}"
        )
        if delivery == "browser":  # no wait: the script listens before it shows the address
            page = browser_visit(redirect.replace("localhost", "127.0.0.1"))
            assert "close this tab" in page
            out, err = proc.communicate(timeout=30)
        else:
            out, err = proc.communicate(redirect + "\n", timeout=30)
    finally:  # a failed test must not leave a process holding port 9321
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    saved = json.loads((store / "strava_tokens.json").read_text())
    assert saved["refresh_token"] == strava.refresh_token
    assert stat.S_IMODE((store / "strava_tokens.json").stat().st_mode) == 0o600
    assert strava.client_secret not in out + err and strava.access_token not in out + err


def test_no_strava_secret_or_token_is_printed_at_verbose(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_011)
    store = Path(bare_env["GARMINTOKENS"])
    (store / "strava_tokens.json").write_text(strava.token_file(expires_at=0))  # forces refresh
    old = json.loads((store / "strava_tokens.json").read_text())
    result = run("--strava", "-v", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Strava POST /api/v3/uploads" in output
    for secret in (
        strava.client_secret,
        strava.access_token,
        strava.refresh_token,
        old["access_token"],
        old["refresh_token"],
    ):
        assert secret not in output


def test_each_leg_of_a_multisport_activity_is_its_own_strava_upload(
    garmin, strava, run, bare_env, dest, real_fit_files
):
    start = datetime(2024, 7, 14, 8, 0)
    parent = make_activity(50_000, start, "multi_sport", name="Brick")
    legs = [
        (make_activity(50_001, start, "road_biking"), real_fit_files[1]),
        (make_activity(50_002, start + timedelta(hours=2), "running"), real_fit_files[2]),
    ]
    garmin.add_multisport(parent, legs, list_legs=False)
    result = run("--strava", "--strava-since", "2024-07-01", "--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    uploads = {u.external_id: u for u in strava.uploads.values()}
    assert sorted(uploads) == ["garmin_50000_1", "garmin_50000_2"]
    for leg, (_, fit) in enumerate(legs, 1):
        assert uploads[f"garmin_50000_{leg}"].digest == hashlib.sha256(fit).hexdigest()
    states = manifest(dest)["activities"]["50000"]["strava_legs"]
    assert [s["status"] for s in states] == ["uploaded", "uploaded"]
    garmin.clear_log()
    assert run("--strava", "--dest", dest, env=bare_env).returncode == 0
    assert strava_requests(garmin) == []  # each leg went once


def test_an_inactive_strava_application_stops_the_strava_step_with_exit_3(
    garmin, strava, run, bare_env, dest
):
    strava.inactive = True  # no subscription since 2026-06-30: every API call answers 403
    add_today(garmin, 50_000_000_030)
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 3
    problems = [line for line in result.stderr.splitlines() if line.startswith("garminsync: ")]
    assert len(problems) == 1 and "subscription" in problems[0]
    assert "https://www.strava.com/settings/api" in problems[0]
    assert saved_files(dest)  # the Garmin step is unaffected
    assert strava_of(dest, 50_000_000_030) == {}  # no activity marked failed for it
    strava.inactive = False
    assert run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env).returncode == 0
    assert strava_of(dest, 50_000_000_030)["status"] == "uploaded"


def test_an_upload_answer_cut_short_stops_uploads_with_75(garmin, strava, run, bare_env, dest):
    add_today(garmin, 50_000_000_040)
    garmin.add_fault("^/api/v3/uploads$", cut(0.3), times=None, host="www.strava.com")
    result = run("--strava", *SINCE_YESTERDAY, "--dest", dest, env=bare_env)
    assert result.returncode == 75, result.stderr
    assert "unexpected" not in result.stderr and "Strava is unreachable" in result.stderr
