"""The part of test_systemd_live.py that runs in a real systemd, inside fresh namespaces.

test_systemd_live.py starts it as root, as PID 1 of new mount, cgroup and PID namespaces:

    unshare --mount --cgroup --pid --fork --mount-proc --propagation private --kill-child \
        python systemd_live_driver.py CONFIG_JSON

It refuses to do anything unless it is inside those namespaces. Then it puts tmpfs on /run,
/home, /mnt, /tmp, /var/tmp and /var/log, mounts cgroup2 rooted at its own cgroup, starts
systemd-journald and `systemd --user` for an unprivileged uid, installs garminsync with
`make install`, runs it against a fake Garmin Connect, and prints what it saw as one JSON
object on stdout. The test asserts; this script only observes (its own progress goes to
stderr). When it exits, the PID namespace ends and every process in it with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trustme  # noqa: E402
from fake_garmin import FakeGarmin, add_many_activities, status  # noqa: E402

CFG: dict[str, Any] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
UID: int = CFG.get("uid", 0)
HOME = Path("/home/garminsync-test")
RUNTIME_DIR = Path(f"/run/user/{UID}")
SRC = Path("/home/src")  # the repository files make install needs, readable by UID
STATE = HOME / ".local/state/garminsync"
UNITS = HOME / ".config/systemd/user"
VENV_PY = HOME / ".local/share/garminsync/venv/bin/python"
MARKER = "/tmp/garminsync-live-marker"  # noqa: S108 (in the namespace's own tmpfs)
NAS = Path("/mnt/nas/fit")
BACKUP = Path("/mnt/backup")  # the rclone remote "backup:" (an alias of this local folder)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP = Path("/sys/fs/cgroup")
MANAGER_CGROUP = CGROUP / f"user.slice/user-{UID}.slice/user@{UID}.service"
SETPRIV = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--inh-caps=-all"]
T0 = time.monotonic()
# The test's timer drop-in: no random delay, elapse to the 100 ms (the default is a minute).
PROMPT_TIMER = "[Timer]\nRandomizedDelaySec=0\nAccuracySec=100ms\n"


def log(message: str) -> None:
    print(f"[driver {time.monotonic() - T0:6.2f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Isolation: checked before anything is mounted or started.


def isolation_problems() -> list[str]:
    """Why this process is not safely inside its own namespaces (empty: it is)."""
    problems = []
    if os.getpid() != 1:
        problems.append(f"pid is {os.getpid()}, not 1 in a new PID namespace")
    for ns, host in CFG["host_ns"].items():
        if os.readlink(f"/proc/self/ns/{ns}") == host:
            problems.append(f"still in the host's {ns} namespace {host}")
    cgroup_lines = Path("/proc/self/cgroup").read_text().splitlines()
    if "0::/" not in cgroup_lines:
        problems.append(f"cgroup namespace is not rooted at this cgroup: {cgroup_lines}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/" and "shared:" in line.split(" - ")[0]:
            problems.append("the root mount propagates to the host (not private)")
    return problems


# ---------------------------------------------------------------------------------------
# Helpers


def run(args: list[str], timeout: float = 30, check: bool = True, **kw: Any):
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def user_env(**extra: str) -> dict[str, str]:
    env = {
        "HOME": str(HOME),
        "USER": f"u{UID}",
        "LOGNAME": f"u{UID}",
        "XDG_RUNTIME_DIR": str(RUNTIME_DIR),
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    env.update(extra)
    return env


def as_user(args: list[str], timeout: float = 30, check: bool = True, env: dict | None = None):
    """Run a command as UID with a clean login-like environment."""
    envs = [f"{k}={v}" for k, v in (env or user_env()).items()]
    return run([*SETPRIV, "env", "-i", *envs, *args], timeout=timeout, check=check)


def systemctl(*args: str, check: bool = True, timeout: float = 30):
    return as_user(["systemctl", "--user", "--no-pager", *args], timeout=timeout, check=check)


def show(unit: str, *props: str) -> dict[str, str]:
    out = systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


RUN_PROPS = (
    "InvocationID",
    "ActiveState",
    "Result",
    "ExecMainStatus",
    "ExecMainPID",
    "ExecMainExitTimestampMonotonic",
)


def wait_for_run(
    previous: str, timeout: float = 20, unit: str = "garminsync.service"
) -> dict[str, str]:
    """Wait until the unit finished a run other than `previous` (InvocationID)."""
    deadline = time.monotonic() + timeout
    while True:
        props = show(unit, *RUN_PROPS)
        done = props["ActiveState"] in ("inactive", "failed")
        if props["InvocationID"] not in ("", previous) and done:
            return props
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new run of {unit} within {timeout}s: {props}")
        time.sleep(0.05)


def journalctl_user(*args: str) -> str:
    """`journalctl --user -t garminsync -o json ARGS` as the user, after a sync."""
    run(["journalctl", "--sync"])  # as root: journald writes out what it holds
    cmd = ["journalctl", "--user", "-q", "-t", "garminsync", "-o", "json", "--no-pager", *args]
    return as_user(cmd).stdout.strip()


def journal(pid: str) -> list[dict[str, str]]:
    """PRIORITY and MESSAGE of the garminsync lines of one process."""
    lines = map(json.loads, journalctl_user(f"_PID={pid}").splitlines())
    return [{"PRIORITY": e.get("PRIORITY"), "MESSAGE": e.get("MESSAGE")} for e in lines]


def start_service(unit: str = "garminsync.service") -> dict[str, Any]:
    """`systemctl --user start UNIT` (waits: Type=oneshot); what came of it."""
    before = show(unit, "InvocationID")["InvocationID"]
    began = time.monotonic()
    started = systemctl("start", unit, check=False, timeout=60)
    props = wait_for_run(before, unit=unit)
    return outcome(props, began, start_rc=started.returncode)


def outcome(props: dict[str, str], began: float, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "seconds": round(time.monotonic() - began, 2),
        "props": props,
        "journal": journal(props["ExecMainPID"]),
    }


def files_in(directory: Path) -> dict[str, Any]:
    """The files of a DEST: name -> [mode, bytes] (contents only for activity files)."""
    found = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        st = path.lstat()
        found[path.name] = [oct(st.st_mode & 0o7777), st.st_size]
    return found


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file as root and give it (and new parent folders under HOME) to UID."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    for p in [path, *path.parents]:
        if p == HOME.parent:
            break
        os.chown(p, UID, UID)


def mount(fstype: str, target: str, options: str = "mode=0755") -> None:
    Path(target).mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", fstype, "-o", options, fstype, target])


# ---------------------------------------------------------------------------------------
# The world: file systems, journald, the user manager.


def build_world(ca_pem: bytes) -> str:
    """Mount, start journald and the user manager; returns the manager's state."""
    # HOME and a NAS-like folder outside it; fill HOME while the host's /tmp is visible.
    mount("tmpfs", "/home")
    mount("tmpfs", "/mnt")
    HOME.mkdir()
    os.chown(HOME, UID, UID)
    SRC.mkdir()
    for name in CFG["repo_files"]:
        (SRC / name).parent.mkdir(exist_ok=True)
        shutil.copy2(Path(CFG["repo"]) / name, SRC / name)
    shutil.copy2(Path(__file__).with_name("systemd_probe.py"), HOME / "probe.py")
    if CFG.get("venv"):  # the session's install: `make install` below then only upgrades
        shutil.copytree(CFG["venv"], VENV_PY.parent.parent, symlinks=True)
    run(["chown", "-R", f"{UID}:{UID}", str(HOME)])
    write(HOME / ".config/garminsync/ca.pem", ca_pem.decode())
    # Everything else the services see: private, empty, gone with the namespace.
    for target in ("/tmp", "/var/tmp"):  # noqa: S108
        mount("tmpfs", target, "mode=1777")
    Path(MARKER).write_text("the /tmp outside the sandbox\n")
    mount("tmpfs", "/var/log")
    mount("tmpfs", "/run")
    # What a booted systemd host has in /run (credentials: PID 1 makes it for its services).
    for d in ("systemd/system", "systemd/unit-root", "systemd/journal", "credentials", "lock"):
        Path("/run", d).mkdir(parents=True)
    Path("/run/lock").chmod(0o1777)
    RUNTIME_DIR.mkdir(parents=True, mode=0o700)
    os.chown(RUNTIME_DIR, UID, UID)
    # journald: persistent storage (on the tmpfs /var/log) so that it splits the journal
    # per user and `journalctl --user` works; "flushed" makes it write there at once.
    Path("/run/systemd/journal/flushed").touch()
    Path("/run/systemd/journald.conf.d").mkdir()
    Path("/run/systemd/journald.conf.d/test.conf").write_text(
        "[Journal]\nStorage=persistent\nReadKMsg=no\nForwardToSyslog=no\nForwardToWall=no\n"
    )
    run(["install", "-d", "-m", "2755", "-g", "systemd-journal", "/var/log/journal"])
    # cgroup2, rooted at the test's own sub-tree (the cgroup namespace), delegated to UID.
    run(["mount", "-t", "cgroup2", "cgroup2", str(CGROUP)])
    for group in ("init.scope", "system.slice/systemd-journald.service"):
        (CGROUP / group).mkdir(parents=True)
    MANAGER_CGROUP.mkdir(parents=True)
    for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(MANAGER_CGROUP / name, UID, UID)
    (CGROUP / "init.scope/cgroup.procs").write_text(str(os.getpid()))

    libexec = Path(CFG["systemd_dir"])
    logs = {name: open(f"/run/{name}.log", "w") for name in ("journald", "manager")}
    journald_cg = CGROUP / "system.slice/systemd-journald.service/cgroup.procs"
    subprocess.Popen(
        ["sh", "-c", f'echo $$ >{journald_cg} && exec "$0"', str(libexec / "systemd-journald")],
        stdout=logs["journald"],
        stderr=subprocess.STDOUT,
        env={"PATH": SYSTEM_PATH},
    )
    wait_for(lambda: Path("/run/systemd/journal/stdout").is_socket(), "journald's socket")
    log("journald is up")
    envs = [f"{k}={v}" for k, v in user_env(SYSTEMD_LOG_TARGET="journal-or-kmsg").items()]
    manager_cmd = [*SETPRIV, "env", "-i", *envs, str(libexec / "systemd"), "--user"]
    subprocess.Popen(
        ["sh", "-c", f'echo $$ >{MANAGER_CGROUP}/cgroup.procs && exec "$@"', "sh", *manager_cmd],
        stdout=logs["manager"],
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: (RUNTIME_DIR / "systemd/private").is_socket(), "the user manager")
    state = systemctl("is-system-running", "--wait", check=False, timeout=20).stdout.strip()
    log(f"user manager is {state}")
    return state


