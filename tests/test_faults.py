"""Worst days (issue 3): stop signals, a full disk, network faults, hostile Garmin answers,
hostile local state and concurrent runs. After each: no partial or wrong file under a final
name, nothing written outside DEST, a manifest that parses and tells the truth, the
documented exit code, and one clear line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SCRIPT
from fake_garmin import (
    body,
    make_activity,
    reset,
    synthetic_fit,
    trickle,
    zip_of,
)
from helpers import (
    COUNT,
    DOWNLOAD,
    LIST,
    assert_dest_is_truthful,
    downloads,
    manifest,
    one_error_line,
    saved_files,
    start,
    temp_files,
    wait_for,
)

# --- SIGTERM and SIGINT


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_ends_the_run_fast_with_nothing_half_written(
    garmin, real_account, env, dest, sig, code
):
    garmin.add_fault(DOWNLOAD + "870123456", trickle(2000), times=None)  # ~25 s of body
    proc = start(env, "--dest", dest)
    wait_for(lambda: sum(e.bytes_sent for e in garmin.requests_to(DOWNLOAD + "870123456")) > 800)
    proc.send_signal(sig)  # well inside the body
    _, stderr = proc.communicate(timeout=20)
    answer = garmin.requests_to(DOWNLOAD + "870123456")[0]
    assert answer.bytes_sent < len(garmin.original(870123456)) // 2  # it did not wait for it
    assert proc.returncode == code
    assert 870123456 not in saved_files(dest)
    assert temp_files(dest) == []
    assert_dest_is_truthful(dest, garmin)
    last_run = manifest(dest)["last_run"]
    assert last_run["result"] == "interrupted" and last_run["exit_code"] == code
    assert manifest(dest)["activities"]["12129115726"]["status"] == "downloaded"
    assert "stopped by" in stderr


# --- disk full


def run_with_full_disk(dest: Path, env: dict, tmp_path: Path) -> tuple[dict, dict, dict]:
    """Two runs on a 256 KiB tmpfs DEST (in a private mount namespace), the second after the
    filesystem grew; returns what each run saw: exit code, stderr, files, manifest text."""
    script = tmp_path / "full_disk.py"
    script.write_text(
        f"""
import json, subprocess, sys
from pathlib import Path
dest = Path({str(dest)!r})
def snapshot(result):
    files = {{p.name: p.read_bytes().hex() for p in dest.iterdir() if p.is_file()}}
    return {{"code": result.returncode, "stderr": result.stderr, "files": files}}
def sync():
    return subprocess.run([sys.executable, {str(SCRIPT)!r}, "--dest", str(dest)],
                          capture_output=True, text=True, timeout=120)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(dest)], check=True)
