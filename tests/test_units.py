"""The systemd units and `make install`/`make uninstall`, checked without running systemd.

`systemd-analyze` reads the units as `make install` put them into a throw-away HOME. As
root it would write below the host's /run/systemd, so it runs as uid 65534 then. The live
counterpart, in a real user manager, is test_systemd_live.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from install_support import REPO, SYSTEM_PATH, UNIT_FILES, Install, copy_of, installed, make
from packaging.requirements import Requirement

pytestmark = pytest.mark.timeout(300)  # the first test to ask for it makes the one install
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)"
)

EXPOSURE_TARGET = 2.0
# Settings a user manager does not enforce (they need privileges it lacks, or, as the live
# test showed for ProtectProc/ProcSubset/PrivateIPC on systemd 252, are silently dropped):
# listing them would only flatter the exposure score.
NOT_ENFORCED_IN_USER_MANAGER = (
    "User",
    "Group",
    "DynamicUser",
    "SupplementaryGroups",
    "ProtectProc",
    "ProcSubset",
    "PrivateIPC",
    "IPAddressDeny",
    "IPAddressAllow",
    "DevicePolicy",
    "DeviceAllow",
    "RemoveIPC",
)


def unit_settings(path: Path, section: str | None = None) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat); only those of `section` if given,
    else of all sections (not told apart)."""
    settings: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif line and not line.startswith(("#", ";")) and section in (None, current):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def install() -> Install:
    return installed()


