"""Shared fixtures: a fake Garmin Connect behind a local HTTPS proxy, and a way to run the CLI.

Tests run `garminsync.py` as a subprocess whose environment points `HTTPS_PROXY` at the fake
and trusts only the fake's CA, so nothing reaches the real internet and nothing is patched.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fake_garmin import (
    CA_VARIABLES,
    PROXY_VARIABLES,
    REAL_TCX,
    FakeGarmin,
    add_many_activities,
    clean_environ,
    dropped,
    load_real_account,
    routing_env,
    synthetic_fit,
    tcx_document,
    zip_of,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "garminsync.py"
SHARED = REPO.parent / "shared" / "fixtures"
# Three real device files made into multisport legs (swim, bike, run order is all they play).
LEG_FILES = ("garmin-fenix-5-run.fit", "garmin-edge-820-bike.fit", "12129115726_ACTIVITY.fit")
# The real files' sizes (../shared/fixtures/*/README.md), for stand-ins of about that size.
REAL_SIZES = {
    "12129115726_ACTIVITY.fit": 5289,
    "20170518-191602-1740899583.fit": 56960,
    "garmin-fenix-5-run.fit": 5597,
    "garmin-edge-820-bike.fit": 4229,
    "2013-02-06-12-11-14.fit": 17925,
    "activity-small-fenix2-run.fit": 121839,
    "activity_196389836_2012-07-03_22-31-14.tcx": 88149,
    "activity_196389845_2012-07-06_14-52-10.tcx": 87107,
}


def pytest_report_header() -> str:
    if (SHARED / "fit").is_dir():
        return f"activity files: the real device files in {SHARED}"
    return f"activity files: made by the tests ({SHARED} is not there)"


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real device files of ../shared/fixtures when they are there (CI has them), else
    stand-ins the tests make: a valid synthetic FIT or TCX file under each real name."""
    if (SHARED / "fit").is_dir():
        return SHARED
    made = tmp_path_factory.mktemp("fixtures")
    (made / "fit").mkdir()
    (made / "tcx").mkdir()
    for number, (name, size) in enumerate(REAL_SIZES.items()):
        if name.endswith(".fit"):  # about the real file's size: some tests need a big one
            data = synthetic_fit(1000 + number, records=(size - 66) // 10)
            (made / "fit" / name).write_bytes(data)
    for name, _id, local, _offset in REAL_TCX:
        (made / "tcx" / name).write_text(tcx_document(local, points=REAL_SIZES[name] // 95))
    return made


@pytest.fixture(scope="session")
def real_fit_files(fixtures_dir: Path) -> list[bytes]:
    """Three FIT files recorded by Garmin devices (or their stand-ins), for multisport legs."""
    return [(fixtures_dir / "fit" / name).read_bytes() for name in LEG_FILES]


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA that issues the fake's certificate."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate as a PEM file, the only trust anchor a client needs."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def garmin(ca: trustme.CA) -> Iterator[FakeGarmin]:
    """A started fake Garmin Connect; fails the test at teardown if the fake itself broke."""
    fake = FakeGarmin(ca).start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.errors, f"fake_garmin internal errors: {fake.errors}"


@pytest.fixture
def real_account(garmin: FakeGarmin, fixtures_dir: Path) -> list[int]:
    """6 real FIT, 2 TCX, 1 GPX original and 1 manual activity; their ids, newest first."""
    return load_real_account(garmin, fixtures_dir)


@pytest.fixture
def many_activities(garmin: FakeGarmin) -> Callable[..., list[int]]:
    """Factory: `many_activities(n, **kw)` adds n synthetic FIT activities, ids newest first."""

    def add(n: int, **kwargs: Any) -> list[int]:
        return add_many_activities(garmin, n, **kwargs)

    return add


@pytest.fixture(name="zip_of")
def zip_of_fixture() -> Callable[[str, bytes], bytes]:
    """`zip_of(member_name, data)`: a one-member deflated zip (also importable from fake_garmin)."""
    return zip_of


@pytest.fixture
def bare_env(garmin: FakeGarmin, ca_bundle: Path, tmp_path: Path) -> dict[str, str]:
    """Subprocess environment routed through the fake, with no saved session."""
    env = clean_environ()
    state = tmp_path / "state"
    env.update(
        routing_env(garmin.proxy_url, ca_bundle),
        HOME=str(tmp_path),
        XDG_STATE_HOME=str(state),
        GARMINTOKENS=str(state / "garminsync"),
        GARMINSYNC_DELAY="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@pytest.fixture
def session_saved(garmin: FakeGarmin, bare_env: dict[str, str]) -> Path:
    """Valid tokens saved in $GARMINTOKENS/garmin_tokens.json; returns that file."""
    return garmin.seed_tokens(bare_env["GARMINTOKENS"])


@pytest.fixture
def env(bare_env: dict[str, str], session_saved: Path) -> dict[str, str]:
    """`bare_env` plus a saved session: the usual environment for a run."""
    return bare_env


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """Where downloads go (tmp/fit); not created, so the script must create it."""
    return tmp_path / "fit"


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch, bare_env: dict[str, str]) -> dict[str, str]:
    """Put `bare_env`'s proxy and CA variables into this process, for in-process clients."""
    for key in list(os.environ):
        if dropped(key):
            monkeypatch.delenv(key)
    for key in PROXY_VARIABLES + CA_VARIABLES:
        monkeypatch.setenv(key, bare_env[key])
    monkeypatch.setenv("NETRC", str(Path(bare_env["HOME"]) / ".netrc"))  # not the runner's
    return bare_env


@pytest.fixture
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """`run(*args, env=None, input=None, timeout=60)`: run garminsync.py, capture text output.

    Without `env` the `env` fixture (with a saved session) is used.
    """

    def run_script(
        *args: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        if env is None:
            env = request.getfixturevalue("env")
        return subprocess.run(
            [sys.executable, str(SCRIPT), *map(str, args)],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            check=False,
        )

    return run_script


@pytest.fixture
def seed() -> int:
    """The seed of a randomised test: $FAULT_SEED, else a fresh one; printed to reproduce."""
    value = int(os.environ.get("FAULT_SEED") or int.from_bytes(os.urandom(4), "big"))
    print(f"seed {value}: reproduce with FAULT_SEED={value}")
    return value


@pytest.fixture
def strava(garmin: FakeGarmin, env: dict[str, str]):
    """A fake Strava behind the same proxy, with the app's id and secret in `env` (which is
    `bare_env` with a Garmin session) and valid Strava tokens saved beside that session."""
    bare_env = env
    from fake_strava import FakeStrava

    fake = FakeStrava()
    garmin.strava = fake
    bare_env.update(STRAVA_CLIENT_ID=fake.client_id, STRAVA_CLIENT_SECRET=fake.client_secret)
    store = Path(bare_env["GARMINTOKENS"])
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    (store / "strava_tokens.json").write_text(fake.token_file())
    (store / "strava_tokens.json").chmod(0o600)
    return fake


@pytest.fixture
def port_9321() -> Iterator[None]:
    """Port 9321 (--strava-login's redirect) for this test alone: the two ends of the
    supported range run side by side (make test-matrix), and only one may listen there."""
    path = Path(tempfile.gettempdir()) / "garminsync-tests-port-9321.lock"
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