first = snapshot(sync())
again = snapshot(sync())
subprocess.run(["mount", "-o", "remount,size=8m", str(dest)], check=True)
print(json.dumps([first, again, snapshot(sync())]))
"""
    )
    dest.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_disk_full_stops_with_one_line_and_no_partial_file(
    garmin, real_account, env, dest, tmp_path
):
    first, again, roomy = run_with_full_disk(dest, env, tmp_path)
    for full in (first, again):
        assert full["code"] == 1
        assert "No space left on device" in one_error_line(full["stderr"])
        names = [n for n in full["files"] if n.startswith("activity_")]
        assert 0 < len(names) < 9
        for name in names:
            activity_id = int(name.split("_")[1])
            assert bytes.fromhex(full["files"][name]) == garmin.original(activity_id)
        assert not [n for n in full["files"] if n.startswith(".garminsync-tmp-")]
        json.loads(bytes.fromhex(full["files"]["garminsync.json"]))
    assert roomy["code"] == 0, roomy["stderr"]
    assert len([n for n in roomy["files"] if n.startswith("activity_")]) == 9


def test_file_size_limit_is_reported_like_a_full_disk(garmin, real_account, env, dest):
    def limit_file_size() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dest", str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 1
    assert "file size limit" in one_error_line(proc.stderr)
    assert temp_files(dest) == []
    assert_dest_is_truthful(dest, garmin)
    assert 870123456 not in saved_files(dest)  # the one original over 100 kB


# --- network faults


def test_connection_refused_ends_in_75_after_retries(garmin, real_account, run, env, dest):
    garmin.stop()
    result = run("--dest", dest)
    assert result.returncode == 75
    assert "unreachable" in one_error_line(result.stderr)


def test_dns_failure_through_the_proxy_ends_in_75(garmin, real_account, run, dest, env):
    garmin.unreachable.add("connectapi.garmin.com")
    result = run("--dest", dest)
    assert result.returncode == 75
    assert "unreachable" in one_error_line(result.stderr)
    assert len([e for e in garmin.log if e.status == 502]) == 3  # tried, retried, gave up


def test_tls_failure_ends_in_75(garmin, real_account, run, env, dest, tmp_path):
    import trustme

    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    bad_tls = {
        **env,
        "REQUESTS_CA_BUNDLE": str(stranger),
        "SSL_CERT_FILE": str(stranger),
        "CURL_CA_BUNDLE": str(stranger),
    }
    result = run("--dest", dest, env=bad_tls)
    assert result.returncode == 75
    assert "unreachable" in one_error_line(result.stderr)
    assert not saved_files(dest)


def test_reset_mid_body_fails_that_activity_after_retries(garmin, real_account, run, dest):
    garmin.add_fault(DOWNLOAD + "870123456", reset(0.3), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    assert len(garmin.requests_to(DOWNLOAD + "870123456")) == 3
    assert manifest(dest)["activities"]["870123456"]["status"] == "failed"
    assert_dest_is_truthful(dest, garmin)
    assert len(saved_files(dest)) == 8


def test_trickle_beyond_the_time_budget_is_cut_off(garmin, real_account, run, env, dest):
    garmin.add_fault(DOWNLOAD + "870123456", trickle(200), times=None)  # 10 minutes of body
    result = run("--dest", dest, env={**env, "GARMINSYNC_TIMEOUT": "1"})
    full = len(garmin.original(870123456))
    assert all(e.bytes_sent < full for e in garmin.requests_to(DOWNLOAD + "870123456"))
    assert result.returncode == 1
    entry = manifest(dest)["activities"]["870123456"]
    assert entry["status"] == "failed" and "timed out" in entry["error"]
    assert len(saved_files(dest)) == 8


# --- hostile or malformed list answers


@pytest.mark.parametrize(
    "answer",
    [
        body(b"<html><body>Service unavailable</body></html>", content_type="text/html"),
        body(b'[{"activityId": 1, "startTimeLocal": "2024-01-'),
        body(b'{"activityList": []}'),
    ],
    ids=["html-200", "truncated-json", "object-not-list"],
)
def test_a_garbled_activity_list_fails_the_run_cleanly(garmin, real_account, run, dest, answer):
    garmin.add_fault(LIST, answer, times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    assert "activity list" in one_error_line(result.stderr)
    assert not saved_files(dest)
    assert manifest(dest)["last_run"]["exit_code"] == 1


def test_malformed_activity_fields_are_skipped_or_coped_with(garmin, run, dest):
    good = make_activity(10, datetime(2024, 2, 1, 8, 0))
    as_string = make_activity(11, datetime(2024, 2, 2, 8, 0), activityId="11")
    no_local = make_activity(12, datetime(2024, 2, 3, 8, 0))
    del no_local["startTimeLocal"]
    nulls = make_activity(13, datetime(2024, 2, 4, 8, 0), activityId=None)
    typed = make_activity(14, datetime(2024, 2, 5, 8, 0), activityType=None, activityName=7)
    for activity_id in (10, 11, 12, 14):
        garmin.add_activity(
            make_activity(activity_id, datetime(2024, 2, 1)), synthetic_fit(activity_id)
        )
    listed = [typed, nulls, no_local, as_string, good]
    garmin.add_fault(LIST, body(json.dumps(listed).encode()), times=1)
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert sorted(saved_files(dest)) == [10, 11, 12, 14]
    assert "skipped 1 listed" in result.stderr
    assert manifest(dest)["activities"]["14"]["type"] == "unknown"
    assert manifest(dest)["activities"]["12"]["start_local"] == "2024-02-03 08:00:00"


def test_an_unusable_listed_activity_does_not_cost_a_listing_every_run(
    garmin, real_account, run, dest
):
    before_1970 = make_activity(40, datetime(1969, 7, 20, 20, 17))  # listed, counted, unusable
    garmin.add_activity(before_1970, synthetic_fit(40))
    assert run("--dest", dest).returncode == 0
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert [e.path for e in garmin.log] == [COUNT]


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "a/b", "..", "two\nlines", "🏃 run 🚴 ride", "x" * 500]
)
def test_hostile_activity_names_never_reach_the_file_system(garmin, run, dest, tmp_path, name):
    garmin.add_activity(make_activity(20, datetime(2024, 3, 1, 7, 0), name=name), synthetic_fit(20))
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in saved_files(dest).values()] == ["activity_20_2024-03-01_07-00-00.fit"]
    listing = run("--list", "all", "--offline", "--dest", dest)
    assert len(listing.stdout.splitlines()) == 2  # the header and the one activity
    assert manifest(dest)["activities"]["20"]["name"] == name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "state"]


def test_a_name_with_half_an_emoji_is_kept_readable_and_the_manifest_still_written(
    garmin, run, dest
):
    half_emoji = "Run \ud83c"  # valid JSON (an escaped lone surrogate), not valid UTF-8
    garmin.add_activity(make_activity(21, datetime(2024, 3, 2, 7, 0), name=half_emoji), None)
    garmin.add_activity(make_activity(22, datetime(2024, 3, 3, 7, 0)), synthetic_fit(22))
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert manifest(dest)["activities"]["21"]["name"] == "Run ?"
    listing = run("--list", "all", "--offline", "--dest", dest)
    assert listing.returncode == 0 and "Run ?" in listing.stdout
    garmin.clear_log()
    assert run("--dest", dest).returncode == 0
    assert len(garmin.log) == 1  # the manifest was kept: a no-op run


def test_a_new_activity_between_two_pages_skips_nothing(garmin, many_activities, run, dest):
    ids = many_activities(1003)

    def new_upload_before_page_two(host, path, query):
        if path == LIST and query.get("start") == "1000":
            garmin.on_request = None
            garmin.add_activity(make_activity(99, datetime(2025, 1, 1, 6, 0)), synthetic_fit(99))

    garmin.on_request = new_upload_before_page_two
    assert run("--dest", dest, "--limit", "1", "-q", timeout=120).returncode == 0
    known = {int(k) for k in manifest(dest)["activities"]}
    assert set(ids) <= known
    run("--dest", dest, "--limit", "1", "-q")
    assert 99 in saved_files(dest)


def test_an_activity_deleted_between_two_pages_skips_nothing(garmin, many_activities, run, dest):
    ids = many_activities(1003)

    def delete_before_page_two(host, path, query):
        if path == LIST and query.get("start") == "1000":
            garmin.on_request = None
            garmin.remove_activity(ids[10])

    garmin.on_request = delete_before_page_two
    assert run("--dest", dest, "--limit", "1", "-q", timeout=120).returncode == 0
    known = {int(k) for k in manifest(dest)["activities"]}
    assert set(ids) - {ids[10]} <= known  # ids[1000] shifted onto page one: still found


def test_the_same_id_on_two_pages_is_downloaded_once(garmin, many_activities, run, dest):
    ids = many_activities(1002)
    repeated = ids[998:1000]  # the end of page one, served again at the start of page two
    dest.mkdir()
    for activity in garmin.activities:  # everything else is already on disk
        if activity["activityId"] not in repeated:
            stamp = activity["startTimeLocal"].replace(" ", "_").replace(":", "-")
            path = dest / f"activity_{activity['activityId']}_{stamp}.fit"
            path.write_bytes(garmin.original(activity["activityId"]))
    first_page = [a for a in garmin.activities if a["activityId"] in repeated]

    def repeat_on_page_two(host, path, query):
        if path == LIST and query.get("start") == "1000":
            garmin.on_request = None
            garmin.add_fault(LIST, body(json.dumps(first_page).encode()), times=1)

    garmin.on_request = repeat_on_page_two
    result = run("--dest", dest, "-q", timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(downloads(garmin)) == sorted(repeated)
    assert len(manifest(dest)["activities"]) == 1002


# --- hostile or malformed downloads


def crc_broken_zip(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(member, data)
    raw = bytearray(buffer.getvalue())
    raw[30 + len(member) + 40] ^= 0xFF  # one byte of the stored data
    return bytes(raw)


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("30_ACTIVITY.fit", "w", force_zip64=True) as member:
            member.write(synthetic_fit(30)[:14])
            for _ in range(80):
                member.write(bytes(1024 * 1024))
    return buffer.getvalue()


def multisport_with_a_bad_leg() -> bytes:
    """Two legs, the second not a FIT file: no leg may be saved."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("30_ACTIVITY.fit", synthetic_fit(30))
        archive.writestr("31_ACTIVITY.fit", b"<html>not fit</html>" * 3)
    return buffer.getvalue()


