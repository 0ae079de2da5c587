"""kill -9 at random moments (issue 3): whatever instant a sync dies, every activity file in
DEST is byte-identical to what Garmin sent, the manifest parses and claims only files that
exist, the next run cleans the temp files, and the final run downloads nothing twice.

The moments come from a seed: FAULT_SEED=<n> reproduces a campaign; KILL_TRIALS sets how
many kills (20 here, more with `make soak`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

from conftest import SCRIPT
from helpers import assert_dest_is_truthful, downloads, manifest, saved_files, temp_files

TRIALS = int(os.environ.get("KILL_TRIALS", "20"))


def test_kill_9_at_random_moments_never_leaves_a_bad_file(garmin, many_activities, env, dest, seed):
    rng = random.Random(seed)
    ids = set(many_activities(400))
    command = [sys.executable, str(SCRIPT), "--dest", str(dest), "--delay", "0.005", "-q"]
    kills = completed = 0
    while kills < TRIALS:
        on_disk_before = set(saved_files(dest)) if dest.exists() else set()
        garmin.clear_log()
        sync = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            code = sync.wait(timeout=rng.uniform(0.3, 1.6))
            assert code == 0, sync.stderr.read()
            completed += 1
            ids |= set(many_activities(60, first_id=16_000_000_000 + 100 * completed))
        except subprocess.TimeoutExpired:
            sync.kill()
            sync.wait()
            kills += 1
        sync.stderr.close()
        if dest.exists():
            assert_dest_is_truthful(dest, garmin)
            assert not set(downloads(garmin)) & on_disk_before, "downloaded twice"
    print(f"{kills} kills, {completed} runs that finished first (seed {seed})")
    on_disk_before = set(saved_files(dest))
    garmin.clear_log()
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert set(saved_files(dest)) == ids
    assert not set(downloads(garmin)) & on_disk_before
    assert temp_files(dest) == []
    assert_dest_is_truthful(dest, garmin)
    assert {
        int(k) for k, e in manifest(dest)["activities"].items() if e["status"] == "downloaded"
    } == ids