@pytest.fixture(scope="module")
def runtime_dir() -> Iterator[Path]:
    """An XDG_RUNTIME_DIR for `systemd-analyze --user`, owned by the uid that runs it."""
    path = Path(tempfile.mkdtemp(prefix="garminsync-xdg-"))
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def analyze(home: Path, runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze ARGS` for HOME=home, unprivileged."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime_dir), "PATH": SYSTEM_PATH}
    return subprocess.run(
        [*(drop if os.geteuid() == 0 else []), "systemd-analyze", *args],
        env={**env, "TZ": "UTC", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verify(install: Install, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    units = [str(install.units / name) for name in UNIT_FILES]
    return analyze(install.home, runtime_dir, "verify", "--user", "--man=no", *units)


@needs_analyze
def test_units_verify_without_any_message(install: Install, runtime_dir: Path) -> None:
    # verify exits 0 on warnings such as a misspelt key: any output is a failure.
    done = verify(install, runtime_dir)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("name", ["garminsync.service", "garminsync@.service"])
def test_verify_would_catch_a_misspelt_key(install: Install, runtime_dir: Path, name: str) -> None:
    broken = copy_of(install)
    service = broken.units / name
    service.write_text(service.read_text().replace("Nice=", "Nicety="))
    assert "Unknown key" in verify(broken, runtime_dir).stderr


@needs_analyze
@pytest.mark.parametrize("name", ["garminsync.service", "garminsync@.service"])
def test_exposure_is_at_most_the_target(install: Install, runtime_dir: Path, name: str) -> None:
    service = str(install.units / name)
    threshold = f"--threshold={int(EXPOSURE_TARGET * 10)}"  # the scale is 0-100
    done = analyze(
        install.home, runtime_dir, "security", "--offline=true", "--user", threshold, service
    )
    # A template is judged as an instance of it: garminsync@i.service.
    found = re.search(r"Overall exposure level for garminsync@?i?\.service: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    print(f"exposure of {name}: {found.group(1)}")
    assert float(found.group(1)) <= EXPOSURE_TARGET, done.stdout
    assert done.returncode == 0, done.stderr


@needs_analyze
def test_timer_schedule_is_every_6_hours(install: Install, runtime_dir: Path) -> None:
    timer = unit_settings(REPO / "garminsync.timer")
    (calendar,) = timer["OnCalendar"]
    done = analyze(install.home, runtime_dir, "calendar", "--iterations=4", calendar)
    assert done.returncode == 0, done.stderr
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d): \w+ (\S+ \S+)", done.stdout)
    times = [datetime.fromisoformat(s) for s in stamps]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [6 * 3600] * 3, done.stdout
    assert timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] and timer["RandomizedDelaySec"] != ["0"]
    assert timer["WantedBy"] == ["timers.target"]


def test_service_settings() -> None:
    unit = unit_settings(REPO / "garminsync.service")
    assert unit["Type"] == ["oneshot"]
    venv_python = "%h/.local/share/garminsync/venv/bin/python"
    assert unit["ExecStart"] == [
        f"{venv_python} %h/.local/share/garminsync/garminsync.py --missing"
    ]
    assert unit["EnvironmentFile"] == ["-%h/.config/garminsync/env"]
    assert unit["SyslogIdentifier"] == ["garminsync"]
    # 75 (temporary) and 143 (systemctl stop) are not failures; 1, 2 and 3 are.
    assert " ".join(unit["SuccessExitStatus"]).split() == ["TEMPFAIL", "143"]  # TEMPFAIL: 75
    assert unit.get("TimeoutStartSec", ["infinity"]) == ["infinity"]  # oneshot: none
    assert unit["Nice"] and unit["IOSchedulingClass"] == ["idle"]
    # Without PrivateUsers= a user manager skips the file system sandbox.
    assert unit["PrivateUsers"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ProtectHome"] == ["read-only"]
    assert unit["ReadOnlyPaths"] == ["/run"]
    assert unit["UMask"] == ["0077"]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in unit["SystemCallFilter"]
    # The defaults of DEST and the token store are the paths the sandbox lets it write.
    environment = " ".join(unit["Environment"]).split()
    assert "GARMINSYNC_DEST=%h/fit" in environment
    assert "GARMINTOKENS=%h/.local/state/garminsync" in environment
    writable = " ".join(unit["ReadWritePaths"]).split()
    assert sorted(p.lstrip("-") for p in writable) == ["%h/.local/state/garminsync", "%h/fit"]
    assert [k for k in NOT_ENFORCED_IN_USER_MANAGER if k in unit] == []


# What a profile's instance has of its own; every other [Service] setting (the sandbox
# above all) must be the plain unit's.
TEMPLATE_OWN = ("Environment", "EnvironmentFile", "ExecStart", "ReadWritePaths")


def test_templates_have_the_settings_of_the_plain_units() -> None:
    plain = unit_settings(REPO / "garminsync.service", "Service")
    template = unit_settings(REPO / "garminsync@.service", "Service")

    def shared(settings: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k: v for k, v in settings.items() if k not in TEMPLATE_OWN}

    assert shared(template) == shared(plain)
    assert set(TEMPLATE_OWN) <= set(template)
    # The profile's own DEST, session and settings file: the paths its sandbox allows.
    assert template["ExecStart"] == [f"{plain['ExecStart'][0]} --profile %i"]
    assert template["EnvironmentFile"] == ["-%h/.config/garminsync/%i.env"]
    environment = [word for value in template["Environment"] for word in shlex.split(value)]
    assert "GARMINSYNC_DEST=%h/fit/%i" in environment
    assert "GARMINTOKENS=%h/.local/state/garminsync/%i" in environment
    writable = " ".join(template["ReadWritePaths"]).split()
    assert sorted(writable) == ["-%h/.local/state/garminsync/%i", "-%h/fit/%i"]
    # The timers: the same schedule.
    for section in ("Timer", "Install"):
        timer = unit_settings(REPO / "garminsync.timer", section)
        assert unit_settings(REPO / "garminsync@.timer", section) == timer, section


def test_install_layout(install: Install) -> None:
    assert (install.app / "garminsync.py").read_bytes() == (REPO / "garminsync.py").read_bytes()
    for name in UNIT_FILES:
        assert (install.units / name).read_bytes() == (REPO / name).read_bytes()
    env = install.conf / "env"
    assert env.read_bytes() == (REPO / "garminsync.env").read_bytes()
    assert env.stat().st_mode & 0o777 == 0o600
    assert install.state.stat().st_mode & 0o777 == 0o700
    assert not (install.units / "garminsync.service.d").exists()
    # The dependency, as the script's PEP 723 header pins it.
    header = re.search(
        r'^# dependencies = \[\n#\s+"([^"]+)"', (REPO / "garminsync.py").read_text(), re.M
    )
    assert header, "no PEP 723 dependency in garminsync.py"
    wanted = Requirement(header.group(1))
    venv_python = install.app / "venv/bin/python"
    version = subprocess.run(
        [
            str(venv_python),
            "-c",
            f"import importlib.metadata as m; print(m.version({wanted.name!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert wanted.specifier.contains(version), version
    for step in (
        "--login",
        "systemctl --user enable --now garminsync.timer",
        "loginctl enable-linger $USER",
        "journalctl --user -t garminsync",
    ):
        assert step in install.output


@needs_analyze
def test_reinstall_upgrades_in_place_keeps_settings_and_sets_dest(
    install: Install, runtime_dir: Path
) -> None:
    home = copy_of(install)
    env = home.conf / "env"
    env.write_text(env.read_text() + "GARMINSYNC_DELAY=5\n")
    (home.app / "garminsync.py").write_text("# an older version\n")
    venv_cfg = (home.app / "venv/pyvenv.cfg").stat().st_mtime_ns
    nas = home.home / "nas/fit"
    done = make("install", home.home, f"DEST={nas}")
    assert done.returncode == 0, done.stderr
    assert env.read_text().endswith("GARMINSYNC_DELAY=5\n")
    assert env.stat().st_mode & 0o777 == 0o600
    assert (home.app / "garminsync.py").read_bytes() == (REPO / "garminsync.py").read_bytes()
    assert (home.app / "venv/pyvenv.cfg").stat().st_mtime_ns == venv_cfg  # venv reused
    assert nas.is_dir()
    dropin = unit_settings(home.units / "garminsync.service.d/dest.conf")
    assert dropin == {"Environment": [f"GARMINSYNC_DEST={nas}"], "ReadWritePaths": [str(nas)]}
    done = verify(home, runtime_dir)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # Installing again without DEST keeps the DEST chosen before.
    assert make("install", home.home).returncode == 0
    assert (home.units / "garminsync.service.d/dest.conf").exists()


def enable_by_hand(home: Install, timer: str, unit_file: str) -> tuple[Path, Path]:
    """What `systemctl --user enable` and a first run leave: the wants link, the stamp."""
    wants = home.units / "timers.target.wants" / timer
    wants.parent.mkdir(exist_ok=True)
    wants.symlink_to(home.units / unit_file)
    stamp = home.home / ".local/share/systemd/timers" / f"stamp-{timer}"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return wants, stamp


def test_uninstall_removes_the_install_and_keeps_the_data(install: Install) -> None:
    home = copy_of(install)
    assert make("install", home.home, f"DEST={home.home / 'nas'}").returncode == 0
    fit = home.home / "fit/activity_1_2024-01-01_10-00-00.fit"
    fit.parent.mkdir()
    fit.write_bytes(b"FIT")
    session = home.state / "garmin_tokens.json"
    session.write_text("{}")
    wants, stamp = enable_by_hand(home, "garminsync.timer", "garminsync.timer")
    done = make("uninstall", home.home)
    assert done.returncode == 0, done.stderr
    for gone in (home.app, home.units / "garminsync.service", home.units / "garminsync.timer"):
        assert not gone.exists(), gone
    assert not (home.units / "garminsync.service.d").exists()
    assert not wants.is_symlink() and not stamp.exists()
    assert not home.conf.exists(), "an untouched env file is removed with its folder"
    assert fit.read_bytes() == b"FIT" and session.exists() and (home.home / "nas").is_dir()
    assert make("uninstall", home.home).returncode == 0  # twice is fine


@needs_analyze
def test_make_install_profile_with_dest(install: Install, runtime_dir: Path) -> None:
    home = copy_of(install)
    nas = home.home / "nas/x"
    done = make("install", home.home, "PROFILE=x", f"DEST={nas}")
    assert done.returncode == 0, done.stdout + done.stderr
    dropin = unit_settings(home.units / "garminsync@x.service.d/dest.conf")
    assert dropin == {"Environment": [f"GARMINSYNC_DEST={nas}"], "ReadWritePaths": [str(nas)]}
    assert not (home.units / "garminsync.service.d").exists(), "the plain unit's DEST changed"
    assert nas.is_dir()
    settings = home.conf / "x.env"  # the profile's hand runs read its DEST there
    template = (REPO / "garminsync.env").read_text()
    assert settings.read_text() == f"{template}GARMINSYNC_DEST={nas}\n"
    shown = subprocess.run(
        [
            str(home.home / ".local/bin/garminsync"),
            "--profile",
            "x",
            "--status",
            "--offline",
            "--json",
        ],
        env={"HOME": str(home.home), "PATH": SYSTEM_PATH},
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(shown.stdout)["dest"] == str(nas)  # a hand run sees the timer's DEST
    assert settings.stat().st_mode & 0o777 == 0o600
    assert (home.state / "x").stat().st_mode & 0o777 == 0o700
    assert "systemctl --user enable --now garminsync@x.timer" in done.stdout
    # The instance with its drop-in, as systemd reads it.
    instance = [str(home.units / n) for n in ("garminsync@x.service", "garminsync@x.timer")]
    checked = analyze(home.home, runtime_dir, "verify", "--user", "--man=no", *instance)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_uninstall_removes_the_templates_and_the_profile_drop_ins(install: Install) -> None:
    home = copy_of(install)
    for name in ("x", "y"):
        done = make("install", home.home, f"PROFILE={name}", f"DEST={home.home / 'nas' / name}")
        assert done.returncode == 0, done.stdout + done.stderr
    own = home.units / "garminsync@y.service.d/own.conf"  # the user's: kept
    own.write_text("[Service]\nNice=5\n")
    edited = home.conf / "y.env"
    edited.write_text(edited.read_text() + "GARMINSYNC_DELAY=5\n")
    session = home.state / "x/garmin_tokens.json"
    session.write_text("{}")
    wants, stamp = enable_by_hand(home, "garminsync@x.timer", "garminsync@.timer")
    done = make("uninstall", home.home)
    assert done.returncode == 0, done.stderr
    for gone in ("garminsync@.service", "garminsync@.timer", "garminsync@x.service.d"):
        assert not (home.units / gone).exists(), gone
    assert not (home.units / "garminsync@y.service.d/dest.conf").exists()
    assert own.exists(), "a drop-in of the user's own was removed"
    assert not wants.is_symlink() and not stamp.exists()
    assert not (home.conf / "x.env").exists(), "an untouched profile env file is removed"
    assert edited.read_text().endswith("GARMINSYNC_DELAY=5\n")
    assert session.exists() and (home.home / "nas/x").is_dir()


def test_uninstall_keeps_an_edited_env_file(install: Install) -> None:
    home = copy_of(install)
    env = home.conf / "env"
    env.write_text(env.read_text() + "GARMIN_EMAIL=me@example.com\n")
    assert make("uninstall", home.home).returncode == 0
    assert env.read_text().endswith("GARMIN_EMAIL=me@example.com\n")


@pytest.mark.parametrize("same_home", [True, False], ids=["own manager", "other manager"])
def test_only_the_manager_of_this_home_is_reloaded(install: Install, same_home: bool) -> None:
    home = copy_of(install)
    stub = home.home / "stub-bin"
    stub.mkdir()
    calls = home.home / "systemctl-calls"
    manager_home = home.home if same_home else Path("/home/someone-else")
    (stub / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>{calls}\n'
        f'[ "$2" = show-environment ] && echo HOME={manager_home}\n'
        "exit 0\n"
    )
    (stub / "systemctl").chmod(0o755)
    path = f"{stub}:{SYSTEM_PATH}"
    assert make("install", home.home, path=path).returncode == 0
    assert make("uninstall", home.home, path=path).returncode == 0
    called = calls.read_text().splitlines()
    acted = [c for c in called if "show-environment" not in c]
    if same_home:
        assert "--user daemon-reload" in acted
        assert any(c.startswith("--user stop garminsync.timer garminsync.service") for c in acted)
    else:
        assert acted == []


def test_every_page_the_units_name_is_installed(install: Install) -> None:
    units = [install.home / ".config/systemd/user" / name for name in UNIT_FILES]
    pages = {page for unit in units for page in unit_settings(unit)["Documentation"]}
    files = {page.removeprefix("file:%h/") for page in pages if page.startswith("file:")}
    assert len(files) >= 2  # the README and the recipes
    for name in files:
        assert (install.home / name).is_file(), f"{name} is named but not installed"


def test_the_installed_command_runs_the_installed_script_from_its_bytecode(
    install: Install, tmp_path: Path
) -> None:
    app = install.home / ".local/share/garminsync"
    (cached,) = (app / "__pycache__").glob("garminsync.cpython-*.pyc")  # compiled at install
    assert cached.stat().st_size > 10_000
    (tmp_path / "garminsync.py").write_text("print('the wrong garminsync')\n")  # in the cwd
    shown = subprocess.run(
        [str(install.home / ".local/bin/garminsync"), "--version"],
        env={"HOME": str(install.home), "PATH": SYSTEM_PATH, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (shown.returncode, shown.stdout.split()[0]) == (0, "garminsync"), shown.stderr


def test_the_installed_command_runs_with_the_timers_settings(install: Install) -> None:
    home = copy_of(install)
    nas = home.home / "nas/fit"
    assert make("install", home.home, f"DEST={nas}").returncode == 0
    command = home.home / ".local/bin/garminsync"
    env = {"HOME": str(home.home), "PATH": SYSTEM_PATH, "XDG_STATE_HOME": "/elsewhere"}

    def status() -> subprocess.CompletedProcess[str]:
        args = [str(command), "--status", "--offline", "--json"]
        return subprocess.run(args, env=env, capture_output=True, text=True, check=False)

    shown = json.loads(status().stdout)
    assert shown["dest"] == str(nas)  # the DEST of `make install DEST=...`, not ~/fit
    assert shown["token_store"] == str(home.state / "garmin_tokens.json")
    settings = home.conf / "env"
    settings.write_text(settings.read_text() + "GARMINSYNC_DEST=/mnt/other fit\n")
    assert json.loads(status().stdout)["dest"] == "/mnt/other fit"  # the env file wins
    hint = subprocess.run(
        [str(command), "--missing", "--dest", str(home.home / "fit")],
        env={**env, "HTTPS_PROXY": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert hint.returncode == 3
    assert f"run `{command} --login` once" in hint.stderr  # the command the user has
