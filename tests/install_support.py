"""`make install` into a throw-away HOME, shared by test_units.py and test_systemd_live.py.

One real install (a venv with garminconnect from the package index, about 10-20 s) is made
per pytest process and cached; tests that change an install work on a copy of it. The HOME
is world-readable so `systemd-analyze` can read it as an unprivileged uid.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT_FILES = ("garminsync.service", "garminsync.timer", "garminsync@.service", "garminsync@.timer")
# What a fresh Debian or Ubuntu has on PATH: python3 is the system's, not a pyenv shim.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables that would let `make install` reach the developer's own user manager, or
# change what make does (a parent `make test` exports MAKEFLAGS).
_DROPPED = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")


@dataclasses.dataclass
class Install:
    home: Path
    output: str  # what `make install` printed

    @property
    def app(self) -> Path:
        return self.home / ".local/share/garminsync"

    @property
    def units(self) -> Path:
        return self.home / ".config/systemd/user"

    @property
    def conf(self) -> Path:
        return self.home / ".config/garminsync"

    @property
    def state(self) -> Path:
        return self.home / ".local/state/garminsync"


def make_env(home: Path, path: str = SYSTEM_PATH) -> dict[str, str]:
    """The environment for `make install`/`make uninstall` into `home` (PIP_* settings kept)."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED and k != "DEST"}
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # the runner's cache
    env.update(HOME=str(home), PATH=path, LC_ALL="C.UTF-8")
    return env


def make(target: str, home: Path, *args: str, path: str = SYSTEM_PATH, timeout: float = 600):
    """Run `make TARGET` from the repository with HOME=home; returns the CompletedProcess."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), target, *args],
        env=make_env(home, path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=0o022,  # the checks read the install as another user; a runner's 077 would hide it
    )


def new_home(prefix: str = "garminsync-home-") -> Path:
    """An empty world-readable HOME in the temp dir, removed when the test process exits."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


_CACHE: dict[str, Install] = {}


def installed() -> Install:
    """The one real `make install` of this test process (made on first use)."""
    if "install" not in _CACHE:
        home = new_home()
        done = make("install", home)
        assert done.returncode == 0, f"make install failed:\n{done.stdout}\n{done.stderr}"
        _CACHE["install"] = Install(home, done.stdout)
    return _CACHE["install"]


def copy_of(install: Install) -> Install:
    """A copy of an install in a new HOME; its venv is a symlink to the original's (`make
    install` only checks it there, `make uninstall` removes the link)."""
    home = new_home("garminsync-copy-")
    venv = install.app / "venv"
    shutil.copytree(
        install.home,
        home,
        symlinks=True,
        dirs_exist_ok=True,
        ignore=lambda d, names: ["venv"] if Path(d) == install.app else [],
    )
    (home / venv.relative_to(install.home)).symlink_to(venv)
    return Install(home, install.output)
