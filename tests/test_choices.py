"""Choosing what to keep: --type (with Garmin's table of sub-types), --also gpx,tcx,json
(Garmin's exports beside each original) and --profile (one Garmin account per profile).
Every test runs garminsync.py as a subprocess against the fake Garmin; nothing is patched.
"""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timedelta, timezone

import pytest
from fake_garmin import (
    GPX_ID,
    MANUAL_ID,
    FakeGarmin,
    make_activity,
    routing_env,
    status,
    synthetic_fit,
)
from helpers import (
    COUNT,
    LIST,
    assert_dest_is_truthful,
    downloads,
    manifest,
    one_error_line,
    saved_files,
    temp_files,
)

TYPES = "/activity-service/activity/activityTypes"
EXPORT = "/download-service/export/"
GPX_EXPORT = EXPORT + "gpx/activity/"
GPX_NS = "{http://www.topografix.com/GPX/1/1}"
TCX_NS = "{http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2}"
RUNNING = {"running", "trail_running", "treadmill_running", "track_running"}
CYCLING = {"cycling", "road_biking", "mountain_biking", "indoor_cycling", "gravel_cycling"}
MIXED = {  # typeKey -> how many activities of it
    "running": 2, "trail_running": 1, "treadmill_running": 1, "track_running": 1,
    "road_biking": 3, "mountain_biking": 1, "indoor_cycling": 1, "gravel_cycling": 1,
    "hiking": 1, "strength_training": 1,
}  # fmt: skip


def add_mixed(garmin) -> dict[int, str]:
    """The MIXED activities, a day apart; returns id -> typeKey."""
    kinds, n = {}, 0
    for key, times in MIXED.items():
        for _ in range(times):
            aid = 70_000 + n
            start = datetime(2024, 5, 1, 7, 0) + timedelta(days=n, minutes=n)
            garmin.add_activity(make_activity(aid, start, key), synthetic_fit(aid), "fit")
            kinds[aid], n = key, n + 1
    return kinds


def ids_of(kinds: dict[int, str], types: set[str]) -> set[int]:
    return {aid for aid, key in kinds.items() if key in types}


def export_path(dest, entry: dict, fmt: str):
    start = entry["start_local"].replace(" ", "_").replace(":", "-")
    return dest / fmt / f"activity_{entry['id']}_{start}.{fmt}"


def requested_ids(garmin, prefix: str) -> list[int]:
    return [int(e.path.rsplit("/", 1)[1]) for e in garmin.requests_to(prefix)]


# --- --type


