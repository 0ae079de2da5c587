"""Benchmarks for garminsync (issue 4): what a run costs Garmin, the network and the machine.

Drives the real ``garminsync.py`` as a subprocess against the tests' fake Garmin Connect
(``tests/fake_garmin.py``, a local HTTPS CONNECT proxy) at ``--delay 0`` and prints a
markdown table (measure | result | target | met?), with the date and the command, on stdout;
progress goes to stderr. Run it from the repository root with the venv's Python::

    .venv/bin/python bench/bench.py            # what `make bench` runs

Method, in short (the printed notes say it again, with the figures):

* Every figure comes from whole-process runs; timings are medians and are reported against a
  baseline measured in the same run, because absolute times on a shared machine drift.
* Requests and bytes come from the fake's request log (HTTP status line, headers and body
  as written by the fake; TLS and proxy overhead are not counted).
* The fake runs in this process, in threads. Its own time is excluded from garminsync's
  time by summing the CPU time of its connection threads (``time.thread_time`` at the end of
  each connection: each connection has a fresh thread) and subtracting it from the wall time:
  garminsync waits for every answer, so the fake's work is on garminsync's critical path.
  The fake is also made fast (TCP_NODELAY, cached listing and zips), so that little is left
  to subtract.
* Per-activity time is also given as a ratio to a baseline run just before each first sync:
  REFERENCE_LOOP, garminconnect's own download plus an fsynced write per activity. The
  first syncs of 1,000 and of 10,000 alternate, so drift hits both; their per-activity ratio
  is given for wall time and, as a check that drifts less, for garminsync's CPU time.
* Peak RSS is ``ru_maxrss`` of each child, taken by a small launcher process (see LAUNCHER).
* The first sync of 10,000 activities is repeated as often as the time budget allows (at
  most ``--runs``); the table says how many runs its figures are the median of.

Exit status: 0 when the report was printed (missed targets included), 1 when the benchmark
itself could not measure (garminsync failed a run, the fake broke, a run hung).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import pstats
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "garminsync.py"
sys.path.insert(0, str(REPO / "tests"))

import trustme  # noqa: E402
from fake_garmin import (  # noqa: E402
    ZIP_TYPE,
    FakeGarmin,
    LogEntry,
    Reply,
    _sort_key,
    clean_environ,
    json_reply,
    make_activity,
    routing_env,
    synthetic_fit,
    zip_of,
)

LIST_PATH = "/activitylist-service/activities/search/activities"
COUNT_PATH = "/activitylist-service/activities/count"
DOWNLOAD_PATH = "/download-service/files/activity/"
NEWEST = datetime(2024, 6, 1, 7, 30)  # start of the newest synthetic activity
FIRST_ID = 15_000_000_000
HEAVY_MODULES = ("garminconnect", "requests", "curl_cffi")
NOOP_BYTES_TARGET = 64_000  # "under 64 KB"
MIB = 1024 * 1024
RSS_TARGET = 80 * MIB  # first sync of 10,000: "under 80 MiB"
LOCAL_RSS_TARGET = 40 * MIB  # --list all / --status --offline of 10,000: "under 40 MiB"
PER_ACTIVITY_TARGET = 0.005  # seconds
SCALING_TARGET = 1.3
LOCAL_RATIO_TARGETS = {  # wall time as a multiple of `python -c pass`, at most
    "--list all --offline": 6.0,
    "--status --offline": 6.0,
    "--help": 4.0,
}
LATE_UPLOAD_DAYS = (365, 5000)  # how old the late upload is: about a year, about 14 years
REFERENCE_ACTIVITIES = 300


class BenchError(Exception):
    """The benchmark could not measure (not: a target was missed)."""


def say(message: str) -> None:
    """Progress, on stderr, so stdout holds only the report."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The fake, made fast and instrumented. Answers are the same bytes the tests' fake sends;
# only the work behind them is cached, and each connection's CPU time is counted.


class BenchFake(FakeGarmin):
    """`FakeGarmin` with TCP_NODELAY, a cached newest-first listing and cached zips, and
    accounting of the CPU time its connection threads spend (`server_cpu`)."""

    def __init__(self, ca: trustme.CA) -> None:
        super().__init__(ca)
        self._ids: set[int] = set()
        self._zips: dict[int, bytes] = {}
        self._newest_first: list[dict[str, Any]] | None = None
        self.server_cpu = 0.0
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0

    # -- state, with the caches kept in step

    def add_activity(
        self, activity: dict[str, Any], original: bytes | None = None, ext: str = "fit"
    ) -> int:
        with self._lock:
            self._ids.add(activity["activityId"])
            self._newest_first = None
        return super().add_activity(activity, original, ext)

    def remove_activity(self, activity_id: int) -> None:
        super().remove_activity(activity_id)
        with self._lock:
            self._ids.discard(activity_id)
            self._zips.pop(activity_id, None)
            self._newest_first = None

    def newest_first(self) -> list[dict[str, Any]]:
        """All activities in the order the list endpoint returns them (cached)."""
        with self._lock:
            if self._newest_first is None:
                self._newest_first = sorted(self.activities, key=_sort_key, reverse=True)
            return self._newest_first

    # -- the two hot endpoints, without the per-request copies and scans

    def _search(self, query: dict[str, str]) -> Reply:
        """A plain start/limit page from the cached listing; anything else as the fake does."""
        start, limit = query.get("start", "0"), query.get("limit", "20")
        plain = set(query) <= {"start", "limit"} and start.isdigit() and limit.isdigit()
        if not plain or int(limit) > 1000:
            return super()._search(query)
        first = int(start)
        return json_reply(self.newest_first()[first : first + int(limit)])

    def _download(self, activity_id: int) -> Reply:
        with self._lock:
            entry = self.originals.get(activity_id) if activity_id in self._ids else None
            cached = self._zips.get(activity_id)
        if entry is None:
            return super()._download(activity_id)  # the 404 answer
        if cached is None:
            data, ext = entry
            cached = zip_of(f"{activity_id}_ACTIVITY.{ext}", data)
            with self._lock:
                self._zips[activity_id] = cached
        disposition = {"Content-Disposition": f'attachment; filename="{activity_id}.zip"'}
        return Reply(200, cached, ZIP_TYPE, disposition)

    # -- accounting

    def _tunnel(self, raw: socket.socket, addr: Any, host: str) -> None:
        """Serve one CONNECTed connection; add the CPU time of its thread to `server_cpu`.

        Each connection has its own fresh thread (ThreadingHTTPServer), so the thread's CPU
        time at the end is the fake's whole cost of that connection, CONNECT included.
        TCP_NODELAY: the fake writes headers and body separately, which otherwise stalls
        every answer on Nagle's algorithm and the client's delayed ACK (about 40 ms)."""
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self.open_connections += 1
            self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            super()._tunnel(raw, addr, host)
        finally:
            with self._lock:
                self.server_cpu += time.thread_time()
                self.open_connections -= 1

    def reset_accounting(self) -> None:
        """Start a new run: empty log, zero CPU, connection high-water mark from now."""
        with self._lock:
            self.log.clear()
            self.server_cpu = 0.0
            self.connections = 0
            self.max_open_connections = self.open_connections

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every connection of the finished run has been closed and counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.open_connections == 0:
                    return
            time.sleep(0.005)

    def taken_log(self) -> list[LogEntry]:
        with self._lock:
            if self.errors:
                raise BenchError(f"the fake broke: {self.errors[:3]}")
            return list(self.log)