def zip_with_central_entry(offset: int, value: int) -> bytes:
    """A zip of one FIT whose central directory entry has a 2-byte field changed."""
    raw = bytearray(zip_of("30_ACTIVITY.fit", synthetic_fit(30)))
    at = raw.index(b"PK\x01\x02") + offset
    raw[at : at + 2] = value.to_bytes(2, "little")
    return bytes(raw)


HOSTILE_DOWNLOADS = {
    "empty-body": (b"", "empty answer"),
    "html-200": (b"<html>Oops</html>", "not a zip"),
    "empty-zip": (b"PK\x05\x06" + bytes(18), "holds no"),
    "multisport-bad-leg": (multisport_with_a_bad_leg(), "not a FIT"),
    "dotdot-no-extension": (zip_of("../../evil", synthetic_fit(30)), "holds no"),
    "absolute-no-extension": (zip_of("/etc/x", synthetic_fit(30)), "holds no"),
    "not-a-fit": (zip_of("30_ACTIVITY.fit", b"<html>not fit</html>" * 3), "not a FIT"),
    "zip-bomb": (zip_bomb(), "size cap"),
    "bad-crc": (crc_broken_zip("30_ACTIVITY.fit", synthetic_fit(30, records=40)), "damaged"),
    "encrypted": (zip_with_central_entry(8, 0x1), "cannot be unpacked"),  # flag: encrypted
    "deflate64": (zip_with_central_entry(10, 9), "cannot be unpacked"),  # method 9
}