def wait_for(condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout}s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# The scenario: what a user does, and what can go wrong, in order.


def scenario(fake: FakeGarmin, ids: list[int], seen: dict[str, Any]) -> None:
    began = time.monotonic()
    done = as_user(["make", "--no-print-directory", "-C", str(SRC), "install"], timeout=300)
    seen["install"] = {"seconds": round(time.monotonic() - began, 2), "output": done.stdout}
    log(f"make install: {seen['install']['seconds']}s")

    # Point the service at the fake: settings in the env file, proxy and CA in a drop-in.
    env_file = HOME / ".config/garminsync/env"
    seen["env_file_mode"] = oct(env_file.stat().st_mode & 0o777)
    write(env_file, env_file.read_text() + "GARMINSYNC_DELAY=0\n", 0o600)
    ca = HOME / ".config/garminsync/ca.pem"
    proxy = fake.proxy_url
    write(
        UNITS / "garminsync.service.d/fake-garmin.conf",
        "[Service]\n"
        f"Environment=HTTPS_PROXY={proxy} https_proxy={proxy}\n"
        f"Environment=REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca} CURL_CA_BUNDLE={ca}\n",
    )
    probe_args = f"{HOME} {RUNTIME_DIR} %h/fit {STATE} {MARKER}"
    write(
        UNITS / "garminsync.service.d/probe.conf",
        f"[Service]\nExecStartPre={VENV_PY} {HOME}/probe.py {STATE}/probe-sandbox.json "
        f"{probe_args}\n",
    )
    write(
        UNITS / "probe-control.service",
        "[Service]\nType=oneshot\n"
        f"ExecStart={VENV_PY} {HOME}/probe.py {STATE}/probe-control.json {probe_args}\n",
    )
    write(UNITS / "garminsync.timer.d/test.conf", PROMPT_TIMER + "OnActiveSec=1s\n")
    fake.seed_tokens(STATE)
    run(["chown", "-R", f"{UID}:{UID}", str(STATE)])
    systemctl("daemon-reload")

    # 1. The timer fires and the service downloads everything into ~/fit.
    began = time.monotonic()
    before = show("garminsync.service", "InvocationID")["InvocationID"]
    systemctl("enable", "--now", "garminsync.timer")
    seen["timer_run"] = outcome(wait_for_run(before), began)
    seen["timeout_start"] = show("garminsync.service", "TimeoutStartUSec")["TimeoutStartUSec"]
    log(f"timer run: {seen['timer_run']['props']}")
    seen["dest"] = files_in(HOME / "fit")
    seen["originals_equal"] = {
        str(i): any(
            p.name.startswith(f"activity_{i}_") and p.read_bytes() == fake.original(i)
            for p in (HOME / "fit").iterdir()
        )
        for i in ids
    }
    systemctl("start", "probe-control.service")  # the same probe, outside the sandbox
    seen["probe"] = {
        where: json.loads((STATE / f"probe-{where}.json").read_text())
        for where in ("sandbox", "control")
    }
    (UNITS / "garminsync.service.d/probe.conf").unlink()
    systemctl("daemon-reload")

    # 1b. The rclone drop-in of docs/recipes.md keeps a second copy after each run (in steps 1b-3).
    rclone = shutil.which("rclone")
    seen["rclone"] = rclone
    if rclone:
        rclone_backup(rclone, seen)

    # 2. Rate limited for an hour: exit 75, logged, the unit does not fail.
    fake.add_fault(r"^/activitylist-service/", status(429, {"Retry-After": "3600"}), times=None)
    gone = drop_a_backup_file()
    seen["rate_limited"] = start_service()
    fake.clear_faults()
    seen["rate_limited"]["backup_restored"] = backup_restored(gone)

    # 3. Garmin refuses the session: exit 3, the unit fails.
    fake.add_fault(r"^/", status(401), times=None, host="connectapi.garmin.com")
    gone = drop_a_backup_file()
    seen["auth_refused"] = start_service()
    fake.clear_faults()
    seen["auth_refused"]["backup_restored"] = backup_restored(gone)
    if rclone:
        (UNITS / "garminsync.service.d/rclone.conf").unlink()
        systemctl("daemon-reload")

    # 4. A DEST outside the sandbox's writable paths, set in the env file: exit 2, says why.
    NAS.mkdir(parents=True)
    run(["chown", "-R", f"{UID}:{UID}", "/mnt/nas"])
    plain_env = env_file.read_text()
    write(env_file, plain_env + f"GARMINSYNC_DEST={NAS}\n", 0o600)
    seen["dest_not_allowed"] = start_service()
    write(env_file, plain_env, 0o600)

    # 5. `make install DEST=...` allows it: an upgrade in place that keeps the env file.
    done = as_user(["make", "-C", str(SRC), "install", f"DEST={NAS}"], timeout=300)
    seen["install_dest"] = {
        "output": done.stdout,
        "env_kept": env_file.read_text() == plain_env,
        "dropin": (UNITS / "garminsync.service.d/dest.conf").read_text(),
        "need_reload": show("garminsync.service", "NeedDaemonReload")["NeedDaemonReload"],
    }
    seen["nas_run"] = start_service()
    seen["nas"] = files_in(NAS)

    # 6. No saved session: log in with the password handed over by LoadCredential=.
    (STATE / "garmin_tokens.json").unlink()
    for name, value in (("email", fake.email), ("password", fake.password)):
        write(HOME / f".config/garminsync/{name}", value + "\n", 0o600)
    write(
        UNITS / "garminsync.service.d/credentials.conf",
        "[Service]\nLoadCredential=garmin_email:%h/.config/garminsync/email\n"
        "LoadCredential=garmin_password:%h/.config/garminsync/password\n",
    )
    systemctl("daemon-reload")
    seen["credentials_run"] = start_service()
    seen["logins"] = len(fake.requests_to("/mobile/api/login", host="sso.garmin.com"))
    session = STATE / "garmin_tokens.json"
    seen["session_mode"] = oct(session.stat().st_mode & 0o777) if session.exists() else None

    # 7. Persistent=true: a run missed while "the machine was off" happens on start.
    systemctl("stop", "garminsync.timer")
    write(UNITS / "garminsync.timer.d/test.conf", PROMPT_TIMER)
    systemctl("daemon-reload")
    stamp = HOME / ".local/share/systemd/timers/stamp-garminsync.timer"
    seen["stamp_exists"] = stamp.exists()
    seven_hours_ago = time.time() - 7 * 3600
    os.utime(stamp, (seven_hours_ago, seven_hours_ago))
    began = time.monotonic()
    before = show("garminsync.service", "InvocationID")["InvocationID"]
    systemctl("start", "garminsync.timer")
    seen["catch_up"] = outcome(wait_for_run(before, timeout=15), began)
    # ... and only a missed one: with the stamp now fresh, a restart waits for the schedule.
    systemctl("restart", "garminsync.timer")
    next_elapse = next_elapse_seconds()
    time.sleep(1.0)
    seen["warning_view"] = [
        {"PRIORITY": e.get("PRIORITY"), "MESSAGE": e.get("MESSAGE")}
        for e in map(json.loads, journalctl_user("-p", "warning").splitlines())
    ]
    seen["after_restart"] = {
        "invocation_unchanged": show("garminsync.service", "InvocationID")["InvocationID"]
        == seen["catch_up"]["props"]["InvocationID"],
        "next_elapse_s": next_elapse,
    }

    # 8. Two profiles (two Garmin accounts) with the template units, each in its own folders.
    profiles(fake, ids, seen)


