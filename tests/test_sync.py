"""The sync contract (issue 2): what a run downloads, how few requests it makes, how it fails.

Every test runs garminsync.py as a subprocess against the fake Garmin behind a local HTTPS
proxy; nothing is patched.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SCRIPT
from fake_garmin import (
    GPX_ID,
    MANUAL_ID,
    cut,
    status,
    synthetic_fit,
    zip_of,
)
from helpers import COUNT, DOWNLOAD, LIST, add_late_upload, downloads, manifest, saved_files

# --- what a sync saves


def test_fresh_sync_saves_every_original_byte_for_byte(garmin, real_account, run, dest):
    result = run("--missing", "--dest", dest)
    assert result.returncode == 0, result.stderr
    files = saved_files(dest)
    with_file = [aid for aid in real_account if aid != MANUAL_ID]
    assert sorted(files) == sorted(with_file)
    for aid in with_file:
        assert files[aid].read_bytes() == garmin.original(aid)


def test_file_names_carry_id_and_local_start_time(garmin, real_account, run, dest):
    run("--dest", dest)
    names = {p.name for p in saved_files(dest).values()}
    assert "activity_12129115726_2023-09-28_20-10-57.fit" in names
    assert "activity_196389845_2012-07-06_14-52-10.tcx" in names


def test_gpx_and_tcx_originals_keep_their_extension(garmin, real_account, run, dest):
    run("--dest", dest)
    files = saved_files(dest)
    assert files[GPX_ID].suffix == ".gpx"
    assert files[196389836].suffix == ".tcx"
    assert files[196389836].read_bytes() == garmin.original(196389836)


def test_manual_activity_is_recorded_without_asking_for_a_file(garmin, real_account, run, dest):
    run("--dest", dest)
    run("--dest", dest)
    entry = manifest(dest)["activities"][str(MANUAL_ID)]
    assert entry["status"] == "no_file"
    assert MANUAL_ID not in downloads(garmin)


def test_404_on_download_is_recorded_as_no_file_and_not_asked_again(garmin, run, dest):
    add_late_upload(garmin, 42, datetime(2024, 1, 2, 3, 4, 5))
    garmin.originals.pop(42)
    assert run("--dest", dest).returncode == 0
    assert manifest(dest)["activities"]["42"]["status"] == "no_file"
    garmin.clear_log()
    run("--dest", dest)
    assert downloads(garmin) == []


def test_manifest_records_what_is_known_of_each_activity(garmin, real_account, run, dest):
    run("--dest", dest)
    entry = manifest(dest)["activities"]["12129115726"]
    assert entry["start_local"] == "2023-09-28 20:10:57"
    assert entry["start_gmt"] == "2023-09-29 00:10:57"
    assert entry["type"] == "running"
    assert entry["file"] == "activity_12129115726_2023-09-28_20-10-57.fit"
    assert entry["size"] == len(garmin.original(12129115726))
    assert entry["status"] == "downloaded" and entry["downloaded_at"]
    assert manifest(dest)["last_run"]["exit_code"] == 0


def test_the_manifest_keeps_one_activity_per_line_so_grep_finds_it(garmin, real_account, run, dest):
    run("--dest", dest)
    lines = (dest / "garminsync.json").read_text().splitlines()
    for activity_id in real_account:
        (line,) = [line for line in lines if f'"{activity_id}":' in line]
        key, _, entry = line.strip().rstrip(",").partition(": ")
        assert json.loads(entry) == manifest(dest)["activities"][str(activity_id)]


def test_the_manifest_leaves_out_fields_that_are_unset(garmin, real_account, run, dest):
    run("--dest", dest)
    entry = manifest(dest)["activities"]["12129115726"]
    assert {"error", "failures", "gone_since", "strava", "legs", "manual"}.isdisjoint(entry)
    assert entry["status"] == "downloaded" and entry["type"] == "running"


def test_a_manifest_with_every_field_written_out_is_read_as_before(garmin, real_account, run, dest):
    run("--dest", dest)
    shown = json.loads(run("--dest", dest, "--list", "all", "--offline", "--json").stdout)
    unset = {"error": None, "failures": 0, "first_failure": None, "gone_since": None,
             "legs": 0, "manual": False, "parent": None, "exports": None, "strava": None,
             "strava_legs": None}  # fmt: skip
    data = manifest(dest)  # as garminsync 0.2.0 wrote it: every field, unset ones too
    for entry in data["activities"].values():
        entry.update({field: value for field, value in unset.items() if field not in entry})
    (dest / "garminsync.json").write_text(json.dumps(data))
    result = run("--dest", dest, "--list", "all", "--offline", "--json")
    assert result.returncode == 0 and "warning" not in result.stderr
    assert json.loads(result.stdout) == shown


# --- how few requests


def test_no_op_sync_costs_one_request(garmin, real_account, run, dest):
    run("--dest", dest)
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0
    assert [(e.host, e.path) for e in garmin.log] == [("connectapi.garmin.com", COUNT)]


def test_new_activity_and_late_upload_are_found_by_the_next_run(garmin, many_activities, run, dest):
    ids = many_activities(150)  # newest 2024-06-01, one a day going back
    run("--dest", dest)
    garmin.clear_log()
    add_late_upload(garmin, 99_000_000_001, datetime(2024, 6, 2, 6, 0))  # the newest
    add_late_upload(garmin, 99_000_000_002, datetime(2024, 1, 20, 6, 0))  # deep: ~130th
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert sorted(downloads(garmin)) == [99_000_000_001, 99_000_000_002]
    assert len(garmin.requests_to(COUNT)) + len(garmin.requests_to(LIST)) <= 3
    assert len(saved_files(dest)) == len(ids) + 2


def test_more_than_1000_activities_are_all_listed_and_downloaded(
    garmin, many_activities, run, dest
):
    ids = many_activities(1003)
    result = run("--dest", dest, "-q", timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(saved_files(dest)) == sorted(ids)
    assert all(int(e.query["limit"]) <= 1000 for e in garmin.requests_to(LIST))
    assert len(garmin.requests_to(LIST)) == 2  # ceil(1003 / 1000) pages, no more
    assert len(set(downloads(garmin))) == len(downloads(garmin)) == 1003


def test_activity_deleted_on_garmin_keeps_its_file_and_is_marked_gone(
    garmin, real_account, run, dest
):
    run("--dest", dest)
    garmin.remove_activity(1740899583)
    run("--dest", dest)
    assert 1740899583 in saved_files(dest)
    assert manifest(dest)["activities"]["1740899583"]["gone_since"]


# --- choosing what to download


def test_since_and_until_limit_downloads_to_the_local_date_range(garmin, real_account, run, dest):
    result = run("--dest", dest, "--since", "2017-01-01", "--until", "2017-12-31")
    assert result.returncode == 0, result.stderr
    assert sorted(saved_files(dest)) == [1740899583, 1761234567, 1763456789]
    assert all(e.query.get("startDate") == "2017-01-01" for e in garmin.requests_to(LIST))


def test_limit_caps_downloads_per_run_newest_first(garmin, real_account, run, dest):
    run("--dest", dest, "--limit", "2")
    assert sorted(saved_files(dest)) == [2634567890, 12129115726]
    run("--dest", dest)
    assert len(saved_files(dest)) == 9


def test_dry_run_shows_what_would_be_downloaded_and_writes_nothing(garmin, real_account, run, dest):
    result = run("--missing", "--dry-run", "--dest", dest)
    assert result.returncode == 0, result.stderr
    assert "12129115726" in result.stdout and "196389836" in result.stdout
    assert not dest.exists()
    assert downloads(garmin) == []


# --- --list and --status


@pytest.mark.parametrize(
    "which, expected",
    [
        ("all", {12129115726, 1740899583, MANUAL_ID}),
        ("downloaded", {12129115726}),
        ("missing", {1740899583}),
    ],
)
def test_list_online_shows_the_matching_activities(
    garmin, real_account, run, dest, which, expected
):
    run("--dest", dest, "--limit", "1")
    result = run("--list", which, "--json", "--dest", dest)
    assert result.returncode == 0, result.stderr
    shown = {row["id"] for row in json.loads(result.stdout)}
    assert expected <= shown
    if which != "all":
        assert not ({12129115726, 1740899583} - expected) & shown


@pytest.mark.parametrize("which", ["all", "missing", "downloaded"])
def test_list_offline_needs_neither_network_nor_garminconnect(
    garmin, real_account, run, env, dest, tmp_path, which
):
    run("--dest", dest, "--limit", "3")
    expected = run("--list", which, "--dest", dest).stdout
    garmin.stop()
    shadow = tmp_path / "shadow" / "garminconnect"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('garminconnect must not load')\n")
    offline_env = {**env, "PYTHONPATH": str(shadow.parent)}
    result = run("--list", which, "--offline", "--dest", dest, env=offline_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected and result.stdout.strip()


def test_status_reports_counts_last_run_and_session(garmin, real_account, run, dest, env):
    run("--dest", dest)
    result = run("--status", "--offline", "--json", "--dest", dest)
    status_ = json.loads(result.stdout)
    counts = {"pending": 0, "downloaded": 9, "no_file": 1, "failed": 0, "set_aside": 0}
    assert status_["counts"] == counts
    assert status_["last_run"]["exit_code"] == 0 and status_["last_run"]["duration_s"] >= 0
    assert status_["session_saved"] is True
    assert status_["token_store"].startswith(env["GARMINTOKENS"])


# --- failures


def test_429_with_retry_after_is_honoured_then_the_run_goes_on(garmin, real_account, run, dest):
    garmin.add_fault(DOWNLOAD, status(429, {"Retry-After": "1"}))
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert "429" in result.stderr
    assert len(saved_files(dest)) == 9


def test_429_beyond_the_wait_budget_stops_with_75_keeping_what_was_saved(
    garmin, real_account, run, dest
):
    garmin.add_fault(DOWNLOAD + "1740899583", status(429, {"Retry-After": "3600"}))
    result = run("--dest", dest)
    assert result.returncode == 75
    assert len(result.stderr.strip().splitlines()) <= 8
    saved = saved_files(dest)
    assert 12129115726 in saved and 1740899583 not in saved
    assert manifest(dest)["activities"]["12129115726"]["status"] == "downloaded"


def test_permanent_500_marks_the_activity_failed_and_the_next_run_retries_it(
    garmin, real_account, run, dest
):
    garmin.add_fault(DOWNLOAD + "1740899583", status(500), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    entry = manifest(dest)["activities"]["1740899583"]
    assert entry["status"] == "failed" and "500" in entry["error"]
    assert len(saved_files(dest)) == 8
    garmin.clear_faults()
    assert run("--dest", dest).returncode == 0
    assert saved_files(dest)[1740899583].read_bytes() == garmin.original(1740899583)


def test_body_cut_midway_is_retried_and_never_left_as_a_file(garmin, real_account, run, dest):
    garmin.add_fault(DOWNLOAD + "870123456", cut(0.5), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    assert 870123456 not in saved_files(dest)
    assert len(garmin.requests_to(DOWNLOAD + "870123456")) == 3
    assert [p.name for p in dest.iterdir() if "tmp" in p.name] == []


def test_expired_token_is_refreshed_and_saved_at_once(
    garmin, real_account, run, dest, env, session_saved
):
    before = session_saved.read_text()
    garmin.expire_access_token()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    saved = json.loads(session_saved.read_text())
    assert session_saved.read_text() != before
    assert saved["di_token"] == garmin.access_token
    assert saved["di_refresh_token"] == garmin.refresh_token
    assert stat.S_IMODE(session_saved.stat().st_mode) == 0o600


def test_refused_session_exits_3_and_says_to_log_in(garmin, real_account, run, dest, env):
    garmin.expire_access_token()
    garmin.refresh_token = "revoked"  # noqa: S105
    result = run("--dest", dest)
    assert result.returncode == 3
    assert "--login" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_corrupt_manifest_is_moved_aside_and_rebuilt_from_the_files(
    garmin, real_account, run, dest
):
    run("--dest", dest)
    (dest / "garminsync.json").write_text('{"version": 1, "activities": {"12')
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    aside = list(dest.glob("garminsync.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"version": 1, "activities": {"12'
    assert manifest(dest)["activities"]["12129115726"]["status"] == "downloaded"
    assert downloads(garmin) == []  # the files on disk were adopted, not fetched again


def test_a_second_run_exits_75_while_another_holds_the_lock(garmin, real_account, run, dest):
    dest.mkdir()
    with open(dest / ".garminsync.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run("--dest", dest)
    assert result.returncode == 75
    assert "another garminsync run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert downloads(garmin) == []


@pytest.mark.parametrize("member", ["../../evil.fit", "/etc/garminsync-x.fit", "a/../../b.fit"])
def test_zip_member_names_never_become_paths(garmin, run, dest, tmp_path, member):
    add_late_upload(garmin, 77, datetime(2024, 3, 3, 9, 0))
    garmin.add_fault(DOWNLOAD + "77", _zip_body(member, synthetic_fit(77)), times=None)
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in dest.iterdir() if p.name.startswith("activity_")] == [
        "activity_77_2024-03-03_09-00-00.fit"
    ]
    assert not list(tmp_path.rglob("evil.fit")) and not list(tmp_path.rglob("b.fit"))
    assert not Path("/etc/garminsync-x.fit").exists()


def _zip_body(member: str, data: bytes):
    from fake_garmin import body

    return body(zip_of(member, data), content_type="application/x-zip-compressed")


# --- local problems and command line


@pytest.mark.parametrize(
    "args",
    [
        ["--list", "everything"],
        ["--since", "2024-13-01"],
        ["--limit", "0"],
        ["--delay", "-1"],
        ["--status", "--login"],
        ["--offline"],
        ["--dry-run", "--status"],
        ["--since", "2024-02-01", "--until", "2024-01-01"],
        ["--no-such-option"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(run, env, args):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr


def test_no_credentials_and_no_session_exit_3_with_the_login_hint(garmin, run, bare_env, dest):
    result = run("--dest", dest, env=bare_env)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "garminsync: error: no saved Garmin session and no credentials; "
        f"run `{sys.executable} {SCRIPT} --login` once"
    ]


def test_the_token_store_is_0700_and_the_token_file_0600_after_login(garmin, run, bare_env, dest):
    login_env = {**bare_env, "GARMIN_EMAIL": garmin.email, "GARMIN_PASSWORD": garmin.password}
    result = run("--login", env=login_env)
    assert result.returncode == 0, result.stderr
    store = Path(bare_env["GARMINTOKENS"])
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "garmin_tokens.json").stat().st_mode) == 0o600
    assert json.loads((store / "garmin_tokens.json").read_text())["di_token"] == garmin.access_token


def test_login_asks_for_the_mfa_code_and_later_runs_do_not_log_in(
    garmin, run, bare_env, real_account, dest
):
    garmin.mfa_code = "123456"
    login_env = {**bare_env, "GARMIN_EMAIL": garmin.email, "GARMIN_PASSWORD": garmin.password}
    result = run("--login", env=login_env, input="123456\n")
    assert result.returncode == 0, result.stderr
    garmin.clear_log()
    assert run("--dest", dest, env=login_env).returncode == 0
    assert not [e for e in garmin.log if e.host == "sso.garmin.com"]


def test_unattended_run_that_needs_mfa_exits_3(garmin, run, bare_env, dest):
    garmin.mfa_code = "123456"
    login_env = {**bare_env, "GARMIN_EMAIL": garmin.email, "GARMIN_PASSWORD": garmin.password}
    result = run("--dest", dest, env=login_env, input="")
    assert result.returncode == 3
    assert "--login" in result.stderr


def test_netrc_credentials_are_used_and_a_loose_netrc_is_warned_about(
    garmin, run, bare_env, tmp_path, dest
):
    # Python 3.10's netrc reads no quoted password with spaces (3.11 and newer do).
    garmin.password = "correct-horse-battery-staple"  # noqa: S105
    netrc = tmp_path / ".netrc"
    netrc.write_text(
        f"machine connect.garmin.com login {garmin.email} password {garmin.password}\n"
    )
    netrc.chmod(0o644)
    result = run("--dest", dest, env=bare_env)
    assert result.returncode == 0, result.stderr
    assert "readable by group or others" in result.stderr
    assert (Path(bare_env["GARMINTOKENS"]) / "garmin_tokens.json").exists()


def test_no_secret_is_printed_even_at_verbose(garmin, real_account, run, bare_env, dest):
    login_env = {**bare_env, "GARMIN_EMAIL": garmin.email, "GARMIN_PASSWORD": garmin.password}
    first = run("--dest", dest, "-v", env=login_env)  # logs in
    tokens = json.loads((Path(bare_env["GARMINTOKENS"]) / "garmin_tokens.json").read_text())
    garmin.expire_access_token()
    garmin.add_fault(DOWNLOAD + "870123456", status(500), times=None)
    second = run("--dest", dest, "-v", "--status", env=login_env)
    third = run("--dest", dest, "-v", env=login_env)  # refresh, then a failing download
    output = "".join(r.stdout + r.stderr for r in (first, second, third))
    assert "GET /download-service" in output  # -v really was verbose
    for secret in (
        garmin.password,
        tokens["di_token"],
        tokens["di_refresh_token"],
        garmin.access_token,
        garmin.refresh_token,
    ):
        assert secret not in output
    assert "Bearer " not in output.replace("Bearer ***", "")


def test_under_systemd_lines_carry_their_priority(garmin, real_account, run, env, dest):
    garmin.add_fault(DOWNLOAD + "870123456", status(500), times=None)
    result = run("--dest", dest, env={**env, "JOURNAL_STREAM": "8:12345"})
    lines = result.stderr.strip().splitlines()
    assert lines and all(re.match(r"<[3-7]>", line) for line in lines)
    assert any(line.startswith("<4>") and "870123456" in line for line in lines)
    assert any(line.startswith("<6>saved activity_") for line in lines)


def test_a_vanished_file_is_downloaded_again_and_a_stray_file_adopted(
    garmin, real_account, run, dest
):
    run("--dest", dest)
    saved_files(dest)[870123456].unlink()
    stray = dest / "activity_555_2020-01-01_10-00-00.fit"
    stray.write_bytes(synthetic_fit(555))
    garmin.clear_log()
    run("--dest", dest)
    assert downloads(garmin) == [870123456]
    assert manifest(dest)["activities"]["555"]["status"] == "downloaded"
    assert stray.exists()


def test_dependency_range_has_one_source_the_script_header():
    script = (Path(__file__).parents[1] / "garminsync.py").read_text()
    header = re.search(r"^# /// script\n(.*?)^# ///$", script, re.S | re.M).group(1)
    assert re.findall(r'"(garminconnect[^"]*)"', header) == ["garminconnect>=0.3.2,<0.4"]
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "0.3.2" not in makefile and "garminsync.py" in makefile
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert set(re.findall(r"'(garminconnect[^']*)'", readme)) == {"garminconnect>=0.3.2,<0.4"}
    from importlib.metadata import version

    major, minor, patch = (int(x) for x in version("garminconnect").split(".")[:3])
    assert (0, 3, 2) <= (major, minor, patch) < (0, 4, 0)


def test_dest_that_is_a_file_exits_2_and_is_left_alone(run, env, tmp_path):
    not_a_dir = tmp_path / "notadir"
    not_a_dir.write_text("keep me")
    result = run("--dest", not_a_dir)
    assert result.returncode == 2
    assert not_a_dir.read_text() == "keep me"
    assert len(result.stderr.strip().splitlines()) == 1


def test_dest_defaults_to_garminsync_dest(garmin, real_account, run, env, tmp_path):
    target = tmp_path / "from env"
    assert run(env={**env, "GARMINSYNC_DEST": str(target)}).returncode == 0
    assert len(saved_files(target)) == 9
    assert os.path.exists(target / "garminsync.json")


def test_on_a_terminal_progress_is_one_redrawn_line(garmin, real_account, env, dest):
    import pexpect

    child = pexpect.spawn(sys.executable, [str(SCRIPT), "--dest", str(dest)], env=env, timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before.decode()
    assert child.exitstatus == 0, screen
    assert re.search(r"\r\[1/9\] activity 12129115726 2023-09-28 running\x1b\[K", screen)
    assert "saved activity_" not in screen  # on a terminal the progress line says it
    assert f"9 downloaded, 0 failed; files in {dest}: 9, activities without a file: 1" in screen


def test_429_with_retry_after_zero_again_and_again_still_ends_with_75(
    garmin, real_account, run, dest
):
    garmin.add_fault(DOWNLOAD, status(429, {"Retry-After": "0"}), times=None)
    result = run("--dest", dest)
    assert result.returncode == 75
    assert 30 <= len(garmin.requests_to(DOWNLOAD)) <= 32  # 300 s of budget, 10 s per 429


def garth_home(garmin, tmp_path: Path, expires_at: float) -> Path:
    """A saved garth-ng session (oauth2_token.json) holding the fake's current token."""
    home = tmp_path / "garth"
    home.mkdir(mode=0o700)
    token = {
        "access_token": garmin.access_token,
        "refresh_token": garmin.refresh_token,
        "expires_in": 3600,
        "token_type": "Bearer",
        "expires_at": expires_at,
        "refresh_token_expires_at": expires_at + 86400,
    }
    (home / "oauth2_token.json").write_text(json.dumps(token))
    return home


