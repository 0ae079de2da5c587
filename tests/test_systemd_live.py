"""garminsync's units in a real systemd: `systemd --user` and journald in throw-away namespaces.

The test (root) makes its own cgroup2 sub-directory, moves the process that becomes the
namespaces' PID 1 into it, and runs systemd_live_driver.py under
`unshare --mount --cgroup --pid --fork --mount-proc --propagation private`. The driver
checks that it is inside those namespaces before it mounts or starts anything (in the
machine's own namespaces `systemd --user` would take over the host's cgroups), installs
with `make install`, lets the timer run the service against a fake Garmin Connect, and
reports; the tests below judge the report. Afterwards the host's /proc/1/cgroup must be
unchanged. Needs root and systemd's binaries, not a systemd PID 1. In CI it must run;
elsewhere it skips, saying why.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from install_support import REPO, installed

pytestmark = pytest.mark.timeout(300)  # the first install of the session counts here too

DRIVER = Path(__file__).with_name("systemd_live_driver.py")
REPO_FILES = ("Makefile", "garminsync.py", "garminsync.service", "garminsync.timer")
REPO_FILES += ("garminsync@.service", "garminsync@.timer")
REPO_FILES += ("garminsync.env", "garminsync.sh", "README.md")
REPO_FILES += tuple(f"docs/{page.name}" for page in sorted((REPO / "docs").iterdir()))
NAMESPACES = ("mnt", "cgroup", "pid")
UNSHARE = ["unshare", "--mount", "--cgroup", "--pid", "--fork", "--mount-proc"]
UNSHARE += ["--propagation", "private", "--kill-child"]


def systemd_dir() -> Path | None:
    for d in (Path("/usr/lib/systemd"), Path("/lib/systemd")):
        if (d / "systemd").is_file() and (d / "systemd-journald").is_file():
            return d
    return None


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split(" - ")[1].split()[0] == "cgroup2":
            return Path(line.split()[4])
    return None


def skip_reason() -> str | None:
    """Why the live test cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (it makes namespaces, mounts and a cgroup)"
    missing = [t for t in ("unshare", "setpriv", "mount", "make", "systemctl", "journalctl")]
    missing = [t for t in missing if not shutil.which(t)]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if systemd_dir() is None:
        return "systemd's binaries (systemd, systemd-journald) are not installed"
    if cgroup2_mount() is None:
        return "no cgroup2 file system is mounted"
    if (
        "--kill-child"
        not in subprocess.run(["unshare", "--help"], capture_output=True).stdout.decode()
    ):
        return "unshare lacks --kill-child (util-linux too old)"
    return None