@pytest.mark.parametrize("kind", HOSTILE_DOWNLOADS)
def test_a_hostile_download_is_marked_failed_and_never_saved(garmin, run, dest, tmp_path, kind):
    answer, reason = HOSTILE_DOWNLOADS[kind]
    garmin.add_activity(make_activity(30, datetime(2024, 4, 1, 7, 0)), synthetic_fit(30))
    garmin.add_fault(DOWNLOAD + "30", body(answer, content_type="application/zip"), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    entry = manifest(dest)["activities"]["30"]
    assert entry["status"] == "failed" and reason in entry["error"]
    assert reason in result.stderr
    assert not saved_files(dest) and temp_files(dest) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "state"]
    assert not Path("/etc/x").exists()


# --- hostile local state


@pytest.mark.parametrize(
    "text", ['["a", "list"]', '{"version": 1, "activities": []}', "\x00\x01garbage", ""]
)
def test_a_manifest_of_the_wrong_shape_is_set_aside_and_rebuilt(
    garmin, real_account, run, dest, text
):
    run("--dest", dest)
    (dest / "garminsync.json").write_text(text)
    garmin.clear_log()
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert [p.read_text() for p in dest.glob("garminsync.json.corrupt-*")] == [text]
    assert len(manifest(dest)["activities"]) == 10
    assert downloads(garmin) == []


def test_a_manifest_that_cannot_be_read_stops_the_run_and_is_left_in_place(
    garmin, real_account, run, dest
):
    dest.mkdir()
    (dest / "garminsync.json").mkdir()  # reading it fails (EISDIR); its content is unknown
    (dest / "garminsync.json" / "mine.txt").write_text("keep")
    result = run("--dest", dest)
    assert result.returncode == 2
    assert "cannot read" in one_error_line(result.stderr)
    assert (dest / "garminsync.json" / "mine.txt").read_text() == "keep"
    assert not list(dest.glob("garminsync.json.corrupt-*")) and not saved_files(dest)


def test_a_file_or_entry_with_an_impossible_date_is_left_alone_and_breaks_nothing(
    garmin, real_account, run, dest
):
    dest.mkdir()
    stray = dest / "activity_123_2024-13-45_99-99-99.fit"
    stray.write_bytes(b"not ours")
    entry = {"id": 456, "start_local": "2024-02-31 07:00:00", "status": "pending"}
    (dest / "garminsync.json").write_text(json.dumps({"version": 1, "activities": {"456": entry}}))
    assert run("--dest", dest).returncode == 0
    listing = run("--list", "all", "--offline", "--dest", dest)
    assert listing.returncode == 0, listing.stderr
    assert "123" not in manifest(dest)["activities"] and "456" not in manifest(dest)["activities"]
    assert stray.read_bytes() == b"not ours"
    assert len(saved_files(dest)) == 10  # the 9 originals, and the stray left as it was