# ---------------------------------------------------------------------------------------
# Real-size list entries. The tests' fake lists the fields a test needs (about 2 KB of
# JSON per activity, no split summaries); Garmin's list entries are bigger, about 3 KB each
# for a run from a recent watch (running dynamics, power, respiration, split summaries), so
# a page of 1,000 is about 3 MB of JSON. What garminsync holds of each, and for how long,
# is what its memory depends on, so the benchmark lists entries of that size and shape.

PROFILE_IMAGE = "https://s3.amazonaws.com/garmin-connect-prod/profile_images/{}-{}.png"
SPLIT_TYPES = ("INTERVAL_ACTIVE", "RWD_RUN", "RWD_STAND", "RWD_WALK")


def split_summary(rnd: random.Random, split_type: str, duration: float, speed: float) -> dict:
    """One of an entry's `splitSummaries`, as Garmin lists them (14 fields)."""
    part = round(duration * rnd.uniform(0.05, 0.9), 3)
    return {
        "noOfSplits": rnd.randint(1, 40),
        "totalAscent": round(rnd.uniform(0, 300), 1),
        "duration": part,
        "splitType": split_type,
        "numClimbSends": 0,
        "maxElevationGain": round(rnd.uniform(0, 120), 1),
        "averageElevationGain": round(rnd.uniform(0, 40), 1),
        "maxDistance": rnd.randint(100, 5000),
        "distance": round(part * speed, 2),
        "averageSpeed": round(speed * rnd.uniform(0.3, 1.1), 3),
        "maxSpeed": round(speed * rnd.uniform(1.1, 1.6), 3),
        "numFalls": 0,
        "elevationLoss": round(rnd.uniform(0, 300), 1),
        "maxGradeAdjustedSpeed": round(speed * rnd.uniform(1.0, 1.5), 3),
    }


def real_size_activity(
    activity_id: int, start_local: datetime, type_key: str = "running"
) -> dict[str, Any]:
    """`make_activity`'s entry with more of the fields Garmin lists for a run (the other
    profile images, running cadence, 2 to 4 split summaries): about 3 KB of JSON, of which
    garminsync needs six fields."""
    rnd = random.Random(-activity_id)
    base = make_activity(activity_id, start_local, type_key)
    duration, speed = base["duration"], base["averageSpeed"] or 3.0
    cadence = rnd.uniform(150, 185)
    extra: dict[str, Any] = {
        "ownerProfileImageUrlMedium": PROFILE_IMAGE.format("medium", OWNER_TOKEN),
        "ownerProfileImageUrlLarge": PROFILE_IMAGE.format("large", OWNER_TOKEN),
        "averageRunningCadenceInStepsPerMinute": round(cadence, 3),
        "maxRunningCadenceInStepsPerMinute": round(cadence * 1.2, 1),
        "vO2MaxValue": float(rnd.randint(40, 60)),
        "summarizedExerciseSets": [],
        "splitSummaries": [
            split_summary(rnd, kind, duration, speed) for kind in SPLIT_TYPES[: rnd.randint(2, 4)]
        ],
    }
    return {**base, **extra}


OWNER_TOKEN = "a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6"


def add_real_size_activities(
    fake: FakeGarmin, n: int, first_id: int = FIRST_ID, newest: datetime = NEWEST
) -> None:
    """As the tests' `add_many_activities` (about one run a day going back from `newest`,
    ids growing with time), with real-size entries."""
    for i in range(n):
        aid = first_id + n - 1 - i
        start = newest - timedelta(days=i, minutes=(aid * 37) % 180)
        fake.add_activity(real_size_activity(aid, start), synthetic_fit(aid), "fit")


@dataclass
class EntrySizes:
    """How big the fake's list entries are."""

    mean_bytes: float  # JSON bytes of one entry, as the fake writes it
    fields: int  # top-level fields of one entry
    page_bytes: int  # JSON bytes of the first page of 1,000