def free_uid() -> int:
    """A regular (journal-splitting) uid with no passwd entry."""
    for uid in range(4242, 60000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid")


def own_cgroup2_path() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError("no cgroup2 line in /proc/self/cgroup")


def remove_cgroup_tree(top: Path) -> list[str]:
    """rmdir a cgroup sub-tree bottom-up once its processes are gone; what could not go."""
    deadline = time.monotonic() + 10
    while True:
        left = []
        for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(directory)
            except OSError as err:
                left.append(f"{directory}: {err.strerror}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live() -> dict[str, Any]:
    """Run the driver once; its report plus what the test saw on the host."""
    reason = skip_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the live systemd test must run in CI, but: {reason}")
        print(f"skipping the live systemd test: {reason}")
        pytest.skip(reason)
    venv = installed().app / "venv"
    uid = free_uid()
    host = {
        "pid1_cgroup": Path("/proc/1/cgroup").read_text(),
        "own_cgroup": Path("/proc/self/cgroup").read_text(),
        "run_user": Path(f"/run/user/{uid}").exists(),
        "ns": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES},
    }
    top = cgroup2_mount() / own_cgroup2_path().lstrip("/") / f"garminsync-live-{os.getpid()}"
    top.mkdir()
    config = {
        "uid": uid,
        "host_ns": host["ns"],
        "repo": str(REPO),
        "repo_files": REPO_FILES,
        "venv": str(venv),
        "systemd_dir": str(systemd_dir()),
    }
    # The shell moves itself into the new cgroup, then becomes unshare: the namespaces'
    # cgroup root is that sub-directory, and nothing of the test's own process changes.
    command = ["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', str(top)]
    command += [*UNSHARE, "--", sys.executable, str(DRIVER), json.dumps(config)]
    began = time.monotonic()
    try:
        # umask 022: the driver lays out files for another user to read, whatever the runner's
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, umask=0o022)
    finally:
        cgroup_left = remove_cgroup_tree(top)
    seconds = time.monotonic() - began
    print(done.stderr[-3000:])
    assert done.stdout.strip(), f"the driver printed no report (exit {done.returncode})"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    seen["host"] = host
    seen["host_after"] = {
        "pid1_cgroup": Path("/proc/1/cgroup").read_text(),
        "own_cgroup": Path("/proc/self/cgroup").read_text(),
        "run_user": Path(f"/run/user/{uid}").exists(),
        "cgroup_left": cgroup_left,
    }
    seen["driver_exit"], seen["driver_stderr"] = done.returncode, done.stderr[-3000:]
    seen["wall_seconds"] = round(seconds, 1)
    print(f"live systemd test: {seen['wall_seconds']}s in all, driver {seen.get('seconds')}s")
    if os.environ.get("GARMINSYNC_LIVE_REPORT"):  # the whole report, for debugging
        Path(os.environ["GARMINSYNC_LIVE_REPORT"]).write_text(json.dumps(seen, indent=1))
    return seen


def part(seen: dict[str, Any], key: str) -> Any:
    """One part of the report; fails with the driver's error and diagnostics if missing."""
    if key not in seen:
        details = {k: seen.get(k) for k in ("error", "diagnostics", "driver_stderr")}
        pytest.fail(f"the live run did not get to {key!r}:\n{json.dumps(details, indent=1)}")
    return seen[key]


def messages(lines: list[dict[str, str]], priority: str | None = None) -> list[str]:
    return [e["MESSAGE"] for e in lines if priority is None or e["PRIORITY"] == priority]


def test_runs_isolated_and_leaves_the_host_alone(live: dict[str, Any]) -> None:
    assert live["isolation_problems"] == []
    for ns in NAMESPACES:
        assert live["inside"][ns] != live["host"]["ns"][ns], ns
    after = live["host_after"]
    assert after["pid1_cgroup"] == live["host"]["pid1_cgroup"]
    assert after["own_cgroup"] == live["host"]["own_cgroup"]
    assert not after["run_user"], "the host got a /run/user directory"
    assert after["cgroup_left"] == []
    assert live["driver_exit"] == 0
    assert "error" not in live, live.get("error")
    assert live["fake_errors"] == []


def test_make_install_in_a_real_user_manager(live: dict[str, Any]) -> None:
    assert part(live, "manager_state") in ("running", "degraded")
    output = part(live, "install")["output"]
    for step in (
        "--login",
        "systemctl --user enable --now garminsync.timer",
        "loginctl enable-linger $USER",
        "journalctl --user -t garminsync",
    ):
        assert step in output
    assert live["env_file_mode"] == "0o600"


def test_timer_runs_the_service_and_the_files_land_in_dest(live: dict[str, Any]) -> None:
    run = part(live, "timer_run")
    assert run["props"]["Result"] == "success", run
    assert run["props"]["ExecMainStatus"] == "0", run
    assert live["timeout_start"] == "infinity"  # a first sync may take hours
    assert all(live["originals_equal"].values()), live["originals_equal"]
    fit = [name for name in live["dest"] if name.endswith(".fit")]
    assert len(fit) == len(live["ids"])
    # UMask=0077: the lock file the script creates with 0644 is the user's alone.
    assert live["dest"][".garminsync.lock"][0] == "0o600"


def test_journal_priorities(live: dict[str, Any]) -> None:
    ok = part(live, "timer_run")["journal"]
    assert ok and {e["PRIORITY"] for e in ok} == {"6"}, ok
    assert len([m for m in messages(ok) if m.startswith("saved activity_")]) == len(live["ids"])
    assert not any(m.startswith(("<", "garminsync:")) for m in messages(ok))

    limited = part(live, "rate_limited")
    assert limited["start_rc"] == 0, limited
    assert limited["props"]["ExecMainStatus"] == "75"
    assert (limited["props"]["ActiveState"], limited["props"]["Result"]) == ("inactive", "success")
    assert any("rate limiting" in m for m in messages(limited["journal"], "4")), limited["journal"]

    refused = part(live, "auth_refused")
    assert refused["start_rc"] != 0
    assert refused["props"]["ExecMainStatus"] == "3"
    assert (refused["props"]["ActiveState"], refused["props"]["Result"]) == ("failed", "exit-code")
    assert any("--login" in m for m in messages(refused["journal"], "3")), refused["journal"]


def test_journal_priority_filter_shows_only_problems(live: dict[str, Any]) -> None:
    shown = part(live, "warning_view")
    assert shown and all(int(e["PRIORITY"]) <= 4 for e in shown), shown
    assert not any(m.startswith("saved activity_") for m in messages(shown))
    for needle in ("rate limiting", "--login", "read-only"):
        assert any(needle in m for m in messages(shown)), needle


def test_dest_outside_the_allowed_paths_fails_saying_how_to_fix_it(live: dict[str, Any]) -> None:
    run = part(live, "dest_not_allowed")
    assert run["props"]["ExecMainStatus"] == "2", run
    assert run["props"]["ActiveState"] == "failed"
    errors = messages(run["journal"], "3")
    assert any("read-only" in m and "make install DEST=" in m for m in errors), run["journal"]


def test_make_install_dest_allows_a_dest_outside_home(live: dict[str, Any]) -> None:
    install = part(live, "install_dest")
    assert install["env_kept"], "re-running make install changed the env file"
    assert "Environment=GARMINSYNC_DEST=/mnt/nas/fit" in install["dropin"]
    assert "ReadWritePaths=/mnt/nas/fit" in install["dropin"]
    assert install["need_reload"] == "no", "make install did not reload the user manager"
    run = part(live, "nas_run")
    assert (run["props"]["Result"], run["props"]["ExecMainStatus"]) == ("success", "0"), run
    fit = [name for name in live["nas"] if name.endswith(".fit")]
    assert len(fit) == len(live["ids"]), live["nas"]


def test_login_with_systemd_credentials(live: dict[str, Any]) -> None:
    run = part(live, "credentials_run")
    assert (run["props"]["Result"], run["props"]["ExecMainStatus"]) == ("success", "0"), run
    assert live["logins"] >= 1, "the service did not log in"
    assert live["session_mode"] == "0o600", "the new session was not saved in the sandbox"


def test_persistent_timer_catches_up_a_missed_run(live: dict[str, Any]) -> None:
    assert part(live, "stamp_exists")
    caught = part(live, "catch_up")
    assert caught["props"]["Result"] == "success", caught
    assert caught["seconds"] < 10
    after = part(live, "after_restart")
    assert after["next_elapse_s"] > 0, "a restart with a fresh stamp is due at once"
    if after["next_elapse_s"] > 2:  # else the real schedule was due just then
        assert after["invocation_unchanged"], "a restart with a fresh stamp ran the service"


# What the sandbox must deny (or change), each against the same probe run by a plain unit
# of the same user manager: (check, expected in the sandbox, expected outside).
ENFORCED = [
    ("write.home", "EROFS", "ok"),  # ProtectHome=read-only
    ("write.units", "EROFS", "ok"),
    ("write.app", "EROFS", "ok"),
    ("write.env_file", "EROFS", "ok"),
    ("write.run_user", "EROFS", "ok"),  # ReadOnlyPaths=/run (and ProtectHome)
    ("write.run_lock", "EROFS", "ok"),  # ReadOnlyPaths=/run
    ("write.dest", "ok", "ok"),  # ReadWritePaths=
    ("write.token_store", "ok", "ok"),
    ("write.tmp", "ok", "ok"),
    ("tmp_marker_visible", False, True),  # PrivateTmp
    ("setuid_bit", "EPERM", "ok"),  # RestrictSUIDSGID
    ("status.NoNewPrivs", "1", "0"),  # NoNewPrivileges
    ("status.Seccomp", "2", "0"),  # SystemCallFilter and friends
    ("status.CapBnd", "0000000000000000", None),  # CapabilityBoundingSet=
    ("status.Umask", "0077", None),  # UMask
    ("nice", 10, 0),  # Nice
    ("io_class", 3, None),  # IOSchedulingClass=idle
    ("wx_memory", "EPERM", "ok"),  # MemoryDenyWriteExecute
    ("personality", "EPERM", "ok"),  # LockPersonality
    ("adjtimex", "EPERM", "ok"),  # ProtectClock, SystemCallFilter=@system-service
    ("setaffinity", "EPERM", "ok"),  # SystemCallFilter=~@resources, SystemCallErrorNumber
    ("userns", "EPERM", None),  # RestrictNamespaces
    ("af_inet", "ok", "ok"),  # RestrictAddressFamilies
    ("af_unix", "ok", "ok"),
    ("af_netlink", "EAFNOSUPPORT", "ok"),
    ("proc_sys_read_only", True, False),  # ProtectKernelTunables
    ("cgroup_read_only", True, False),  # ProtectControlGroups
    ("block_devices", 0, None),  # PrivateDevices
    ("kmsg_visible", False, True),  # ProtectKernelLogs, PrivateDevices
]


def probe_value(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for key in dotted.split("."):
        value = value[key]
    return value


@pytest.mark.parametrize(("check", "inside", "outside"), ENFORCED, ids=[e[0] for e in ENFORCED])
def test_sandbox_is_enforced(live: dict[str, Any], check: str, inside: Any, outside: Any) -> None:
    probe = part(live, "probe")
    assert probe_value(probe["sandbox"], check) == inside
    if outside is not None:
        assert probe_value(probe["control"], check) == outside


def test_sandbox_has_its_own_namespaces_and_keyring(live: dict[str, Any]) -> None:
    sandbox, control = part(live, "probe")["sandbox"], live["probe"]["control"]
    # PrivateUsers (user), the file system settings (mnt), ProtectHostname (uts).
    for ns in ("user", "mnt", "uts"):
        assert sandbox["ns"][ns] != control["ns"][ns], ns
    assert len(sandbox["uid_map"]) == 3, sandbox["uid_map"]  # one uid mapped: PrivateUsers
    assert control["block_devices"] > 0 or control["kmsg_visible"]
    if "session_keyring" in sandbox:  # KeyringMode=private
        assert sandbox["session_keyring"] != control["session_keyring"]


# ---------------------------------------------------------------------------------------
# A second copy with rclone: the ExecStartPost= drop-in of docs/recipes.md, in the real sandbox.


def rclone_ran(post: dict[str, Any]) -> bool:
    """Whether systemd's record of the last ExecStartPost= says it ran and exited 0."""
    return "code=exited ; status=0 " in post["raw"]


def test_rclone_drop_in_keeps_a_copy_of_dest(live: dict[str, Any]) -> None:
    if part(live, "rclone") is None:
        pytest.fail("rclone is not installed: apt-get install rclone (.ci/run does)", pytrace=False)
    run = part(live, "rclone_run")
    assert (run["props"]["Result"], run["props"]["ExecMainStatus"]) == ("success", "0"), run
    assert rclone_ran(run["post"]), run["post"]
    backup = part(live, "backup")
    assert backup["backup_names"] == backup["dest_names"], backup
    assert backup["differ"] == [], "the copy differs from DEST"  # byte for byte
    fit = [name for name in backup["backup_names"] if name.endswith(".fit")]
    assert len(fit) == len(live["ids"]), backup


def test_rclone_runs_after_success_and_tempfail_but_not_after_a_failure(
    live: dict[str, Any],
) -> None:
    if part(live, "rclone") is None:
        pytest.fail("rclone is not installed: apt-get install rclone (.ci/run does)", pytrace=False)
    limited = part(live, "rate_limited")["backup_restored"]  # exit 75: SuccessExitStatus=
    refused = part(live, "auth_refused")["backup_restored"]  # exit 3: the unit fails
    assert limited and refused, "the rclone copy had no activity file to take away"
    assert limited["back"] and rclone_ran(limited["post"]), limited
    assert not refused["back"], refused
    assert "pid=0 " in refused["post"]["raw"], refused["post"]


# ---------------------------------------------------------------------------------------
# Two profiles with the template units garminsync@.service/.timer.

PROFILES = ("alice", "bob")


@pytest.mark.parametrize("name", PROFILES)
def test_make_install_profile(live: dict[str, Any], name: str) -> None:
    profile = part(live, "profiles")[name]
    output = profile["install_output"]
    assert f"garminsync --profile {name} --login" in output
    assert f"systemctl --user enable --now garminsync@{name}.timer" in output
    assert profile["env_file_mode"] == "0o600"
    assert profile["state_mode"] == "0o700"


@pytest.mark.parametrize("name", PROFILES)
def test_each_profile_syncs_into_its_own_dest(live: dict[str, Any], name: str) -> None:
    profile = part(live, "profiles")[name]
    run = profile["run"]
    assert (run["props"]["Result"], run["props"]["ExecMainStatus"]) == ("success", "0"), run
    assert not profile["dest_existed_before"]  # the instance's ExecStartPre= made ~/fit/NAME
    assert all(profile["originals_equal"].values()), profile["originals_equal"]
    fit = [n for n in profile["dest"] if n.endswith(".fit")]
    assert len(fit) == len(live["ids"]), profile["dest"]
    # Its own manifest and lock, in its own DEST; the lock the user's alone (UMask=0077).
    assert "garminsync.json" in profile["dest"]
    assert profile["dest"][".garminsync.lock"][0] == "0o600"
    said = messages(run["journal"])
    assert len([m for m in said if m.startswith("saved activity_")]) == len(live["ids"]), said
    assert any(f"/fit/{name}:" in m for m in said), said


def test_a_profile_writes_only_in_its_own_folders(live: dict[str, Any]) -> None:
    probe = part(live, "profiles")["alice"].get("probe")
    assert probe, "the probe did not run in garminsync@alice.service"
    assert probe["write"]["dest"] == "ok"  # ~/fit/alice
    assert probe["write"]["token_store"] == "ok"  # ~/.local/state/garminsync/alice
    # bob's DEST and session, the plain unit's DEST and session: all read-only for alice.
    assert probe["write_folders"] == {
        "~/fit": "EROFS",
        "~/fit/bob": "EROFS",
        "~/.local/state/garminsync": "EROFS",
        "~/.local/state/garminsync/bob": "EROFS",
    }


@pytest.mark.parametrize(("check", "inside", "outside"), ENFORCED, ids=[e[0] for e in ENFORCED])
def test_template_sandbox_is_enforced(
    live: dict[str, Any], check: str, inside: Any, outside: Any
) -> None:
    probe = part(live, "profiles")["alice"].get("probe")
    assert probe, "the probe did not run in garminsync@alice.service"
    assert probe_value(probe, check) == inside
