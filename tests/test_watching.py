"""Watching the runs (issue 11): the run history, the report page, the metrics file, the
pings of a healthchecks.io-style service, and trouble that lasts; against the fakes."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from fake_garmin import make_activity, reset, status, synthetic_fit, trickle
from fake_ping import FakePings
from helpers import DOWNLOAD, manifest, one_error_line, saved_files, start, wait_for
from prometheus_client.parser import text_string_to_metric_families

CONNECTAPI = "connectapi.garmin.com"
STAMP = "%Y-%m-%dT%H:%M:%SZ"
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HOSTILE = ("</script><script>alert(1)</script>", '"><svg onload=alert(1)>')
GARMIN_LINK = re.compile(r"https://connect\.garmin\.com/modern/activity/\d+")
STATUSES = ("pending", "downloaded", "no_file", "failed", "set_aside")
CLOSING = re.compile(r"\d+ downloaded, \d+ failed; files in .+")


def ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).strftime(STAMP)


def timestamp(stamp: str) -> float:
    return datetime.strptime(stamp, STAMP).replace(tzinfo=timezone.utc).timestamp()


def edit_manifest(dest: Path, **fields) -> dict:
    data = {**manifest(dest), **fields}
    (dest / "garminsync.json").write_text(json.dumps(data))
    return data


def seeded_run(started_at: str, result: str = "ok") -> dict:
    code = {"ok": 0, "failed": 1}.get(result, 75)
    return dict(action="missing", started_at=started_at, finished_at=started_at, duration_s=1.0,
                result=result, exit_code=code, error=None, listed=0, new=0, downloaded=0,
                no_file=0, failed=0, set_aside=0, uploaded=0, requests=1)  # fmt: skip


@pytest.fixture
def pings(garmin, env) -> FakePings:
    """The fake ping service behind the proxy, its URL in `env` as GARMINSYNC_PING_URL."""
    garmin.pings = FakePings()
    env["GARMINSYNC_PING_URL"] = garmin.pings.url
    return garmin.pings


class Page(HTMLParser):
    """The report page: every element and its attributes, the rows (cells as text) of the
    tables under each h2, and the <title> texts of the chart."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.headings: list[str] = [""]  # "": before the first h2
        self.rows: dict[str, list[list[str]]] = {"": []}
        self.titles: list[str] = []
        self._text: list[str] | None = None
        self._in_svg = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_svg |= tag == "svg"
        self._text = [] if tag in ("h2", "td", "th", "title") else self._text
        if tag == "tr":
            self.rows[self.headings[-1]].append([])

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text or [])
        if tag == "h2":
            self.headings.append(text)
            self.rows[text] = []
        elif tag in ("td", "th"):
            self.rows[self.headings[-1]][-1].append(text)
        elif tag == "title" and self._in_svg:
            self.titles.append(text)
        self._in_svg &= tag != "svg"
        self._text = None if tag in ("h2", "td", "th", "title") else self._text

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def table(self, heading: str) -> list[list[str]]:
        return self.rows[heading][1:]  # without the header row


def read_page(dest: Path) -> Page:
    return Page((dest / "garminsync.html").read_text(encoding="utf-8"))