def rclone_recipe() -> str:
    """The drop-in docs/recipes.md gives for a second copy after each run, as users read it."""
    text = (SRC / "docs/recipes.md").read_text()
    block = re.search(r"```ini\n(\[Service\]\nExecStartPost=/usr/bin/rclone .*?)```", text, re.S)
    assert block, "docs/recipes.md has no rclone drop-in"
    return block.group(1)


def rclone_backup(rclone: str, seen: dict[str, Any]) -> None:
    """Add the recipe's rclone drop-in (with the rclone `shutil.which` finds, in case it is
    not /usr/bin's); run the service; compare the copy with DEST."""
    BACKUP.mkdir()
    os.chown(BACKUP, UID, UID)
    # The remote "backup:" is a local folder; an alias keeps `backup:fit` as in the recipe.
    conf = f"[backup]\ntype = alias\nremote = {BACKUP}\n"
    write(HOME / ".config/rclone/rclone.conf", conf, 0o600)
    write(
        UNITS / "garminsync.service.d/rclone.conf",
        rclone_recipe().replace("/usr/bin/rclone", rclone),
    )
    systemctl("daemon-reload")
    run_ = seen["rclone_run"] = start_service()
    run_["post"] = exec_start_post()
    dest, copy = HOME / "fit", BACKUP / "fit"
    names = sorted(p.name for p in dest.iterdir())
    seen["backup"] = {
        "dest_names": names,
        "backup_names": sorted(p.name for p in copy.iterdir()) if copy.is_dir() else [],
        "differ": [
            n
            for n in names
            if not (copy / n).is_file() or (copy / n).read_bytes() != (dest / n).read_bytes()
        ],
    }