def entry_sizes(fake: BenchFake) -> EntrySizes:
    listing = fake.newest_first()
    sample = listing[:: max(1, len(listing) // 200)]
    mean = statistics.mean(len(json.dumps(a).encode()) for a in sample)
    return EntrySizes(mean, len(listing[0]), len(json.dumps(listing[:1000]).encode()))


# ---------------------------------------------------------------------------------------
# Running one process: wall time, exit code, its own peak RSS, and what the fake saw.


@dataclass
class Run:
    """One finished process."""

    wall: float  # seconds, from start to exit (timed by the launcher)
    cpu: float  # CPU seconds (user + system) of the process itself
    code: int
    maxrss: int  # bytes
    stdout: str
    stderr: str
    log: list[LogEntry] = field(default_factory=list)
    server_cpu: float = 0.0  # CPU seconds the fake spent on this run's connections
    connections: int = 0  # connections (CONNECT tunnels) the run opened to the fake
    max_connections: int = 0  # most connections the fake had open at once during the run

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def bytes(self) -> int:
        return sum(e.bytes_sent for e in self.log)

    def count(self, path_prefix: str) -> int:
        return sum(1 for e in self.log if e.path.startswith(path_prefix))

    def local_time(self) -> float:
        """Wall time with the fake's own CPU time taken out."""
        return self.wall - self.server_cpu


# Children are started through this small launcher, not straight from the benchmark: on
# Linux a child's peak RSS (ru_maxrss) starts from the high-water mark of the process it was
# forked (or vfork-spawned) from, and the benchmark holds the fakes' activities (a child of
# it would report 300+ MiB for `python -c pass`). The launcher is `python -S` with nothing
# imported but os and time, and it spawns before it does anything else, so the floor it
# sets is no higher than `python -c pass`'s own peak (about 8.5 MiB, as GNU `time` reports
# it). It times its child itself, so its own start-up is not counted.
LAUNCHER = """
import os, sys, time
result, out, err, *argv = sys.argv[1:]
stdout = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
stderr = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
actions = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_DUP2, stdout, 1),
    (os.POSIX_SPAWN_DUP2, stderr, 2),
]
began = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - began
code = os.waitstatus_to_exitcode(status)
cpu = usage.ru_utime + usage.ru_stime
with open(result, "w") as fh:
    fh.write('{"wall": %r, "cpu": %r, "code": %d, "maxrss": %d}'
             % (wall, cpu, code, usage.ru_maxrss * 1024))
"""


class Runner:
    """Starts processes in a scratch folder, one at a time, and measures each."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout

    def run(
        self, argv: Sequence[str | os.PathLike[str]], env: dict[str, str], fake: BenchFake | None
    ) -> Run:
        files = [self.workdir / name for name in ("result.json", "stdout.txt", "stderr.txt")]
        if fake is not None:
            fake.settle()
            fake.reset_accounting()
        launcher = [sys.executable, "-S", "-c", LAUNCHER, *files, *argv]
        proc = subprocess.Popen(
            [str(a) for a in launcher],
            env=env,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,  # so a hung run can be killed with its launcher
        )
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            command = shlex.join(map(str, argv))[:120]
            raise BenchError(f"{command} hung; killed after {self.timeout:.0f} s")
        except BaseException:  # Ctrl-C: the run is in its own session, so stop it too
            kill_group(proc)
            raise
        if proc.returncode != 0:
            raise BenchError(f"the launcher failed (exit {proc.returncode})")
        measured = json.loads(files[0].read_text())
        run = Run(
            wall=measured["wall"],
            cpu=measured["cpu"],
            code=measured["code"],
            maxrss=measured["maxrss"],
            stdout=files[1].read_text(errors="replace"),
            stderr=files[2].read_text(errors="replace"),
        )
        if fake is not None:
            fake.settle()
            run.log = fake.taken_log()
            run.server_cpu = fake.server_cpu
            run.connections = fake.connections
            run.max_connections = fake.max_open_connections
        return run


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a launcher and the run it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Bench:
    """What every measurement needs: the runner, the CA file, the clock and the budget."""

    runner: Runner
    ca_pem: Path
    runs: int
    budget: float
    script: Path
    began: float = field(default_factory=time.monotonic)

    @property
    def workdir(self) -> Path:
        return self.runner.workdir

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def env(self, fake: BenchFake) -> dict[str, str]:
        """A child environment routed through `fake`, with its tokens saved (as conftest)."""
        env = clean_environ()
        state = self.workdir / f"state-{fake.proxy_port}"
        fake.seed_tokens(state / "garminsync")
        env.update(routing_env(fake.proxy_url, self.ca_pem))
        env.update(
            HOME=str(self.workdir),
            XDG_STATE_HOME=str(state),
            GARMINTOKENS=str(state / "garminsync"),
            GARMINSYNC_DELAY="0",
        )
        return env

    def garminsync(self, fake: BenchFake, *args: str | os.PathLike[str]) -> Run:
        """Run garminsync.py once with these arguments; anything but exit 0 is an error."""
        return self.checked(fake, [sys.executable, self.script, *args])

    def checked(self, fake: BenchFake, argv: Sequence[str | os.PathLike[str]]) -> Run:
        """Run a command once; anything but exit 0 is an error."""
        run = self.runner.run(argv, self.env(fake), fake)
        if run.code != 0:
            tail = run.stderr.strip().splitlines()[-3:]
            raise BenchError(f"{shlex.join(map(str, argv))[-120:]} exited {run.code}: {tail}")
        return run

    def python(self, fake: BenchFake, *args: str | os.PathLike[str]) -> Run:
        """Run the venv's Python with these arguments (no check)."""
        return self.runner.run([sys.executable, *args], self.env(fake), fake)

    def scratch(self, name: str) -> Path:
        """A fresh, not yet existing folder in the scratch area."""
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        return path


def clone_dest(template: Path, target: Path) -> Path:
    """A copy of a DEST made of hard links: instant, and safe because garminsync never
    writes into an existing file (it writes a temp file and renames it)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target, copy_function=os.link)
    return target


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def kinds(run: Run) -> str:
    """'2 downloads + 1 count + 2 list pages' for one run's requests."""
    downloads, count, pages = run.count(DOWNLOAD_PATH), run.count(COUNT_PATH), run.count(LIST_PATH)
    other = run.requests - downloads - count - pages
    parts = [
        f"{downloads:,} download{'s' * (downloads != 1)}" if downloads else "",
        f"{count} count" if count else "",
        f"{pages} list page{'s' * (pages != 1)}" if pages else "",
        f"{other} other" if other else "",
    ]
    return " + ".join(part for part in parts if part) or "none"


def pages_read(run: Run) -> str:
    """The list pages a run asked for, as start/limit pairs."""
    return ", ".join(
        f"{e.query.get('start')}/{e.query.get('limit')}"
        for e in run.log
        if e.path.startswith(LIST_PATH)
    )


# ---------------------------------------------------------------------------------------
# Measurements. Each returns plain figures; the report turns them into rows.

# The per-activity baseline: what any tool built on garminconnect pays per activity, without
# garminsync's own logic: the library's download (one fresh HTTPS connection through the
# proxy, as garminconnect opens a new requests.Session per call), unzip, and an fsynced write
# renamed into place. It times its own loop, so its start-up is not counted.
REFERENCE_LOOP = """
import io, os, sys, tempfile, time, zipfile
from garminconnect.client import Client
tokens, dest, *ids = sys.argv[1:]
client = Client()
client.loads(open(tokens).read())
began = time.perf_counter()
for aid in ids:
    data = client.download("/download-service/files/activity/" + aid)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = archive.read(archive.namelist()[0])
    fd, tmp = tempfile.mkstemp(dir=dest)
    with os.fdopen(fd, "wb") as out:
        out.write(member)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, os.path.join(dest, aid + ".fit"))
    dirfd = os.open(dest, os.O_RDONLY)
    os.fsync(dirfd)
    os.close(dirfd)
print(time.perf_counter() - began)
"""

# Two other ways to learn what is new, as tiny clients on garminconnect's own Client:
# "newest-1000" lists the newest 1,000 activities every run; "all-100" lists every activity,
# 100 per page, until a short page.
OTHER_CLIENT = """
import sys
from garminconnect.client import Client
tokens, style = sys.argv[1:]
client = Client()
client.loads(open(tokens).read())
path = "/activitylist-service/activities/search/activities"
if style == "newest-1000":
    client.connectapi(path, params={"start": 0, "limit": 1000})
else:
    start = 0
    while len(client.connectapi(path, params={"start": start, "limit": 100})) == 100:
        start += 100
"""


@dataclass
class FirstSync:
    """First syncs of n activities, each paired with a run of the per-activity baseline
    just before it, so that the ratio of the two is free of the machine's drift."""

    n: int
    runs: list[Run] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # seconds per activity, paired

    def per_activity(self) -> float:
        """Median local seconds per activity."""
        return median([r.local_time() / self.n for r in self.runs])

    def relative(self) -> float:
        """Median of each run's local time per activity over its paired baseline."""
        return median(
            [r.local_time() / self.n / b for r, b in zip(self.runs, self.baseline, strict=True)]
        )

    def cpu_per_activity(self) -> float:
        """Median CPU seconds per activity of garminsync itself (drifts less than wall)."""
        return median([r.cpu / self.n for r in self.runs])

    def fake_share(self) -> float:
        return median([r.server_cpu / self.n for r in self.runs])


def first_sync(bench: Bench, fake: BenchFake, n: int, keep: Path | None = None) -> Run:
    """One first sync of all of `fake`'s n activities into an empty DEST, kept as `keep`."""
    dest = bench.scratch(f"first-{n}")
    run = bench.garminsync(fake, "--missing", "--dest", dest, "--delay", "0")
    saved = sum(1 for p in dest.iterdir() if p.name.startswith("activity_"))
    if saved != n:
        raise BenchError(f"first sync of {n:,} saved {saved:,} files")
    if keep is not None and not keep.exists():
        dest.rename(keep)
    else:
        shutil.rmtree(dest)
    return run


def reference_loop(bench: Bench, fake: BenchFake) -> float:
    """Seconds per activity of REFERENCE_LOOP over the newest activities, the fake's CPU
    taken out."""
    ids = [str(a["activityId"]) for a in fake.newest_first()[:REFERENCE_ACTIVITIES]]
    dest = bench.scratch("reference")
    dest.mkdir()
    tokens = Path(bench.env(fake)["GARMINTOKENS"]) / "garmin_tokens.json"
    run = bench.python(fake, "-c", REFERENCE_LOOP, tokens, dest, *ids)
    if run.code != 0:
        raise BenchError(f"the reference loop failed: {run.stderr.strip()[-300:]}")
    shutil.rmtree(dest)
    return (float(run.stdout.split()[-1]) - run.server_cpu) / len(ids)


def measure_first_sync(
    bench: Bench, fake: BenchFake, sync: FirstSync, keep: Path | None = None
) -> None:
    """One more first sync of `sync.n` activities, after its paired baseline run."""
    sync.baseline.append(reference_loop(bench, fake))
    sync.runs.append(first_sync(bench, fake, sync.n, keep))
    run = sync.runs[-1]
    say(
        f"first sync of {sync.n:,}, run {len(sync.runs)}: {run.wall:.1f} s, "
        f"peak RSS {mib(run.maxrss, 0)}"
    )


@dataclass
class NewAndLate:
    """Runs after 1 new activity and 1 late upload appeared."""

    late_days: int
    position: int  # 1-based position of the late upload in the newest-first list
    listed: int
    runs: list[Run]

    def list_requests(self) -> int:
        return int(median([r.count(LIST_PATH) + r.count(COUNT_PATH) for r in self.runs]))


def measure_noop(bench: Bench, fake: BenchFake, template: Path) -> list[Run]:
    """No-op syncs: a saved session, nothing new, the template's activities all known."""
    dest = clone_dest(template, bench.workdir / "noop")
    runs = [bench.garminsync(fake, "--missing", "--dest", dest) for _ in range(bench.runs)]
    shutil.rmtree(dest)
    return runs


def measure_new_and_late(
    bench: Bench, fake: BenchFake, template: Path, late_days: int, next_id: int
) -> NewAndLate:
    """Runs after 1 new activity and 1 late upload (a new id, started `late_days` before
    the newest activity) appeared; each run starts from a fresh copy of the template."""
    new_id, late_id = next_id, next_id + 1
    added = (
        (new_id, NEWEST + timedelta(days=1, hours=1)),
        (late_id, NEWEST - timedelta(days=late_days, hours=5)),
    )
    for aid, start in added:
        fake.add_activity(real_size_activity(aid, start), synthetic_fit(aid), "fit")
    listing = [a["activityId"] for a in fake.newest_first()]
    runs = []
    try:
        for _ in range(bench.runs):
            dest = clone_dest(template, bench.workdir / "new-and-late")
            runs.append(bench.garminsync(fake, "--missing", "--dest", dest))
            if runs[-1].count(DOWNLOAD_PATH) != 2:
                raise BenchError(f"expected 2 downloads, saw {kinds(runs[-1])}")
            shutil.rmtree(dest)
    finally:
        for aid, _ in added:
            fake.remove_activity(aid)
    return NewAndLate(late_days, listing.index(late_id) + 1, len(listing), runs)


def measure_other_clients(bench: Bench, fake: BenchFake) -> dict[str, list[Run]]:
    """The two other designs' no-op runs, on the same fake."""
    tokens = Path(bench.env(fake)["GARMINTOKENS"]) / "garmin_tokens.json"
    found: dict[str, list[Run]] = {}
    for style in ("newest-1000", "all-100"):
        found[style] = []
        for _ in range(bench.runs):
            run = bench.python(fake, "-c", OTHER_CLIENT, tokens, style)
            if run.code != 0:
                raise BenchError(f"the {style} client failed: {run.stderr.strip()[-300:]}")
            found[style].append(run)
    return found


LOCAL_COMMANDS = {
    "--list all --offline": ("--list", "all", "--offline"),
    "--status --offline": ("--status", "--offline"),
    "--help": ("--help",),
}


@dataclass
class Imports:
    """What one command imports, per `python -X importtime`."""

    packages: set[str]  # top-level package names
    slowest: list[tuple[str, float]]  # its own direct imports (not the interpreter's), by time


@dataclass
class LocalFigures:
    """The local commands over a big manifest, and `python -c pass` between them."""

    baseline: list[Run]
    runs: dict[str, list[Run]]  # the installed `garminsync` command
    direct: dict[str, list[Run]]  # `python garminsync.py`
    floor: list[Run]  # FLOOR: reading the manifest and listing DEST, nothing else
    imports: dict[str, Imports]
    hotspots: dict[str, list[tuple[str, float]]]  # by self time, under cProfile


# What any --list or --status must do at least: parse the manifest and list DEST. Its
# time is the floor under theirs, whatever the code around it.
FLOOR = (
    "import argparse, json, os, sys; "
    "json.load(open(sys.argv[1], 'rb')); list(os.scandir(sys.argv[2]))"
)


def installed_command(bench: Bench) -> Path:
    """The `garminsync` command as `make install` lays it out in the scratch HOME (the
    script and its compiled bytecode, the venv) without installing anything: its venv is
    a link to the one running the benchmark."""
    app = bench.workdir / ".local/share/garminsync"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy(bench.script, app / "garminsync.py")
    with contextlib.suppress(FileExistsError):
        (app / "venv").symlink_to(sys.prefix)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(app)], check=True)
    return REPO / "garminsync.sh"


