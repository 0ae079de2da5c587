"""Garmin's real answers (issue 9), each modelled on what the real service was seen to send:
multisport originals of one FIT file per leg, a count that differs from the list, deletions
near the top of the list, a download Garmin refuses, and Strava's inactive application.
Every test runs garminsync.py as a subprocess against the fakes; nothing is patched.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fake_garmin import make_activity, status, synthetic_fit
from helpers import COUNT, DOWNLOAD, LIST, downloads, manifest, one_error_line, saved_files

CONNECTAPI = "connectapi.garmin.com"
# What Garmin answered for an activity it would not export (moderation/garmin-connect-export#5)
NOT_EXPORTABLE = b'{"message":null,"error":"WebApplicationException"}'


def add_triathlon(garmin, fit_files, legs: int = 3, list_legs: bool = False) -> tuple[int, list]:
    """A multisport activity of `legs` legs made from real device FIT files; returns the
    parent's id and the legs' FIT bytes in order."""
    start = datetime(2024, 7, 14, 8, 0)
    kinds = ["open_water_swimming", "road_biking", "running"][-legs:]
    parent = make_activity(50_000, start, "multi_sport", name="Ironman 70.3")
    fits = [fit_files[i] for i in range(legs)]
    children = [
        (make_activity(50_001 + i, start + timedelta(minutes=40 * i), kind), fits[i])
        for i, kind in enumerate(kinds)
    ]
    garmin.add_multisport(parent, children, list_legs=list_legs)
    return 50_000, fits


def leg_files(dest, activity_id: int) -> list:
    return sorted(dest.glob(f"activity_{activity_id}_*_leg*of*.fit"))


# --- one connection, both ends of garminconnect


def test_a_run_opens_one_tls_connection_to_garmin(garmin, real_account, run, dest):
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert len(downloads(garmin)) == 9  # 9 originals over one kept-alive connection
    assert garmin.tunnels_to(CONNECTAPI) == 1


# --- multisport


@pytest.mark.parametrize("legs", [2, 3])
def test_every_leg_of_a_multisport_original_is_saved_byte_for_byte(
    garmin, run, dest, real_fit_files, legs
):
    parent_id, fits = add_triathlon(garmin, real_fit_files, legs)
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    saved = leg_files(dest, parent_id)
    assert [p.name for p in saved] == [
        f"activity_{parent_id}_2024-07-14_08-00-00_leg{n}of{legs}.fit" for n in range(1, legs + 1)
    ]
    assert [p.read_bytes() for p in saved] == fits  # in the zip's order
    entry = manifest(dest)["activities"][str(parent_id)]
    assert (entry["status"], entry["legs"], entry["size"]) == (
        "downloaded",
        legs,
        sum(map(len, fits)),
    )


def test_a_multisport_activity_counts_once_in_list_and_status(garmin, run, dest, real_fit_files):
    parent_id, _ = add_triathlon(garmin, real_fit_files, 3, list_legs=True)
    assert run("--dest", dest).returncode == 0
    rows = run("--list", "all", "--offline", "--dest", dest).stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[0] == str(parent_id)
    assert rows[0].endswith("downloaded (3 legs)")
    status_ = json.loads(run("--status", "--offline", "--json", "--dest", dest).stdout)
    assert status_["counts"]["downloaded"] == 1 and sum(status_["counts"].values()) == 1


def test_legs_garmin_lists_on_their_own_are_not_downloaded_twice(garmin, run, dest, real_fit_files):
    parent_id, fits = add_triathlon(garmin, real_fit_files, 3, list_legs=True)
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert downloads(garmin) == [parent_id]
    assert [p.read_bytes() for p in leg_files(dest, parent_id)] == fits
    assert sorted(saved_files(dest)) == [parent_id]
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert [e.path for e in garmin.log] == [COUNT]  # the legs are known: nothing new


def test_legs_are_adopted_back_when_the_manifest_is_rebuilt(garmin, run, dest, real_fit_files):
    parent_id, _ = add_triathlon(garmin, real_fit_files, 3)
    assert run("--dest", dest).returncode == 0
    (dest / "garminsync.json").unlink()
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert downloads(garmin) == []
    entry = manifest(dest)["activities"][str(parent_id)]
    assert (entry["status"], entry["legs"]) == ("downloaded", 3)


def test_a_multisport_activity_missing_a_leg_file_is_downloaded_again(
    garmin, run, dest, real_fit_files
):
    parent_id, fits = add_triathlon(garmin, real_fit_files, 3)
    assert run("--dest", dest).returncode == 0
    leg_files(dest, parent_id)[1].unlink()
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert downloads(garmin) == [parent_id]
    assert [p.read_bytes() for p in leg_files(dest, parent_id)] == fits


# --- the count and the list disagree


@pytest.mark.parametrize("extra", [2, -2], ids=["counts-more", "lists-more"])
def test_a_standing_difference_between_count_and_list_costs_one_request(
    garmin, real_account, run, dest, extra
):
    garmin.count_extra = extra  # legs counted but not listed, or the other way round
    assert run("--dest", dest).returncode == 0
    assert len(garmin.requests_to(LIST)) == 1  # the first run does not read the list twice
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert [e.path for e in garmin.log] == [COUNT]


def test_a_new_activity_is_found_beside_a_standing_difference(
    garmin, real_account, run, dest, many_activities
):
    garmin.count_extra = 3
    assert run("--dest", dest).returncode == 0
    garmin.add_activity(make_activity(60, datetime(2025, 1, 2, 7, 0)), synthetic_fit(60))
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert downloads(garmin) == [60]
    assert len(garmin.requests_to(LIST)) == 1


# --- deletions do not hide new activities


def test_deletions_near_the_top_do_not_hide_a_late_upload(garmin, run, dest, many_activities):
    ids = many_activities(150)  # newest first, one a day back from 2024-06-01
    assert run("--dest", dest).returncode == 0
    for gone in ids[:2]:
        garmin.remove_activity(gone)
    new = [
        garmin.add_activity(make_activity(i, datetime(2024, 6, 2, h, 0)), synthetic_fit(i))
        for i, h in ((70, 7), (71, 18))
    ]
    # 100 activities above it once the 2 new ones are in: position 101 of the list
    late_start = datetime(2024, 6, 1, 7, 30) - timedelta(days=99, hours=12)
    late = garmin.add_activity(make_activity(72, late_start), synthetic_fit(72))
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert sorted(downloads(garmin)) == sorted([*new, late])
    assert len(garmin.requests_to(LIST)) <= 3
    gone_marked = [e for e in manifest(dest)["activities"].values() if e.get("gone_since")]
    assert sorted(e["id"] for e in gone_marked) == sorted(ids[:2])


# --- a download Garmin refuses


def test_a_refused_download_fails_that_activity_alone(garmin, real_account, run, dest):
    refused = real_account[0]
    garmin.add_fault(DOWNLOAD + str(refused), status(403, body=NOT_EXPORTABLE), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    assert "--login" not in result.stderr
    entry = manifest(dest)["activities"][str(refused)]
    assert entry["status"] == "failed" and "403" in entry["error"]
    assert len(saved_files(dest)) == 8  # the 8 other originals
    assert len(garmin.requests_to(DOWNLOAD + str(refused))) == 1  # a refusal is not retried


def test_a_refused_activity_list_is_a_refused_session(garmin, real_account, run, dest):
    garmin.add_fault(LIST, status(403, body=b'{"message":"Forbidden"}'), times=None)
    result = run("--dest", dest)
    assert result.returncode == 3
    assert "--login" in one_error_line(result.stderr)


def ago(**delta) -> datetime:
    """A UTC time this long ago."""
    return datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(**delta)


def set_failures(dest, activity_id: int, failures: int, first: datetime) -> None:
    """Seed the manifest as if the activity had failed on `failures` runs since `first`."""
    data = manifest(dest)
    data["activities"][str(activity_id)].update(
        status="failed", failures=failures, first_failure=first.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    (dest / "garminsync.json").write_text(json.dumps(data))


def test_an_activity_failing_on_five_runs_over_two_days_is_set_aside(
    garmin, real_account, run, dest
):
    refused = real_account[0]
    garmin.add_fault(DOWNLOAD + str(refused), status(403, body=NOT_EXPORTABLE), times=None)
    assert run("--dest", dest).returncode == 1
    set_failures(dest, refused, 4, ago(days=3))
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr  # the fifth failure sets it aside
    assert "set aside" in result.stderr
    assert manifest(dest)["activities"][str(refused)]["status"] == "set_aside"
    missing = run("--list", "missing", "--offline", "--dest", dest).stdout.splitlines()[1:]
    assert len(missing) == 1 and "set aside" in missing[0]
    status_ = run("--status", "--offline", "--dest", dest).stdout
    assert f"set aside:  {refused}" in status_ and "HTTP 403" in status_
    garmin.clear_log()
    garmin.add_activity(make_activity(61, datetime(2025, 2, 1, 7, 0)), synthetic_fit(61))
    assert run("--dest", dest).returncode == 0
    assert downloads(garmin) == [61]  # no longer requested


def test_five_failures_within_two_days_are_not_yet_set_aside(garmin, real_account, run, dest):
    refused = real_account[0]
    garmin.add_fault(DOWNLOAD + str(refused), status(403, body=NOT_EXPORTABLE), times=None)
    assert run("--dest", dest).returncode == 1
    set_failures(dest, refused, 4, ago(hours=30))
    assert run("--dest", dest).returncode == 1
    entry = manifest(dest)["activities"][str(refused)]
    assert (entry["status"], entry["failures"]) == ("failed", 5)


def test_retry_failed_asks_for_set_aside_activities_again(garmin, real_account, run, dest):
    refused = real_account[0]
    garmin.add_fault(DOWNLOAD + str(refused), status(403, body=NOT_EXPORTABLE), times=1)
    assert run("--dest", dest).returncode == 1
    set_failures(dest, refused, 5, ago(days=3))
    data = manifest(dest)
    data["activities"][str(refused)]["status"] = "set_aside"
    (dest / "garminsync.json").write_text(json.dumps(data))
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert downloads(garmin) == []
    result = run("--dest", dest, "--retry-failed")
    assert result.returncode == 0, result.stderr
    assert downloads(garmin) == [refused]
    entry = manifest(dest)["activities"][str(refused)]
    assert entry["status"] == "downloaded" and "failures" not in entry  # 0: left out


# --- the manifest's Strava part


@pytest.mark.parametrize(
    "strava", [{"status": "failed", "attempts": "2"}, {"status": "processing", "upload_id": "x1"}]
)
def test_a_hand_edited_strava_field_is_reset_with_a_warning(
    garmin, real_account, run, dest, strava
):
    assert run("--dest", dest).returncode == 0
    data = manifest(dest)
    data["activities"][str(real_account[0])]["strava"] = strava
    (dest / "garminsync.json").write_text(json.dumps(data))
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert f"{real_account[0]}.strava." in result.stderr and "reset" in result.stderr
    kept = manifest(dest)["activities"][str(real_account[0])]["strava"]
    assert kept["status"] == strava["status"]
    assert type(kept["attempts"]) is int and kept["upload_id"] in (None,)