def exec_start_post() -> dict[str, Any]:
    """The ExecStartPost= of the last run of garminsync.service: systemd's record of it
    ("code=exited ; status=0" once it ran and exited 0, "pid=0" if it did not run), and the
    journal of its process."""
    raw = show("garminsync.service", "ExecStartPost")["ExecStartPost"]
    pid = next((f.split("=")[1] for f in raw.split(" ; ") if f.startswith("pid=")), "0")
    return {"raw": raw, "journal": journal(pid) if pid != "0" else []}


def drop_a_backup_file() -> Path | None:
    """Remove one activity file from the rclone copy: the next ExecStartPost= brings it back."""
    copy = BACKUP / "fit"
    victim = next(iter(sorted(copy.glob("activity_*"))), None) if copy.is_dir() else None
    if victim:
        victim.unlink()
    return victim


def backup_restored(victim: Path | None) -> dict[str, Any] | None:
    if victim is None:
        return None
    return {"file": victim.name, "back": victim.exists(), "post": exec_start_post()}


def profiles(fake: FakeGarmin, ids: list[int], seen: dict[str, Any]) -> None:
    """`make install PROFILE=alice` and `PROFILE=bob`; bob runs, then alice with the probe
    as an ExecStartPre= (bob's folders exist by then)."""
    found: dict[str, Any] = {}
    ca = HOME / ".config/garminsync/ca.pem"
    proxy = fake.proxy_url
    for name in ("alice", "bob"):
        cmd = ["make", "--no-print-directory", "-C", str(SRC), "install", f"PROFILE={name}"]
        began = time.monotonic()
        done = as_user(cmd, timeout=300)
        env_file = HOME / f".config/garminsync/{name}.env"
        found[name] = {
            "install_seconds": round(time.monotonic() - began, 2),
            "install_output": done.stdout,
            "env_file_mode": oct(env_file.stat().st_mode & 0o777),
            "state_mode": oct((STATE / name).stat().st_mode & 0o777),
        }
        write(env_file, env_file.read_text() + "GARMINSYNC_DELAY=0\n", 0o600)
        fake.seed_tokens(STATE / name)
    log(f"make install PROFILE=...: {[found[n]['install_seconds'] for n in found]}s")
    run(["chown", "-R", f"{UID}:{UID}", str(STATE)])
    write(
        UNITS / "garminsync@.service.d/fake-garmin.conf",
        "[Service]\n"
        f"Environment=HTTPS_PROXY={proxy} https_proxy={proxy}\n"
        f"Environment=REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca} CURL_CA_BUNDLE={ca}\n",
    )
    # In alice's sandbox: may it write in its own folders, bob's, the plain unit's?
    others = " ".join(str(p) for p in profile_folders().values())
    write(
        UNITS / "garminsync@alice.service.d/probe.conf",
        f"[Service]\nExecStartPre={VENV_PY} {HOME}/probe.py %h/.local/state/garminsync/%i/"
        f"probe.json {HOME} {RUNTIME_DIR} %h/fit/%i %h/.local/state/garminsync/%i {MARKER} "
        f"{others}\n",
    )
    write(UNITS / "garminsync@.timer.d/test.conf", PROMPT_TIMER + "OnActiveSec=1s\n")
    systemctl("daemon-reload")

    # One after the other, each from its timer (which keeps the finished instance loaded:
    # without a reference, an inactive instance is unloaded and its results with it).
    for name in ("bob", "alice"):
        found[name]["dest_existed_before"] = (HOME / "fit" / name).exists()
        found[name]["run"] = profile_timer_run(name)
    probe_file = STATE / "alice/probe.json"
    if probe_file.exists():
        found["alice"]["probe"] = probe = json.loads(probe_file.read_text())
        probe["write_folders"] = {
            label: probe["write_folders"].get(str(path))
            for label, path in profile_folders().items()
        }
    for name in ("alice", "bob"):
        dest = HOME / "fit" / name
        found[name]["dest"] = files_in(dest)
        found[name]["originals_equal"] = {
            str(i): any(
                p.name.startswith(f"activity_{i}_") and p.read_bytes() == fake.original(i)
                for p in (dest.iterdir() if dest.is_dir() else [])
            )
            for i in ids
        }
    seen["profiles"] = found
    log(f"profiles: alice {found['alice']['run']['props']}, bob {found['bob']['run']['props']}")


