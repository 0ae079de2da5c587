"""What a newcomer meets (issue 10): a closed pipe, a missing library, a run in progress, a
cut reason, the session folder, --list's columns and silences, and the --login prompts."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import unicodedata
from datetime import datetime
from pathlib import Path

import pytest
from conftest import SCRIPT
from fake_garmin import make_activity, synthetic_fit
from helpers import one_error_line


def pending_manifest(dest: Path, n: int) -> None:
    """A manifest of n pending activities, enough to fill any pipe buffer when listed."""
    dest.mkdir(parents=True, exist_ok=True)
    activities = {
        str(i): {"id": i, "start_local": "2024-01-01 07:00:00", "status": "pending"}
        for i in range(1, n + 1)
    }
    (dest / "garminsync.json").write_text(json.dumps({"version": 1, "activities": activities}))


@pytest.mark.parametrize(
    "args", [["--list", "missing"], ["--status"], ["--help"]], ids=["list", "status", "help"]
)
def test_a_closed_pipe_ends_quietly(env, dest, args):
    pending_manifest(dest, 3000)
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--offline", "--dest", str(dest)],
            env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_without_garminconnect_a_run_says_how_to_install_it(run, env, dest, tmp_path):
    shadow = tmp_path / "shadow" / "garminconnect"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'garminconnect'\", name='garminconnect')\n"
    )
    result = run("--dest", dest, env={**env, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "pip install 'garminconnect>=0.3.2,<0.4'" in line and "uv run" in line


def test_status_during_a_run_shows_since_when(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    with open(dest / ".garminsync.lock", "r+b") as lock:  # held as a running sync holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(b"2026-11-30T06:12:09Z")
        lock.flush()
        garmin.clear_log()
        online = run("--status", "--dest", dest)
        offline = run("--status", "--offline", "--dest", dest)
    assert online.returncode == 0, online.stderr
    assert garmin.log == []  # the running sync talks to Garmin; --status does not
    for result in (online, offline):
        assert "running:    a sync has been running since 2026-11-30T06:12:09Z" in result.stdout
        assert "last run:" in result.stdout


def test_an_unreachable_garmin_is_said_plainly(garmin, real_account, run, env, dest):
    garmin.stop()
    line = one_error_line(run("--dest", dest).stderr)
    assert "Unable to connect to proxy: Connection refused" in line
    assert "HTTPSConnectionPool" not in line


def test_the_session_folder_is_the_units_whatever_xdg_state_home_says(bare_env, run, dest):
    env = {k: v for k, v in bare_env.items() if k != "GARMINTOKENS"}
    env["XDG_STATE_HOME"] = str(Path(env["HOME"]) / "xdg-state")
    shown = json.loads(run("--status", "--offline", "--json", "--dest", dest, env=env).stdout)
    home_state = Path(env["HOME"]) / ".local/state/garminsync/garmin_tokens.json"
    assert shown["token_store"] == str(home_state)


def test_list_has_a_header_and_wide_names_keep_the_columns(garmin, run, dest):
    for activity_id, name in ((80, "🏃 run 🚴 ride 🏊"), (81, "Lunch run"), (82, "朝のランニング")):
        start = datetime(2024, 5, 1, 7, 0).replace(day=activity_id - 79)
        garmin.add_activity(
            make_activity(activity_id, start, name=name), synthetic_fit(activity_id)
        )
    assert run("--dest", dest).returncode == 0
    lines = run("--list", "all", "--offline", "--dest", dest).stdout.splitlines()
    assert lines[0].split() == ["id", "start", "(local)", "type", "name", "status"]

    def column_of_status(line: str) -> int:
        before = line[: line.rindex("downloaded")] if "downloaded" in line else line
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in before)

    assert len({column_of_status(line) for line in lines[1:]}) == 1, lines
    assert column_of_status(lines[0].replace("status", "downloaded")) == column_of_status(lines[1])


def test_list_missing_with_nothing_missing_says_so_on_stderr(garmin, real_account, run, dest):
    assert run("--dest", dest).returncode == 0
    result = run("--list", "missing", "--offline", "--dest", dest)
    assert (result.returncode, result.stdout) == (0, "")
    assert "no missing activities" in result.stderr


def test_an_empty_email_at_the_login_prompt_asks_nothing_more(bare_env, run):
    result = run("--login", env=bare_env, input="\n")
    assert result.returncode == 3
    assert "no email given" in one_error_line(result.stderr)
    assert "password" not in (result.stdout + result.stderr).lower()


def test_ctrl_c_at_the_password_prompt_says_only_that_it_stopped(bare_env):
    import pexpect

    child = pexpect.spawn(sys.executable, [str(SCRIPT), "--login"], env=bare_env, timeout=30)
    child.expect("email: ")
    child.sendline("runner@example.com")
    child.expect("password: ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before.decode()
    assert child.exitstatus == 130, screen
    assert "stopped by SIGINT" in screen and "files saved" not in screen