def measure_local(bench: Bench, fake: BenchFake, template: Path) -> LocalFigures:
    """Time `python -c pass`, each local command (as the installed command, and as
    `python garminsync.py`) and the floor, interleaved so drift hits them alike (more
    repetitions than `runs`: each is short); then what they import and where their time goes."""
    dest = clone_dest(template, bench.workdir / "local")
    command = installed_command(bench)
    runs: dict[str, list[Run]] = {name: [] for name in LOCAL_COMMANDS}
    direct: dict[str, list[Run]] = {name: [] for name in LOCAL_COMMANDS}
    baseline, floor = [], []
    for _ in range(2 * bench.runs + 1):
        baseline.append(bench.python(fake, "-c", "pass"))
        floor.append(bench.python(fake, "-c", FLOOR, dest / "garminsync.json", dest))
        for name, args in LOCAL_COMMANDS.items():
            runs[name].append(bench.checked(fake, ["sh", command, *args, "--dest", dest]))
            direct[name].append(bench.garminsync(fake, *args, "--dest", dest))
    imports = measure_imports(bench, fake, dest)
    hotspots = hotspots_beyond_help(bench, fake, dest)
    shutil.rmtree(dest)
    return LocalFigures(baseline, runs, direct, floor, imports, hotspots)


def parse_importtime(stderr: str) -> tuple[set[str], dict[str, float]]:
    """Top-level packages imported, and seconds per direct (unindented) import."""
    packages, direct = set(), {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, name = line.split("|")
        module = name[1:]
        packages.add(module.strip().split(".")[0])
        if not module.startswith(" "):
            direct[module.strip()] = int(cumulative) / 1e6
    return packages, direct


def measure_imports(bench: Bench, fake: BenchFake, dest: Path) -> dict[str, Imports]:
    """Per local command: packages it imports and its slowest direct imports beyond what
    `python -c pass` imports itself."""
    _, interpreter = parse_importtime(bench.python(fake, "-X", "importtime", "-c", "pass").stderr)
    found = {}
    for name, args in LOCAL_COMMANDS.items():
        run = bench.python(fake, "-X", "importtime", bench.script, *args, "--dest", dest)
        packages, direct = parse_importtime(run.stderr)
        own = sorted(
            ((m, t) for m, t in direct.items() if m not in interpreter), key=lambda x: -x[1]
        )
        found[name] = Imports(packages, own)
    return found


def profile(bench: Bench, fake: BenchFake, args: list[Any]) -> dict[str, float]:
    """Self time per function in one run of garminsync under cProfile."""
    path = bench.workdir / "profile.out"
    bench.python(fake, "-m", "cProfile", "-o", path, bench.script, *args)
    selves: dict[str, float] = {}
    stats = pstats.Stats(str(path)).stats
    for (filename, line, function), (_, _, self_time, _, _) in stats.items():
        where = function if filename == "~" else f"{Path(filename).name}:{line}({function})"
        selves[where] = selves.get(where, 0.0) + self_time
    return selves


def hotspots_beyond_help(bench: Bench, fake: BenchFake, dest: Path) -> dict[str, list]:
    """Per local command, the functions with the most self time beyond what `--help` spends
    in them (start-up and imports cost both alike)."""
    startup = profile(bench, fake, ["--help"])
    found = {}
    for name, args in LOCAL_COMMANDS.items():
        selves = profile(bench, fake, [*args, "--dest", dest])
        extra = [(where, t - startup.get(where, 0.0)) for where, t in selves.items()]
        found[name] = sorted(extra, key=lambda spot: -spot[1])[:4]
    return found


def compile_time(script: Path) -> float:
    """Seconds to compile garminsync.py (a script run as `python garminsync.py` is compiled
    on every start; its bytecode is not cached)."""
    source = script.read_text(encoding="utf-8")
    times = []
    for _ in range(5):
        began = time.perf_counter()
        compile(source, str(script), "exec")
        times.append(time.perf_counter() - began)
    return median(times)


# ---------------------------------------------------------------------------------------
# The report.


@dataclass
class Row:
    measure: str
    result: str
    target: str
    met: bool | None  # None: no target (a comparison)
    cause: str = ""  # printed in the closing notes when the target is missed


def mark(met: bool | None, short: str = "") -> str:
    if met is None:
        return "—"
    return "yes" if met else f"**no**{' (' + short + ')' if short else ''}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def mib(size: float, digits: int = 1) -> str:
    return f"{size / MIB:.{digits}f} MiB"


def noop_rows(noop: list[Run], known: int) -> list[Row]:
    requests = int(median([r.requests for r in noop]))
    size = int(median([r.bytes for r in noop]))
    breakdown = f"requests: {kinds(noop[0])}"
    return [
        Row(
            f"No-op sync ({known:,} known): requests",
            f"{requests} ({kinds(noop[0])})",
            "1",
            requests == 1,
            breakdown,
        ),
        Row(
            f"No-op sync ({known:,} known): bytes received",
            f"{size:,} B",
            "< 64 KB",
            size < NOOP_BYTES_TARGET,
            breakdown,
        ),
    ]


def new_and_late_row(result: NewAndLate) -> Row:
    lists = result.list_requests()
    run = result.runs[0]
    return Row(
        f"1 new + 1 late upload ({result.late_days:,} days old, list position "
        f"{result.position:,} of {result.listed:,}): requests",
        f"{kinds(run)} ({lists} list requests)",
        "downloads + ≤ 3 list requests (count + pages)",
        lists <= 3,
        f"Garmin lists by start time, so the late upload sat at position {result.position:,}; "
        f"the walk read pages until it found it (start/limit: {pages_read(run)})",
    )


def first_sync_rows(small: FirstSync, big: FirstSync, rss_context: str) -> list[Row]:
    rows = []
    for sync in (small, big):
        run = sync.runs[0]
        pages = math.ceil(sync.n / 1000)
        others = run.requests - run.count(DOWNLOAD_PATH) - run.count(LIST_PATH)
        rows.append(
            Row(
                f"First sync of {sync.n:,}: requests",
                kinds(run),
                f"{sync.n:,} downloads + {pages} list page{'s' * (pages != 1)}, no other",
                run.count(DOWNLOAD_PATH) == sync.n and run.count(LIST_PATH) == pages and not others,
                f"{kinds(run)}: the count request is made on a first run too",
            )
        )
    for sync in (small, big):
        per, floor = sync.per_activity(), median(sync.baseline)
        connections = int(median([r.connections for r in sync.runs]))
        rows.append(
            Row(
                f"First sync of {sync.n:,}: local time per activity (median of {len(sync.runs)})",
                f"{ms(per)} = {sync.relative():.2f}× baseline (CPU {ms(sync.cpu_per_activity())})",
                "< 5 ms",
                per < PER_ACTIVITY_TARGET,
                f"garminsync opened {connections:,} HTTPS connection(s) for {sync.n:,} "
                f"activities; the baseline (garminconnect's download, a fresh connection "
                f"per request, plus an fsynced write) costs {ms(floor)} per activity here, "
                f"against garminsync's {ms(per)}",
            )
        )
    ratio = big.per_activity() / small.per_activity()
    cpu_ratio = big.cpu_per_activity() / small.cpu_per_activity()
    rows.append(
        Row(
            f"First sync: {big.n:,}/{small.n:,} per-activity ratio",
            f"{ratio:.2f} (of CPU time: {cpu_ratio:.2f})",
            "≤ 1.3",
            ratio <= SCALING_TARGET,
            f"local time per activity {ms(big.per_activity())} at {big.n:,} against "
            f"{ms(small.per_activity())} at {small.n:,}; CPU time {ms(big.cpu_per_activity())} "
            f"against {ms(small.cpu_per_activity())}"
            + (
                " (the CPU ratio is within target: the machine's load, see the load "
                "averages above, may account for the wall-time gap)"
                if cpu_ratio <= SCALING_TARGET
                else ": something grows with the history"
            ),
        )
    )
    rss = max(r.maxrss for r in big.runs)
    rows.append(
        Row(
            f"First sync of {big.n:,}: peak RSS (highest of {len(big.runs)})",
            mib(rss),
            f"< {mib(RSS_TARGET, 0)}",
            rss < RSS_TARGET,
            f"peak RSS of other runs: {rss_context}",
        )
    )
    return rows


def rss_context(small: FirstSync, noop: list[Run], local: LocalFigures) -> str:
    """Peak RSS of the other runs, to tell where a first sync's memory goes."""
    figures = [
        ("`python -c pass` (the launcher's floor)", local.baseline),
        ("`--status --offline` (the manifest, no garminconnect)", local.runs["--status --offline"]),
        ("a no-op sync (garminconnect and the manifest)", noop),
        (f"the first sync of {small.n:,}", small.runs),
    ]
    return ", ".join(f"{what} {mib(max(r.maxrss for r in runs), 0)}" for what, runs in figures)


def local_rows(local: LocalFigures, known: int, compile_s: float, manifest_bytes: int) -> list[Row]:
    base = median([r.wall for r in local.baseline])
    help_ratio = median([r.wall for r in local.runs["--help"]]) / base
    floor_ratio = median([r.wall for r in local.floor]) / base
    rows = []
    for name, runs in local.runs.items():
        ratio = median([r.wall for r in runs]) / base
        direct = median([r.wall for r in local.direct[name]]) / base
        slowest = ", ".join(f"{m} {ms(t)}" for m, t in local.imports[name].slowest[:4])
        cause = f"`--help` is {help_ratio:.1f}×; slowest imports (-X importtime): {slowest}"
        if name != "--help":
            spots = ", ".join(f"{where} {ms(t)}" for where, t in local.hotspots[name])
            cause += (
                f"; parsing the {manifest_bytes / MIB:.1f} MiB manifest and listing DEST, and "
                f"nothing else, is {floor_ratio:.1f}× on its own (the floor row); checking "
                f"each entry and each file adds the rest, most of it in (cProfile self time "
                f"beyond `--help`'s, inflated) {spots}"
            )
        over = "" if name == "--help" else f" ({known:,} activities)"
        target = LOCAL_RATIO_TARGETS[name]
        rows.append(
            Row(
                f"`garminsync {name}`{over}: time (median of {len(runs)})",
                f"{ratio:.1f}× `python -c pass` (as `python garminsync.py {name}`: "
                f"{direct:.1f}×, of which compiling the script {compile_s / base:.1f}×)",
                f"≤ {target:g}×",
                ratio <= target,
                cause,
            )
        )
        if name == "--help":
            continue
        rss = max(r.maxrss for r in runs)
        direct_rss = max(r.maxrss for r in local.direct[name])
        rows.append(
            Row(
                f"`garminsync {name}`{over}: peak RSS (highest of {len(runs)})",
                f"{mib(rss)} (as `python garminsync.py {name}`, compiled as it starts: "
                f"{mib(direct_rss)})",
                f"< {mib(LOCAL_RSS_TARGET, 0)}",
                rss < LOCAL_RSS_TARGET,
                f"`python -c pass` peaks at {mib(max(r.maxrss for r in local.baseline))}; "
                f"the {manifest_bytes / MIB:.1f} MiB manifest is parsed whole",
            )
        )
    rows.append(
        Row(
            f"Floor: parsing the manifest ({known:,} activities, {manifest_bytes / MIB:.1f} "
            "MiB) and listing DEST, nothing else",
            f"{floor_ratio:.1f}× `python -c pass`",
            "(comparison)",
            None,
        )
    )
    heavy = {name: sorted(i.packages & set(HEAVY_MODULES)) for name, i in local.imports.items()}
    offenders = "; ".join(f"`{n}`: {', '.join(m)}" for n, m in heavy.items() if m)
    rows.append(
        Row(
            "Local commands above: imports garminconnect, requests or curl_cffi?",
            offenders or "none",
            "none",
            not offenders,
            f"imported: {offenders}",
        )
    )
    return rows


def side_by_side_rows(noop: list[Run], others: dict[str, list[Run]], known: int) -> list[Row]:
    ours_requests = median([r.requests for r in noop])
    ours_bytes = median([r.bytes for r in noop])
    labels = {
        "newest-1000": "listing the newest 1,000 every run",
        "all-100": "listing all activities, 100 per page",
    }
    rows = []
    for style, runs in others.items():
        requests, size = median([r.requests for r in runs]), median([r.bytes for r in runs])
        rows.append(
            Row(
                f"No-op run ({known:,} activities), {labels[style]}",
                f"{requests:,.0f} request{'s' * (requests != 1)}, {size / 1e6:.2f} MB = "
                f"{requests / ours_requests:,.0f}× the requests, "
                f"{size / ours_bytes:,.0f}× the bytes of garminsync's",
                "(comparison)",
                None,
            )
        )
    return rows


def print_report(
    rows: list[Row],
    notes: list[str],
    command: str,
    started: datetime,
    wall: float,
    load_at_start: float,
) -> None:
    out = [
        "## garminsync benchmark",
        "",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Command: `{command}` ({wall / 60:.1f} min). "
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average (1 min) at start {load_at_start:.2f}, at the end "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "| measure | result | target | met? |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        short = "see below" if row.met is False else ""
        out.append(f"| {row.measure} | {row.result} | {row.target} | {mark(row.met, short)} |")
    missed = [row for row in rows if row.met is False]
    out += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    out += ["", "Missed targets:" if missed else "All targets met.", ""]
    out += [f"- {row.measure}: {row.cause}." for row in missed]
    print("\n".join(out))


# ---------------------------------------------------------------------------------------
# Main.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions per figure (5)")
    parser.add_argument(
        "--budget",
        type=float,
        default=540,
        help="seconds the whole benchmark may take; bounds the repetitions of the big "
        "first sync (540)",
    )
    parser.add_argument("--small", type=int, default=1000, help="the small history (1000)")
    parser.add_argument("--big", type=int, default=10000, help="the big history (10000)")
    parser.add_argument(
        "--script",
        type=Path,
        default=SCRIPT,
        help="the garminsync.py to measure (default: the repository's), e.g. an older "
        "version to compare with",
    )
    return parser.parse_args(argv)


def check_environment() -> None:
    try:
        import garminconnect  # noqa: F401, PLC0415
    except ImportError:
        raise BenchError(f"{sys.executable} cannot import garminconnect; run `make venv` first")


def invocation() -> str:
    """The command as typed, with the interpreter relative to the repository."""
    python = Path(sys.executable)
    with_venv = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else python.name
    return shlex.join([str(with_venv), *sys.argv])


def started_fake(ca: trustme.CA, n: int) -> BenchFake:
    fake = BenchFake(ca).start()
    add_real_size_activities(fake, n)
    return fake


def big_run_fits(bench: Bench, big: FirstSync, small: FirstSync) -> bool:
    """Whether one more big first sync, and the small ones still due, fit in the budget."""
    small_left = (bench.runs - len(small.runs)) * 1.15 * max(r.wall + 2 for r in small.runs)
    needed = 1.15 * max(r.wall for r in big.runs) + small_left + 10
    return bench.elapsed() + needed <= bench.budget


def run_all(args: argparse.Namespace, workdir: Path) -> None:
    started, load_at_start = datetime.now(timezone.utc), os.getloadavg()[0]
    ca = trustme.CA()
    ca_pem = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    runner = Runner(workdir, timeout=max(600.0, args.budget))
    bench = Bench(runner, ca_pem, args.runs, args.budget, args.script.resolve())

    say(f"building the fakes with {args.small:,} and {args.big:,} activities")
    small_fake, fake = started_fake(ca, args.small), started_fake(ca, args.big)
    sizes = entry_sizes(fake)
    small, big = FirstSync(args.small), FirstSync(args.big)
    template = bench.workdir / f"template-{args.big}"
    try:
        measure_first_sync(bench, fake, big, keep=template)
        manifest_bytes = (template / "garminsync.json").stat().st_size

        say("no-op syncs, and the other designs' no-op runs")
        noop = measure_noop(bench, fake, template)
        others = measure_other_clients(bench, fake)

        say("runs after 1 new activity and 1 late upload")
        next_id = FIRST_ID + args.big
        late = [
            measure_new_and_late(bench, fake, template, days, next_id + 2 * i)
            for i, days in enumerate(LATE_UPLOAD_DAYS)
        ]

        say("local commands")
        local = measure_local(bench, fake, template)

        say(f"first syncs of {args.small:,}, alternating with more of {args.big:,}")
        for _ in range(bench.runs):
            measure_first_sync(bench, small_fake, small)
            if len(big.runs) < bench.runs and big_run_fits(bench, big, small):
                measure_first_sync(bench, fake, big)
    finally:
        small_fake.stop()
        fake.stop()
    if len(big.runs) < bench.runs:
        say(f"budget: {len(big.runs)} runs of the {args.big:,} first sync fit")

    compile_s = compile_time(bench.script)
    rows = (
        noop_rows(noop, args.big)
        + [new_and_late_row(result) for result in late]
        + first_sync_rows(small, big, rss_context(small, noop, local))
        + local_rows(local, args.big, compile_s, manifest_bytes)
        + side_by_side_rows(noop, others, args.big)
    )
    notes = method_notes(args, small, big, local, noop, sizes)
    print_report(rows, notes, invocation(), started, bench.elapsed(), load_at_start)


def method_notes(
    args: argparse.Namespace,
    small: FirstSync,
    big: FirstSync,
    local: LocalFigures,
    noop: list[Run],
    sizes: EntrySizes,
) -> list[str]:
    baseline = small.baseline + big.baseline
    notes = [
        f"List entries are real-size: {sizes.mean_bytes:,.0f} bytes of JSON each on average "
        "(as the fake writes it, with a space after every , and :; about 15% less without) "
        f"in {sizes.fields} fields, 2 to 4 split summaries among them, so a page of 1,000 is "
        f"{sizes.page_bytes / MIB:.1f} MiB; garminsync needs 6 of the fields.",
        f"Timings are medians of {args.runs} whole-process runs unless the row says otherwise; "
        f"`python -c pass` took {ms(median([r.wall for r in local.baseline]))} (median of "
        f"{len(local.baseline)}, interleaved with the local commands).",
        "Local time per activity = (wall time of the whole first-sync process − CPU time the "
        "fake spent on its connections) / activities; the fake runs in the benchmark's "
        f"threads and took {ms(small.fake_share())} ({small.n:,}) and "
        f"{ms(big.fake_share())} ({big.n:,}) of CPU per activity.",
        f"Per-activity baseline: {ms(median(baseline))} (median; from "
        f"{ms(min(baseline))} to {ms(max(baseline))} as the machine's load changed) = "
        "garminconnect's own download (a fresh HTTPS connection through the proxy per "
        "request, as the library does) plus unzip and an fsynced write renamed into place, "
        f"timed over {REFERENCE_ACTIVITIES} activities in one process just before each first "
        "sync, the fake's CPU taken out. It is the floor for any tool built on "
        "garminconnect's download; each first sync is divided by its own baseline run. "
        f"The {small.n:,} and {big.n:,} first syncs alternate, so that drift hits both.",
        "Requests and bytes: the fake's log; bytes are HTTP status line + headers + body "
        "(TLS and proxy overhead not counted). Peak RSS: `ru_maxrss` of that one process "
        "(what GNU `time` reports as %M), started by a small launcher (`python -S`, "
        f"{mib(min(r.maxrss for r in local.baseline))} for `python -c pass`): a child "
        "forked from the benchmark itself, which holds the fakes' activities, would inherit "
        "its high-water mark. MiB = 2^20 bytes.",
        "The fake is the tests' fake with TCP_NODELAY on its sockets (it writes headers and "
        "body apart, which otherwise stalls each answer about 40 ms on Nagle's algorithm), "
        "a cached listing and cached zips; its answers are byte-identical.",
        f"Connections: garminsync opened {median([r.connections for r in big.runs]):,.0f} "
        f"HTTPS connection(s) (through the proxy) in the {big.n:,} first sync, at most "
        f"{max(r.max_connections for r in big.runs):,} open at once.",
    ]
    if len(big.runs) < args.runs:
        notes.append(
            f"Only {len(big.runs)} run(s) of the {big.n:,} first sync fit in the "
            f"{args.budget:.0f} s budget (the whole `make bench` must stay under ten minutes "
            f"on this machine), not {args.runs}: its figures are the median of "
            f"{len(big.runs)}."
        )
    if any(r.count(COUNT_PATH) != 1 for r in noop):
        notes.append("A no-op run did not make exactly one count request.")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_environment()
        with tempfile.TemporaryDirectory(prefix="garminsync-bench-") as tmp:
            run_all(args, Path(tmp))
    except BenchError as err:
        print(f"bench: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