def profile_timer_run(name: str) -> dict[str, Any]:
    """Enable garminsync@NAME.timer (it elapses after 1 s); the run of its service."""
    unit = f"garminsync@{name}.service"
    began = time.monotonic()
    before = show(unit, "InvocationID")["InvocationID"]
    systemctl("enable", "--now", f"garminsync@{name}.timer")
    finished = outcome(wait_for_run(before, unit=unit), began)
    systemctl("stop", f"garminsync@{name}.timer")
    return finished


def profile_folders() -> dict[str, Path]:
    """What alice's probe tries to write in, besides her own DEST and session folder."""
    return {
        "~/fit": HOME / "fit",  # the plain unit's DEST
        "~/fit/bob": HOME / "fit/bob",
        "~/.local/state/garminsync": STATE,  # the plain unit's session
        "~/.local/state/garminsync/bob": STATE / "bob",
    }


def next_elapse_seconds() -> float:
    """Seconds until garminsync.timer elapses next (realtime)."""
    value = show("garminsync.timer", "NextElapseUSecRealtime")["NextElapseUSecRealtime"]
    out = run(["date", "-d", value, "+%s"]).stdout.strip()
    return round(float(out) - time.time(), 1)


def diagnostics(seen: dict[str, Any]) -> None:
    """What helps to understand a failure."""
    for name, args in {
        "status": ["systemctl", "--user", "--no-pager", "status", "garminsync.service"],
        "user_journal": ["journalctl", "--user", "--no-pager", "-n", "300"],
    }.items():
        try:
            seen.setdefault("diagnostics", {})[name] = as_user(args, check=False).stdout[-30000:]
        except Exception as err:
            seen.setdefault("diagnostics", {})[name] = repr(err)
    for name in ("manager", "journald"):
        with_log = Path(f"/run/{name}.log")
        if with_log.exists():
            seen.setdefault("diagnostics", {})[name] = with_log.read_text()[-4000:]


def main() -> int:
    seen: dict[str, Any] = {"isolation_problems": isolation_problems()}
    if seen["isolation_problems"]:
        print(json.dumps(seen))
        return 2
    seen["inside"] = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in CFG["host_ns"]}
    ca = trustme.CA()
    fake = FakeGarmin(ca).start()  # issues its certificate now, while /tmp is the host's
    ids = add_many_activities(fake, 4)
    try:
        seen["manager_state"] = build_world(ca.cert_pem.bytes())
        scenario(fake, ids, seen)
    except Exception:
        seen["error"] = traceback.format_exc()
    finally:
        fake.stop()
    diagnostics(seen)
    seen["fake_errors"] = fake.errors
    seen["ids"] = ids
    seen["seconds"] = round(time.monotonic() - T0, 2)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
