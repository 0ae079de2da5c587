"""Helpers the test modules share: the Garmin paths, reading DEST and the manifest back, and
waiting for an event instead of sleeping."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from conftest import SCRIPT
from fake_garmin import make_activity, synthetic_fit

LIST = "/activitylist-service/activities/search/activities"
COUNT = "/activitylist-service/activities/count"
DOWNLOAD = "/download-service/files/activity/"


def manifest(dest: Path) -> dict:
    return json.loads((dest / "garminsync.json").read_text())


def saved_files(dest: Path) -> dict[int, Path]:
    """activity id -> file, for every activity_* file in DEST."""
    found = {}
    for path in dest.iterdir():
        match = re.fullmatch(r"activity_(\d+)_.*", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def downloads(garmin) -> list[int]:
    return [int(e.path.rsplit("/", 1)[1]) for e in garmin.requests_to(DOWNLOAD)]


def add_late_upload(garmin, activity_id: int, start: datetime) -> None:
    garmin.add_activity(make_activity(activity_id, start), synthetic_fit(activity_id), "fit")


def assert_dest_is_truthful(dest: Path, garmin) -> None:
    """Every activity file is byte-identical to Garmin's original, no temp file is left
    under a final name, and every manifest entry marked downloaded has its file."""
    files = saved_files(dest)
    for activity_id, path in files.items():
        assert path.read_bytes() == garmin.original(activity_id), path.name
    if (dest / "garminsync.json").exists():
        for key, entry in manifest(dest)["activities"].items():
            if entry["status"] == "downloaded":
                assert int(key) in files, key


def temp_files(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.startswith(".garminsync-tmp-")]


def one_error_line(stderr: str) -> str:
    """The one problem line: an error, or a warning for temporary trouble (exit 75)."""
    errors = [
        line for line in stderr.splitlines() if re.match(r"garminsync: (error|warning):", line)
    ]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def start(env: dict, *args: str | os.PathLike) -> subprocess.Popen:
    """Start garminsync.py without waiting for it."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 20.0) -> None:
    """Poll until predicate() is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def import_script():
    """garminsync.py imported as a module, for tests of its pure functions."""
    if "garminsync" not in sys.modules:
        spec = importlib.util.spec_from_file_location("garminsync", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["garminsync"] = module
        spec.loader.exec_module(module)
    return sys.modules["garminsync"]