def test_a_manifest_from_a_future_version_is_left_untouched(garmin, real_account, run, dest):
    dest.mkdir()
    future = '{"version": 99, "activities": {}, "new_field": true}'
    (dest / "garminsync.json").write_text(future)
    result = run("--dest", dest)
    assert result.returncode == 2
    assert "newer garminsync" in one_error_line(result.stderr)
    assert (dest / "garminsync.json").read_text() == future
    assert not saved_files(dest)


def test_manifest_file_names_pointing_outside_dest_are_never_followed(
    garmin, real_account, run, dest, tmp_path
):
    victim = tmp_path / "victim.fit"
    victim.write_bytes(b"precious")
    dest.mkdir()
    entry = {
        "id": 12129115726,
        "start_local": "2023-09-28 20:10:57",
        "status": "downloaded",
        "file": "../victim.fit",
        "size": 8,
    }
    (dest / "garminsync.json").write_text(
        json.dumps({"version": 1, "activities": {"12129115726": entry}})
    )
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == b"precious"
    assert manifest(dest)["activities"]["12129115726"]["file"].startswith("activity_")
    assert_dest_is_truthful(dest, garmin)


def test_a_read_only_dest_is_named_and_left_alone(garmin, real_account, env, dest, tmp_path):
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    if os.geteuid() == 0:  # root ignores modes: make it a read-only mount, as systemd would
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
            str(dest),
            sys.executable,
            str(SCRIPT),
            "--dest",
            str(dest),
        ]
    else:
        dest.chmod(0o555)
        command = [sys.executable, str(SCRIPT), "--dest", str(dest)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    dest.chmod(0o755)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(dest) in line and ("read-only" in line or "ermission" in line)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]


def test_a_dest_with_spaces_and_unicode_works(garmin, real_account, run, tmp_path):
    odd = tmp_path / "my runs — Zürich 🏔"
    assert run("--dest", odd).returncode == 0
    assert len(saved_files(odd)) == 9
    assert run("--list", "all", "--offline", "--dest", odd).returncode == 0


def test_a_corrupt_token_file_asks_for_login(garmin, real_account, run, env, session_saved, dest):
    session_saved.write_text("{not json")
    result = run("--dest", dest)
    assert result.returncode == 3
    assert "--login" in one_error_line(result.stderr)
    assert "unreadable" in result.stderr


def test_a_token_file_open_to_others_is_tightened_and_used(
    garmin, real_account, run, env, session_saved, dest
):
    session_saved.chmod(0o644)
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert "tightened it to 0600" in result.stderr
    assert session_saved.stat().st_mode & 0o777 == 0o600


# --- concurrency


def pause_at(garmin, path: str) -> tuple[threading.Event, threading.Event]:
    """Hold the first request to `path` until released: (arrived, release)."""
    arrived, release = threading.Event(), threading.Event()

    def hold(host: str, request_path: str, query: dict) -> None:
        if request_path.startswith(path) and not arrived.is_set():
            arrived.set()
            release.wait(60)

    garmin.on_request = hold
    return arrived, release


def test_a_second_sync_while_one_works_exits_75(garmin, real_account, env, run, dest):
    arrived, release = pause_at(garmin, DOWNLOAD)
    first = start(env, "--dest", dest)
    assert arrived.wait(30)  # the first sync holds DEST, in the middle of its downloads
    second = run("--dest", dest)
    release.set()
    assert first.wait(timeout=60) == 0
    assert second.returncode == 75 and "another garminsync run" in second.stderr
    assert len(saved_files(dest)) == 9
    assert_dest_is_truthful(dest, garmin)


def test_offline_list_during_a_sync_reads_a_consistent_manifest(
    garmin, many_activities, env, run, dest
):
    ids = many_activities(150)
    arrived, release = pause_at(garmin, DOWNLOAD + str(ids[75]))
    sync = start(env, "--dest", dest, "-q")
    assert arrived.wait(60)  # halfway through the downloads
    during = run("--list", "all", "--offline", "--json", "--dest", dest)
    release.set()
    assert sync.wait(timeout=60) == 0
    after = run("--list", "all", "--offline", "--json", "--dest", dest)
    for listing in (during, after):
        assert listing.returncode == 0, listing.stderr
    assert len(json.loads(during.stdout)) <= len(json.loads(after.stdout)) == 150
    assert_dest_is_truthful(dest, garmin)


def test_count_endpoint_garbage_is_a_listing_failure(garmin, real_account, run, dest):
    garmin.add_fault(COUNT, body(b'{"totalCount": "many"}'), times=None)
    result = run("--dest", dest)
    assert result.returncode == 1
    assert "count" in one_error_line(result.stderr)