@pytest.mark.parametrize(
    "how, key, family",
    [("flag", "running", RUNNING), ("flag", "cycling", CYCLING), ("env", "cycling", CYCLING)],
)
def test_a_type_downloads_that_type_and_its_sub_types_only(
    garmin, run, env, dest, how, key, family
):
    kinds = add_mixed(garmin)
    args = ("--type", key) if how == "flag" else ()
    if how == "env":
        env["GARMINSYNC_TYPES"] = key
    result = run("--dest", dest, *args, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(downloads(garmin)) == sorted(ids_of(kinds, family))
    assert set(saved_files(dest)) == ids_of(kinds, family)


def test_a_run_without_a_type_never_asks_for_the_type_table(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest).returncode == 0
    assert garmin.requests_to(TYPES) == []
    assert manifest(dest)["activity_types"] is None


def test_garmins_type_table_is_kept_in_the_manifest(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest, "--type", "running").returncode == 0
    assert len(garmin.requests_to(TYPES)) == 1
    kept = manifest(dest)["activity_types"]
    assert kept["parents"]["gravel_cycling"] == "cycling"
    assert kept["parents"]["running"] == "all" and kept["parents"]["all"] is None
    fetched = datetime.strptime(kept["fetched_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(fetched - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=5)


@pytest.mark.parametrize("days, fetches", [(0, 0), (6, 0), (8, 1)])
def test_the_type_table_is_fetched_again_only_when_a_week_old(garmin, run, dest, days, fetches):
    add_mixed(garmin)
    assert run("--dest", dest, "--type", "running").returncode == 0
    data, then = manifest(dest), datetime.now(timezone.utc) - timedelta(days=days)
    data["activity_types"]["fetched_at"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
    (dest / "garminsync.json").write_text(json.dumps(data))
    garmin.clear_log()
    assert run("--dest", dest, "--type", "running").returncode == 0
    assert len(garmin.requests_to(TYPES)) == fetches


def test_an_unknown_type_is_exit_2_naming_the_closest_known_ones(garmin, run, dest):
    add_mixed(garmin)
    result = run("--dest", dest, "--type", "runing")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "'runing'" in line and re.search(r"closest: .*\brunning\b", line), line
    assert downloads(garmin) == []


def test_list_types_prints_each_type_with_its_count_most_first(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest).returncode == 0
    result = run("--list", "types", "--offline", "--dest", dest)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [(int(n), key) for n, key in rows] == sorted(
        ((n, key) for key, n in MIXED.items()), key=lambda r: (-r[0], r[1])
    )


def test_list_types_json_is_a_map_of_type_to_count_most_first(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest).returncode == 0
    result = run("--list", "types", "--offline", "--json", "--dest", dest)
    counts = json.loads(result.stdout)
    assert counts == MIXED
    assert list(counts)[0] == "road_biking"  # 3, the most


def test_a_filtered_sync_learns_every_activity_so_widening_needs_no_listing(garmin, run, dest):
    kinds = add_mixed(garmin)
    assert run("--dest", dest, "--type", "running").returncode == 0
    entries = manifest(dest)["activities"]
    assert set(map(int, entries)) == set(kinds)
    assert {entries[str(i)]["status"] for i in ids_of(kinds, CYCLING)} == {"pending"}
    garmin.clear_log()
    result = run("--dest", dest, "--type", "running,cycling")
    assert result.returncode == 0, result.stderr
    assert sorted(downloads(garmin)) == sorted(ids_of(kinds, CYCLING))
    assert len(garmin.requests_to(COUNT)) == 1 and garmin.requests_to(LIST) == []


def test_an_offline_list_with_a_type_shows_only_those_types(garmin, run, dest):
    kinds = add_mixed(garmin)
    assert run("--dest", dest, "--type", "running").returncode == 0
    result = run("--list", "all", "--offline", "--type", "cycling", "--dest", dest)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert {int(r[0]) for r in rows} == ids_of(kinds, CYCLING)
    assert {r[3] for r in rows} <= CYCLING


def test_without_garmins_type_table_a_type_filter_downloads_nothing(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest, "--limit", "1").returncode == 0
    garmin.add_fault(TYPES, status(404), times=None)
    garmin.clear_log()
    result = run("--dest", dest, "--type", "running")
    assert result.returncode == 75
    assert "--type needs it" in one_error_line(result.stderr)
    assert downloads(garmin) == []


def test_offline_without_the_type_table_a_filter_says_how_to_get_it(garmin, run, dest):
    add_mixed(garmin)
    assert run("--dest", dest).returncode == 0  # no filter yet: no table
    result = run("--list", "all", "--offline", "--type", "running", "--dest", dest)
    assert (result.returncode, result.stdout) == (2, "")
    assert "run a sync with --type once" in one_error_line(result.stderr)


def test_strava_keeps_to_the_types_when_the_garmin_step_stops_first(garmin, strava, run, dest):
    kinds = add_mixed(garmin)
    assert run("--dest", dest, "--type", "running").returncode == 0  # the table is kept
    assert run("--dest", dest).returncode == 0  # every type's original is in DEST
    garmin.expire_access_token()
    garmin.refresh_token = "revoked"  # noqa: S105 (the Garmin step now ends with exit 3)
    result = run("--dest", dest, "--type", "running", "--strava", "--strava-since", "2000-01-01")
    assert result.returncode == 3
    sent = sorted(u.external_id for u in strava.uploads.values())
    assert sent == sorted(f"garmin_{i}" for i in ids_of(kinds, RUNNING))


def test_strava_gets_only_the_chosen_types(garmin, strava, run, dest):
    kinds = add_mixed(garmin)
    assert run("--dest", dest).returncode == 0  # every type's original is in DEST
    result = run("--dest", dest, "--type", "running", "--strava", "--strava-since", "2000-01-01")
    assert result.returncode == 0, result.stderr
    sent = sorted(u.external_id for u in strava.uploads.values())
    assert sent == sorted(f"garmin_{i}" for i in ids_of(kinds, RUNNING))


# --- --also


@pytest.mark.parametrize("how", ["flag", "env"])
def test_garmins_gpx_and_tcx_exports_are_kept_beside_each_original(
    garmin, real_account, run, env, dest, how
):
    if how == "env":
        env["GARMINSYNC_ALSO"] = "gpx,tcx"
    result = run("--dest", dest, *(("--also", "gpx,tcx") if how == "flag" else ()), env=env)
    assert result.returncode == 0, result.stderr
    recorded = [e for e in manifest(dest)["activities"].values() if e["status"] == "downloaded"]
    assert len(recorded) == 9
    for entry in recorded:
        assert entry["exports"] == {"gpx": "saved", "tcx": "saved"}
        gpx = ElementTree.parse(export_path(dest, entry, "gpx")).getroot()
        assert gpx.tag == GPX_NS + "gpx"
        start_gmt = entry["start_gmt"].replace(" ", "T") + "Z"
        assert gpx.findtext(f"{GPX_NS}metadata/{GPX_NS}time") == start_gmt
        tcx = ElementTree.parse(export_path(dest, entry, "tcx")).getroot()
        assert tcx.tag == TCX_NS + "TrainingCenterDatabase"
        activity_id = tcx.findtext(f"{TCX_NS}Activities/{TCX_NS}Activity/{TCX_NS}Id")
        assert activity_id == entry["start_local"].replace(" ", "T") + "Z"
    assert_dest_is_truthful(dest, garmin)


def test_the_json_summary_is_the_list_entry_with_no_request_of_its_own(
    garmin, many_activities, run, dest
):
    ids = many_activities(3)
    result = run("--dest", dest, "--also", "json")
    assert result.returncode == 0, result.stderr
    assert len(garmin.log) == 2 + 3  # the count, the list and the 3 originals
    listed = {a["activityId"]: a for a in garmin.activities}
    for aid in ids:
        entry = manifest(dest)["activities"][str(aid)]
        assert json.loads(export_path(dest, entry, "json").read_text()) == listed[aid]
        assert entry["exports"] == {"json": "saved"}


def test_the_json_summary_is_kept_even_when_the_original_fails(garmin, many_activities, run, dest):
    (aid,) = many_activities(1)
    garmin.add_fault(f"/download-service/files/activity/{aid}", status(403), times=None)
    assert run("--dest", dest, "--also", "json").returncode == 1
    entry = manifest(dest)["activities"][str(aid)]
    assert entry["status"] == "failed"
    assert json.loads(export_path(dest, entry, "json").read_text())["activityId"] == aid


HTML_PAGES = [
    b"<html><head><title>Garmin Connect</title></head><body><h1>Oops</h1></body></html>",
    b"<!DOCTYPE html>\n<html><body><p>Service unavailable<br></body></html>",
]


@pytest.mark.parametrize("page", HTML_PAGES, ids=["well-formed", "loose"])
def test_an_html_page_for_an_export_is_refused_and_fails_nothing_else(
    garmin, many_activities, run, dest, page
):
    bad, good = many_activities(2)
    garmin.add_fault(GPX_EXPORT + str(bad), status(200, body=page), times=None)
    result = run("--dest", dest, "--also", "gpx")
    assert result.returncode == 0, result.stderr
    assert "GPX of" in one_error_line(result.stderr)
    entries = manifest(dest)["activities"]
    assert entries[str(bad)]["exports"]["gpx"].startswith("failed: ")
    assert not export_path(dest, entries[str(bad)], "gpx").exists()
    assert temp_files(dest / "gpx") == []
    assert entries[str(good)]["exports"] == {"gpx": "saved"}
    assert saved_files(dest)[bad].read_bytes() == garmin.original(bad)


def test_a_refused_export_is_asked_again_next_run(garmin, many_activities, run, dest):
    bad, _ = many_activities(2)
    garmin.add_fault(GPX_EXPORT + str(bad), status(200, body=HTML_PAGES[0]), times=None)
    assert run("--dest", dest, "--also", "gpx").returncode == 0
    garmin.clear_faults()
    garmin.clear_log()
    assert run("--dest", dest, "--also", "gpx").returncode == 0
    assert requested_ids(garmin, EXPORT) == [bad] and downloads(garmin) == []
    entry = manifest(dest)["activities"][str(bad)]
    assert entry["exports"] == {"gpx": "saved"}
    assert ElementTree.parse(export_path(dest, entry, "gpx")).getroot().tag == GPX_NS + "gpx"


def test_a_deleted_export_is_fetched_again(garmin, many_activities, run, dest):
    ids = many_activities(2)
    assert run("--dest", dest, "--also", "gpx,json").returncode == 0
    entry = manifest(dest)["activities"][str(ids[0])]
    for fmt in ("gpx", "json"):
        export_path(dest, entry, fmt).unlink()
    garmin.clear_log()
    assert run("--dest", dest, "--also", "gpx,json").returncode == 0
    assert requested_ids(garmin, GPX_EXPORT) == [ids[0]]
    assert ElementTree.parse(export_path(dest, entry, "gpx")).getroot().tag == GPX_NS + "gpx"


def test_json_summaries_follow_the_type_filter(garmin, run, dest):
    kinds = add_mixed(garmin)
    assert run("--dest", dest, "--type", "running", "--also", "json").returncode == 0
    kept = {int(p.name.split("_")[1]) for p in (dest / "json").iterdir()}
    assert kept == ids_of(kinds, RUNNING)


def test_a_manual_activity_has_no_exports_and_none_is_asked_for(garmin, real_account, run, dest):
    assert run("--dest", dest, "--also", "gpx,tcx").returncode == 0
    assert manifest(dest)["activities"][str(MANUAL_ID)]["exports"] == {"gpx": "none", "tcx": "none"}
    assert MANUAL_ID not in requested_ids(garmin, EXPORT)
    assert len(requested_ids(garmin, EXPORT)) == 2 * 9


def test_a_gpx_original_never_collides_with_its_gpx_export(garmin, real_account, run, dest):
    assert run("--dest", dest, "--also", "gpx").returncode == 0
    entry = manifest(dest)["activities"][str(GPX_ID)]
    original = dest / entry["file"]
    assert original.parent == dest and original.suffix == ".gpx"
    assert original.read_bytes() == garmin.original(GPX_ID)
    export = export_path(dest, entry, "gpx")
    assert export.name == original.name and export.read_bytes() != original.read_bytes()
    assert b"Garmin Connect" in export.read_bytes()


def test_a_rebuilt_manifest_takes_no_export_for_an_original(garmin, real_account, run, dest):
    assert run("--dest", dest, "--also", "gpx,tcx").returncode == 0
    (dest / "garminsync.json").unlink()
    garmin.clear_log()
    result = run("--dest", dest, "--also", "gpx,tcx")
    assert result.returncode == 0, result.stderr
    assert downloads(garmin) == [] and garmin.requests_to(EXPORT) == []
    entries = manifest(dest)["activities"]
    assert set(map(int, entries)) == set(real_account)
    for aid, path in saved_files(dest).items():
        assert entries[str(aid)]["file"] == path.name
    assert_dest_is_truthful(dest, garmin)


def test_an_export_without_its_original_is_not_adopted(garmin, real_account, run, dest):
    assert run("--dest", dest, "--also", "gpx,tcx").returncode == 0
    gone = real_account[0]
    saved_files(dest)[gone].unlink()
    (dest / "garminsync.json").unlink()
    result = run("--list", "all", "--offline", "--json", "--dest", dest)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert gone not in {r["id"] for r in rows} and len(rows) == 8
    assert all("/" not in r["file"] for r in rows)


def test_exports_backfill_newest_first_within_the_limit(garmin, many_activities, run, dest):
    ids = many_activities(5)
    assert run("--dest", dest).returncode == 0
    for batch in (ids[:2], ids[2:4], ids[4:]):
        garmin.clear_log()
        result = run("--dest", dest, "--also", "gpx", "--limit", "2")
        assert result.returncode == 0, result.stderr
        assert requested_ids(garmin, GPX_EXPORT) == batch


def test_export_requests_are_paced_like_every_garmin_request(garmin, many_activities, run, dest):
    many_activities(2)
    result = run("--dest", dest, "--also", "gpx,tcx", "--delay", "0.3")
    assert result.returncode == 0, result.stderr
    times = [e.time for e in garmin.log]
    assert len(garmin.requests_to(EXPORT)) == 4 and len(times) == 2 + 2 + 4
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.29
    assert manifest(dest)["last_run"]["requests"] == len(times)  # counted like every request


# --- --profile


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def profile_env(bare_env, home) -> dict[str, str]:
    """`bare_env` with HOME of its own and no GARMINTOKENS: the profile decides."""
    return {**{k: v for k, v in bare_env.items() if k != "GARMINTOKENS"}, "HOME": str(home)}


def session_dir(home, name: str):
    return home / ".local/state/garminsync" / name


def status_of(run, env, *args) -> dict:
    result = run("--status", "--offline", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_profile_has_its_own_dest_and_session(
    garmin, many_activities, run, profile_env, home, how
):
    ids = many_activities(2)
    garmin.seed_tokens(session_dir(home, "alice"))
    args = ("--profile", "alice") if how == "flag" else ()
    if how == "env":
        profile_env["GARMINSYNC_PROFILE"] = "alice"
    result = run(*args, env=profile_env)
    assert result.returncode == 0, result.stderr
    assert set(saved_files(home / "fit" / "alice")) == set(ids)
    status_ = status_of(run, profile_env, *args)
    assert status_["dest"] == str(home / "fit" / "alice")
    assert status_["token_store"] == str(session_dir(home, "alice") / "garmin_tokens.json")


def test_two_profiles_share_no_session_manifest_or_lock(
    garmin, ca, ca_bundle, run, profile_env, home
):
    other = FakeGarmin(ca).start()
    try:
        for fake, aid in ((garmin, 81), (other, 82)):
            start = datetime(2024, 3, 1, 8, 0)
            fake.add_activity(make_activity(aid, start), synthetic_fit(aid), "fit")
        garmin.seed_tokens(session_dir(home, "alice"))
        other.seed_tokens(session_dir(home, "bob"))  # other tokens: the fakes refuse each other's
        both_listing = threading.Barrier(2, timeout=20)  # each run holds its lock meanwhile

        def meet(host, path, query):
            if path == LIST:
                both_listing.wait()

        garmin.on_request = other.on_request = meet
        bob_env = {**profile_env, **routing_env(other.proxy_url, ca_bundle)}
        done = {}
        bob = threading.Thread(target=lambda: done.update(bob=run("--profile", "bob", env=bob_env)))
        bob.start()
        alice = run("--profile", "alice", env=profile_env)
        bob.join()
        assert alice.returncode == 0, alice.stderr
        assert done["bob"].returncode == 0, done["bob"].stderr
        assert list(saved_files(home / "fit" / "alice")) == [81]
        assert list(saved_files(home / "fit" / "bob")) == [82]
        for name in ("alice", "bob"):
            assert (home / "fit" / name / "garminsync.json").is_file()
            assert (home / "fit" / name / ".garminsync.lock").is_file()
    finally:
        other.stop()
    assert not other.errors


def test_a_profile_without_a_session_names_itself_in_the_hint(garmin, run, profile_env):
    result = run("--profile", "carol", env=profile_env)
    assert result.returncode == 3
    assert "--profile carol --login` once" in one_error_line(result.stderr)


def test_a_profiles_settings_file_applies(garmin, run, profile_env, home, tmp_path):
    kinds = add_mixed(garmin)
    garmin.seed_tokens(session_dir(home, "alice"))
    elsewhere = tmp_path / "elsewhere"
    (home / ".config/garminsync").mkdir(parents=True)
    settings = f'GARMINSYNC_DEST="{elsewhere}"\n# a comment\nGARMINSYNC_TYPES=cycling\n'
    (home / ".config/garminsync/alice.env").write_text(settings)
    result = run("--profile", "alice", env=profile_env)
    assert result.returncode == 0, result.stderr
    assert set(saved_files(elsewhere)) == ids_of(kinds, CYCLING)
    assert not (home / "fit").exists()


def test_the_environment_wins_over_a_profiles_settings_file(garmin, run, profile_env, home):
    kinds = add_mixed(garmin)
    garmin.seed_tokens(session_dir(home, "alice"))
    (home / ".config/garminsync").mkdir(parents=True)
    (home / ".config/garminsync/alice.env").write_text("GARMINSYNC_TYPES=cycling\n")
    profile_env["GARMINSYNC_TYPES"] = "running"
    assert run("--profile", "alice", env=profile_env).returncode == 0
    assert set(saved_files(home / "fit" / "alice")) == ids_of(kinds, RUNNING)


def test_explicit_dest_and_garmintokens_win_over_a_profile(run, profile_env, tmp_path):
    profile_env["GARMINTOKENS"] = str(tmp_path / "tokens")
    status_ = status_of(run, profile_env, "--profile", "alice", "--dest", tmp_path / "mine")
    assert status_["dest"] == str(tmp_path / "mine")
    assert status_["token_store"] == str(tmp_path / "tokens" / "garmin_tokens.json")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x" * 33, "-rf"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_invalid_profile_name_is_exit_2(garmin, run, profile_env, home, name, how):
    if how == "env":
        profile_env["GARMINSYNC_PROFILE"] = name
    result = run(*(("--profile=" + name,) if how == "flag" else ()), env=profile_env)
    assert result.returncode == 2
    assert "profile" in one_error_line(result.stderr)
    assert list(home.iterdir()) == [] and garmin.log == []