def test_a_saved_garth_session_is_used_through_the_same_seam(
    garmin, real_account, run, bare_env, dest, tmp_path
):
    import time

    home = garth_home(garmin, tmp_path, time.time() + 86400)
    result = run("--dest", dest, "-v", env={**bare_env, "GARTH_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert len(saved_files(dest)) == 9
    assert not (Path(bare_env["GARMINTOKENS"]) / "garmin_tokens.json").exists()
    assert garmin.access_token not in result.stderr


def test_a_garth_session_that_garmin_refuses_exits_3(
    garmin, real_account, run, bare_env, dest, tmp_path
):
    import time

    home = garth_home(garmin, tmp_path, time.time() + 86400)
    garmin.expire_access_token()
    result = run("--dest", dest, env={**bare_env, "GARTH_HOME": str(home)})
    assert result.returncode == 3
    assert "HTTP 401" in result.stderr and "--login" in result.stderr


def test_login_with_input_ended_exits_3_with_one_line(garmin, run, bare_env):
    result = run("--login", env=bare_env, input="")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "garminsync: error: the input ended before the answer; run --login at a terminal"
    )
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_a_dest_that_is_a_file_is_named_offline_too(run, env, tmp_path):
    not_a_dir = tmp_path / "notadir"
    not_a_dir.write_text("keep me")
    result = run("--status", "--offline", "--dest", not_a_dir)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"garminsync: error: {not_a_dir} is not a folder; pick another --dest"
    )


@pytest.mark.parametrize("value, code", [("no", 0), ("false", 0), ("maybe", 2)])
def test_the_strava_switch_reads_words_as_people_write_them(garmin, run, env, dest, value, code):
    result = run("--dest", dest, env={**env, "GARMINSYNC_STRAVA": value})
    assert result.returncode == code, result.stderr
    assert "Strava" not in result.stderr or code == 2