def metrics(path: Path) -> dict:
    """name -> value, or name -> {label value: value} for the labelled family."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            if sample.labels:
                found.setdefault(sample.name, {})[sample.labels["status"]] = sample.value
            else:
                found[sample.name] = sample.value
    return found


# --- the run history


def test_each_sync_run_is_added_to_the_history(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    first = manifest(dest)["runs"]
    assert run("--dest", dest).returncode == 0
    data = manifest(dest)
    assert data["runs"][0] == first[0] and len(data["runs"]) == 2
    newest = data["runs"][-1]
    assert data["last_run"] == newest and data["last_success"] == newest["finished_at"]
    assert set(newest) == set(seeded_run("")) | {"finished_at", "duration_s"}
    assert ISO_Z.fullmatch(newest["started_at"]) and ISO_Z.fullmatch(newest["finished_at"])
    assert (first[0]["listed"], first[0]["new"], first[0]["downloaded"]) == (10, 10, 9)
    assert (newest["result"], newest["exit_code"], newest["error"]) == ("ok", 0, None)
    assert newest["downloaded"] == 0 and newest["requests"] == 1  # the count alone


def test_the_history_keeps_the_last_100_runs(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    seeded = [seeded_run(ago(days=200 - i)) for i in range(100)]
    edit_manifest(dest, runs=seeded)
    assert run("--dest", dest).returncode == 0
    runs = manifest(dest)["runs"]
    assert len(runs) == 100
    assert runs[:99] == seeded[1:]  # the oldest went, the order stayed
    assert runs[-1]["started_at"] > seeded[-1]["started_at"]


READ_ONLY = ["--dry-run", "--list all", "--list all --offline", "--status", "--status --offline",
             "--report", "--login"]  # fmt: skip


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_actions_record_no_run_and_send_no_ping(real_account, run, dest, pings, args):
    assert run("--dest", dest).returncode == 0
    before, _ = manifest(dest)["runs"], pings.received.clear()
    result = run(*args.split(), "--dest", dest, input="\n")
    assert result.returncode == (3 if args == "--login" else 0), result.stderr
    assert (manifest(dest)["runs"], pings.received) == (before, [])


def test_status_shows_the_history(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    runs = [
        seeded_run(ago(hours=h), word) for h, word in ((9, "ok"), (5, "rate limited"), (3, "ok"))
    ]
    edit_manifest(dest, runs=runs, last_success=runs[-1]["finished_at"])
    text = run("--status", "--offline", "--dest", dest).stdout
    line = "history:    last 3 runs: 2 ok, 1 rate limited; last success 3 hours ago"
    assert line in text.splitlines(), text
    shown = json.loads(run("--status", "--offline", "--json", "--dest", dest).stdout)
    assert (shown["runs"], shown["last_success"]) == (runs, runs[-1]["finished_at"])


def test_status_says_when_no_run_ever_succeeded(garmin, real_account, run, dest):
    garmin.unreachable.add(CONNECTAPI)
    assert run("--dest", dest).returncode == 75
    text = run("--status", "--offline", "--dest", dest).stdout
    assert "history:    last run: 1 unreachable; last success never" in text, text


@pytest.mark.parametrize("how", ["deleted", "corrupt"])
def test_a_rebuilt_manifest_starts_a_new_history(garmin, real_account, run, dest, how):
    assert run("--dest", dest).returncode == 0
    assert run("--dest", dest).returncode == 0
    if how == "deleted":
        (dest / "garminsync.json").unlink()
    else:
        (dest / "garminsync.json").write_text('{"activities": {')
    assert run("--dest", dest).returncode == 0
    data = manifest(dest)
    assert len(data["runs"]) == 1 and data["last_success"] == data["runs"][0]["finished_at"]


def test_a_strava_only_run_is_recorded_with_its_uploads(garmin, real_account, run, dest, strava):
    assert run("--dest", dest).returncode == 0
    result = run("--strava-only", "--strava-since", "2000-01-01", "--dest", dest)
    assert result.returncode == 0, result.stderr
    runs = manifest(dest)["runs"]
    assert [r["action"] for r in runs] == ["missing", "strava-only"]
    assert runs[-1]["uploaded"] == len(strava.uploads) == 9


# --- the report page


def test_the_status_table_counts_what_the_manifest_holds(garmin, real_account, run, dest):
    for refused in real_account[0], real_account[2]:
        garmin.add_fault(DOWNLOAD + str(refused), status(403), times=None)
    assert run("--dest", dest).returncode == 1
    data = manifest(dest)
    data["activities"][str(real_account[1])]["gone_since"] = ago(days=1)
    data["activities"][str(real_account[2])]["status"] = "set_aside"
    (dest / "garminsync.json").write_text(json.dumps(data))
    assert run("--report", "--dest", dest).returncode == 0
    shown = dict(read_page(dest).table("Activities"))
    entries = manifest(dest)["activities"].values()
    for status_ in STATUSES:
        word = status_.replace("_", " ")
        assert shown[word] == str(sum(e["status"] == status_ for e in entries)), word
    assert shown["gone from Garmin"] == "1"
    size = sum(e["size"] or 0 for e in entries if e["status"] == "downloaded")
    assert float(shown["size of the files"].split()[0]) == pytest.approx(size / 1e6, abs=0.05)
    assert shown["free space in DEST"].endswith("GB")


def add_hostile_names(garmin) -> None:
    for n, name in enumerate(HOSTILE):
        when = datetime(2026, 10, 1 + n, 7, 0)
        garmin.add_activity(make_activity(90 + n, when, name=name), synthetic_fit(90 + n))


def test_the_page_runs_no_script_and_links_only_to_garmin_and_dest(garmin, run, dest):
    add_hostile_names(garmin)
    assert run("--dest", dest).returncode == 0
    page = read_page(dest)
    local = {p.name for p in dest.iterdir()}
    assert "script" not in [tag for tag, _ in page.elements]
    for tag, attrs in page.elements:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src", "xlink:href", "action", "srcset", "formaction"):
            if name in attrs:
                link = attrs[name]
                assert GARMIN_LINK.fullmatch(link) or unquote(link) in local, link
    assert sum(a.get("href", "").startswith("activity_") for _, a in page.elements) == 2


def test_hostile_names_show_as_text(garmin, run, dest):
    add_hostile_names(garmin)
    assert run("--dest", dest).returncode == 0
    names = [row[3] for row in read_page(dest).table("Newest activities")]
    assert sorted(names) == sorted(HOSTILE)


def test_the_month_chart_counts_each_month_and_type(garmin, run, dest, many_activities):
    yesterday = datetime.now() - timedelta(days=1)
    many_activities(45, newest=yesterday)
    for i in range(5):
        start = yesterday - timedelta(days=7 * i, hours=3)
        garmin.add_activity(make_activity(70 + i, start, "cycling"), synthetic_fit(70 + i))
    assert run("--dest", dest).returncode == 0
    expected: dict[str, int] = {}
    for e in manifest(dest)["activities"].values():
        key = f"{e['start_local'][:7]}: {{}} {e['type']}"
        expected[key] = expected.get(key, 0) + 1
    page = read_page(dest)
    assert sorted(page.titles) == sorted(key.format(n) for key, n in expected.items())
    assert sum(tag == "rect" for tag, _ in page.elements) == len(expected)


def test_the_yearly_totals_are_garmins_distance_and_moving_time(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    sums: dict[tuple[str, str], list[float]] = {}
    for a in garmin.activities:
        total = sums.setdefault((a["startTimeLocal"][:4], a["activityType"]["typeKey"]), [0, 0, 0])
        total[0] += 1
        total[1] += a["distance"]
        total[2] += a["movingDuration"]
    rows = read_page(dest).table("Totals per year and type")
    assert len(rows) == len(sums)
    for year, kind, n, km, moving in rows:
        count, metres, secs = sums[(year, kind)]
        assert (int(n), float(km)) == (count, round(metres / 1000, 1)), (year, kind)
        h, m = moving.split(":")
        assert abs(int(h) * 60 + int(m) - secs / 60) <= 1, (year, kind, moving)


def test_the_newest_50_activities_link_to_garmin_and_their_files(run, dest, many_activities):
    ids = many_activities(60)
    assert run("--dest", dest).returncode == 0
    rows = read_page(dest).table("Newest activities")
    assert [int(row[0]) for row in rows] == ids[:50]
    links = [a["href"] for t, a in read_page(dest).elements if t == "a"]
    files = saved_files(dest)
    for activity_id in ids[:50]:
        assert f"https://connect.garmin.com/modern/activity/{activity_id}" in links
        assert files[activity_id].name in map(unquote, links)


def test_report_writes_the_page_with_its_sections_offline(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    (dest / "garminsync.html").unlink()
    garmin.clear_log()
    result = run("--report", "--dest", dest)
    assert (result.returncode, result.stdout) == (0, f"{dest / 'garminsync.html'}\n")
    assert garmin.log == []
    assert read_page(dest).headings[1:] == [
        "Activities", "Activities per month", "Totals per year and type", "Recent runs",
        "Failed or set aside", "Newest activities",
    ]  # fmt: skip


def test_the_page_is_written_again_only_when_something_changed(garmin, real_account, run, dest):
    page = dest / "garminsync.html"
    assert run("--dest", dest).returncode == 0
    page.write_text("as left")
    assert run("--dest", dest).returncode == 0
    assert page.read_text() == "as left"  # nothing new, the same result
    garmin.unreachable.add(CONNECTAPI)
    assert run("--dest", dest).returncode == 75
    assert page.read_text() != "as left"  # the result changed
    page.unlink()
    assert run("--dest", dest).returncode == 75
    assert page.exists()  # the page was missing


# BUG in garminsync.py (write_report, line 2736 at 0a90945): `--report` on a DEST that does
# not exist calls shutil.disk_usage(store.dest) (then atomic_write) on the missing folder;
# main() reports "unexpected FileNotFoundError ... please report it", exit 1. Fix: in cmd_sync
# (line ~1987) make --report on a missing DEST either create it (prepare_dest) or stop with
# Fatal(EXIT_USAGE, f"{dest} does not exist: nothing to report yet; pick another --dest").
def test_report_on_a_dest_not_made_yet_ends_cleanly(run, dest):
    result = run("--report", "--dest", dest)
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    if result.returncode == 0:
        assert result.stdout == f"{dest / 'garminsync.html'}\n" and read_page(dest).headings
    else:
        assert result.returncode == 2 and str(dest) in one_error_line(result.stderr)


def test_a_page_of_10000_activities_is_under_1_mb(run, dest):
    dest.mkdir()
    activities = {
        str(i): {"id": i, "start_local": f"20{10 + i % 16}-0{1 + i % 9}-1{i % 10} 07:00:00",
                 "status": "downloaded" if i % 7 else "failed", "type": "running",
                 "name": f"Morning run number {i}", "distance": 10123.4, "moving_s": 3012.5}
        for i in range(1, 10_001)
    }  # fmt: skip
    (dest / "garminsync.json").write_text(json.dumps({"version": 1, "activities": activities}))
    result = run("--report", "--dest", dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "garminsync.html").stat().st_size < 1_000_000
    assert len(read_page(dest).table("Newest activities")) == 50


# --- the metrics file


def test_metrics_are_what_the_manifest_says(garmin, real_account, run, env, dest, tmp_path):
    prom = tmp_path / "textfile" / "garminsync.prom"
    prom.parent.mkdir()
    result = run("--dest", dest, env={**env, "GARMINSYNC_METRICS_FILE": str(prom)})
    assert result.returncode == 0, result.stderr
    data, got = manifest(dest), metrics(prom)
    last = data["last_run"]
    assert got["garminsync_last_run_timestamp_seconds"] == timestamp(last["finished_at"])
    assert got["garminsync_last_success_timestamp_seconds"] == timestamp(data["last_success"])
    assert got["garminsync_last_run_duration_seconds"] == pytest.approx(last["duration_s"])
    assert got["garminsync_last_run_exit_code"] == 0
    assert got["garminsync_last_run_downloaded"] == last["downloaded"] == 9
    assert got["garminsync_last_run_requests"] == last["requests"]
    files = sum(p.stat().st_size for p in dest.glob("activity_*"))
    assert got["garminsync_dest_bytes"] == files
    counts = Counter(e["status"] for e in data["activities"].values())
    assert got["garminsync_activities"] == {s: counts[s] for s in STATUSES}
    assert [p.name for p in prom.parent.iterdir()] == ["garminsync.prom"]  # no temp file left


def test_metrics_after_a_failed_run_keep_the_last_success(
    garmin, real_account, run, dest, tmp_path
):
    prom = tmp_path / "garminsync.prom"
    assert run("--dest", dest, "--metrics-file", prom).returncode == 0
    success = metrics(prom)["garminsync_last_success_timestamp_seconds"]
    garmin.unreachable.add(CONNECTAPI)
    assert run("--dest", dest, "--metrics-file", prom).returncode == 75
    got = metrics(prom)
    assert got["garminsync_last_success_timestamp_seconds"] == success
    assert got["garminsync_last_run_exit_code"] == 75
    assert got["garminsync_last_run_timestamp_seconds"] >= success
    assert got["garminsync_last_run_downloaded"] == 0


# --- the pings


def test_a_successful_sync_pings_start_then_success_with_its_closing_line(
    garmin, real_account, run, dest, pings
):
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert pings.paths() == [f"/{pings.uuid}/start", f"/{pings.uuid}"]
    closing = pings.bodies()[1]
    assert CLOSING.fullmatch(closing) and closing.startswith("9 downloaded, 0 failed")
    assert result.stderr.splitlines()[-1] == closing


def test_an_unreachable_garmin_pings_exit_75_with_the_error_line(
    garmin, real_account, run, dest, pings
):
    garmin.unreachable.add(CONNECTAPI)
    result = run("--dest", dest)
    assert result.returncode == 75
    assert pings.paths() == [f"/{pings.uuid}/start", f"/{pings.uuid}/75"]
    assert one_error_line(result.stderr) == f"garminsync: warning: {pings.bodies()[1]}"


def test_a_sync_stopped_by_sigterm_pings_exit_143(garmin, real_account, env, dest, pings):
    garmin.add_fault(DOWNLOAD + "870123456", trickle(2000), times=None)  # ~25 s of body
    proc = start(env, "--dest", dest)
    wait_for(lambda: sum(e.bytes_sent for e in garmin.requests_to(DOWNLOAD + "870123456")) > 800)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert pings.paths() == [f"/{pings.uuid}/start", f"/{pings.uuid}/143"]
    assert manifest(dest)["runs"][-1]["result"] == "interrupted"


@pytest.mark.parametrize("trouble", ["500", "reset", "refused"])
def test_a_failing_ping_service_costs_the_sync_only_a_warning(
    garmin, real_account, run, dest, pings, trouble
):
    if trouble == "refused":
        garmin.unreachable.add("hc-ping.com")
    else:
        fault = status(500) if trouble == "500" else reset()
        garmin.add_fault("", fault, times=None, host="hc-ping.com")
    result = run("--dest", dest)
    assert result.returncode == 0, result.stderr
    assert len(saved_files(dest)) == 9
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, result.stderr  # the start ping and the end ping
    for line in warnings:
        assert re.fullmatch(
            r"garminsync: warning: the ping to https://hc-ping\.com/\.\.\. failed \(.+\).*", line
        )
    assert len([e for e in garmin.log if e.host == "hc-ping.com"]) == 4  # each tried twice


def test_the_ping_url_is_never_shown(garmin, real_account, run, env, dest, pings, tmp_path):
    garmin.add_fault("", status(500), times=None, host="hc-ping.com")
    env["GARMINSYNC_METRICS_FILE"] = str(tmp_path / "garminsync.prom")
    shown = ""
    for unreachable in (False, True):
        if unreachable:
            garmin.unreachable.add(CONNECTAPI)
        for args in (["-v"], ["--status", "--json"], ["--report"]):
            result = run(*args, "--dest", dest)
            shown += result.stdout + result.stderr
    assert "https://hc-ping.com/..." in shown
    for path in (dest / "garminsync.json", dest / "garminsync.html", tmp_path / "garminsync.prom"):
        shown += path.read_text()
    assert pings.uuid not in shown


# --- trouble that lasts


def stale_dest(garmin, run, dest, **fields) -> None:
    """A DEST synced once, then seeded with these manifest fields; Garmin unreachable after."""
    assert run("--dest", dest).returncode == 0
    edit_manifest(dest, **fields)
    garmin.unreachable.add(CONNECTAPI)


def stale_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("garminsync: error:")]
    assert len(errors) == 1, stderr  # beside the warning of the temporary trouble itself
    return errors[0]


@pytest.mark.parametrize(
    "stale_after, code",
    [(None, 1), ("3", 1), ("3d", 1), ("36h", 1), ("90m", 1), ("10s", 1), ("5d", 75), ("120h", 75)],
)
def test_temporary_trouble_past_stale_after_fails_the_run(
    garmin, real_account, run, env, dest, stale_after, code
):
    since = ago(days=4)  # the last success
    stale_dest(garmin, run, dest, last_success=since)
    if stale_after:
        env["GARMINSYNC_STALE_AFTER"] = stale_after
    result = run("--dest", dest)
    assert result.returncode == code
    if code == 1:
        prefix = f"garminsync: error: no successful sync since {since}; this run: "
        assert stale_error(result.stderr).startswith(prefix + "Garmin Connect is unreachable")
    else:
        assert "no successful sync" not in result.stderr


def test_without_a_success_the_first_run_on_record_dates_the_trouble(
    garmin, real_account, run, dest
):
    first = ago(days=4)
    stale_dest(garmin, run, dest, last_success=None, runs=[seeded_run(first, "unreachable")])
    result = run("--dest", dest)
    assert result.returncode == 1
    assert f"no successful sync since {first}; this run: " in stale_error(result.stderr)


def test_the_next_success_clears_lasting_trouble(garmin, real_account, run, dest):
    stale_dest(garmin, run, dest, last_success=ago(days=4))
    assert run("--dest", dest).returncode == 1
    garmin.unreachable.clear()
    assert run("--dest", dest).returncode == 0
    garmin.unreachable.add(CONNECTAPI)
    assert run("--dest", dest).returncode == 75


def test_an_invalid_stale_after_is_a_usage_error(garmin, real_account, run, env, dest):
    env["GARMINSYNC_STALE_AFTER"] = "soon"
    result = run("--dest", dest)
    assert result.returncode == 2
    assert "GARMINSYNC_STALE_AFTER" in one_error_line(result.stderr)
    assert garmin.log == []


def test_a_ping_url_with_a_password_is_refused_and_never_shown(real_account, run, env, dest):
    url = "https://user:s3cretpass@hc-ping.com/0f1e2d3c"
    result = run("--dest", dest, env={**env, "GARMINSYNC_PING_URL": url})
    assert result.returncode == 2
    assert "GARMINSYNC_PING_URL" in one_error_line(result.stderr)
    assert "s3cretpass" not in result.stdout + result.stderr


def test_a_hand_edited_last_success_is_reset_with_a_warning(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    data = manifest(dest)
    data["last_success"] = "2026-11-30"  # a date, not the time garminsync writes
    (dest / "garminsync.json").write_text(json.dumps(data))
    result = run("--status", "--offline", "--dest", dest)
    assert result.returncode == 0, result.stderr
    assert "manifest.last_success" in result.stderr and "last success never" in result.stdout


def test_a_report_that_cannot_be_written_is_one_line(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    (dest / "garminsync.html").unlink()
    (dest / "garminsync.html").mkdir()  # the rename onto it fails, even for root
    result = run("--report", "--dest", dest)
    assert result.returncode == 1
    assert "cannot write in" in one_error_line(result.stderr)
