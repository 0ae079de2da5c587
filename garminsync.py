#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "garminconnect>=0.3.2,<0.4",
# ]
# ///
"""garminsync: keep a local copy of the original file of every Garmin Connect activity,
and optionally upload each new one to Strava.

Usage:
    python garminsync.py [ACTION] [OPTIONS]

Actions (at most one; default --missing):
    --missing                        download every activity not yet in DEST
    --list {all,missing,downloaded}  print activities (id, start, type, name, status)
    --status                         counts by status, the last run, the session
    --login                          log in interactively (MFA too), then save the session
    --strava-only / --strava-login   upload pending files to Strava / authorise that once

Options:
    --dest DIR        where the files go; default $GARMINSYNC_DEST, else ~/fit
    --offline         with --list/--status: read the manifest only, no network
    --since DATE / --until DATE      only activities whose local start date is in range
    --delay SECONDS   fixed pause between two Garmin requests; default $GARMINSYNC_DELAY or 2
    --limit N         download at most N activities this run
    --dry-run         show what --missing (or --strava-only) would do; write nothing
    --json            machine-readable output for --list and --status
    --strava, --strava-since DATE    with --missing: then upload new files to Strava
    -v / -q           more / less output;  --version, --help

Files:
    DEST/activity_<id>_<YYYY-MM-DD_HH-MM-SS>.<fit|gpx|tcx>   the originals (local start time)
    DEST/garminsync.json     the manifest: what is known of every activity, and the last run
    DEST/.garminsync.lock    held while a run works on DEST (one run per DEST)
    $GARMINTOKENS/garmin_tokens.json   the saved session (default ~/.local/state/garminsync)
    strava_tokens.json       beside it, the Strava authorisation (--strava-login)

Credentials (only needed to log in): GARMIN_EMAIL/GARMIN_PASSWORD, else ~/.netrc
(machine garmin.com, connect.garmin.com or sso.garmin.com), else systemd credentials
$CREDENTIALS_DIRECTORY/garmin_email and garmin_password.

Exit codes: 0 success; 1 some activities failed (the rest saved) or a local write failed;
2 usage or bad input; 3 authentication needed or refused; 75 temporary (rate limited,
network down, another run holds DEST); 130/143 interrupted by SIGINT/SIGTERM.

See README.md for how a run decides what is new, and what happens on failures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import io
import json
import logging
import netrc
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__version__ = "0.1.0"

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_AUTH, EXIT_TEMPFAIL = 0, 1, 2, 3, 75
EXIT_SIGNAL_BASE = 128

# ---------------------------------------------------------------------------------------
# Output: every line the script prints goes through here, so priorities, the journal
# prefix, the progress line and the scrubbing of secrets are handled in one place.

PRIORITIES = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
SECRETS: set[str] = set()
SECRET_PATTERNS = [
    re.compile(r"(Bearer\s+)[^\s'\"]+", re.I),
    re.compile(r"((?:access|refresh|di|di_refresh)_token['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.I),
    re.compile(r"((?:password|JWT_WEB)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.I),
]


@dataclasses.dataclass
class OutputState:
    threshold: int = PRIORITIES["info"]
    journal: bool = False
    progress: bool = False
    progress_shown: bool = False


OUT = OutputState()


def add_secret(value: Any) -> None:
    """Remember a value that must never appear in any output (non-strings are ignored)."""
    if isinstance(value, str) and len(value) >= 4:
        SECRETS.add(value)


def add_token_secrets(text: str) -> None:
    """Remember every token-like string of a session's JSON text as a secret."""
    for value in re.findall(r'"([A-Za-z0-9._\-]{20,})"', text):
        add_secret(value)


def redact(text: str) -> str:
    """Replace every known secret, and anything shaped like a token, with ***."""
    for secret in sorted(SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def emit(level: str, message: str) -> None:
    """Print one log line to stderr at a priority (error, warning, notice, info, debug)."""
    priority = PRIORITIES[level]
    if priority > OUT.threshold:
        return
    clear_progress()
    for line in redact(message).splitlines() or [""]:
        if OUT.journal:
            line = f"<{priority}>{line}"
        elif priority <= PRIORITIES["warning"]:
            line = f"garminsync: {level}: {line}"
        print(line, file=sys.stderr, flush=True)


def progress(text: str) -> None:
    """Redraw the one-line progress indicator (terminal only); otherwise log it at debug."""
    if OUT.progress:
        sys.stderr.write("\r" + redact(text)[:200] + "\x1b[K")
        sys.stderr.flush()
        OUT.progress_shown = True
    else:
        emit("debug", text)


def clear_progress() -> None:
    """Erase the progress line before a normal line is printed."""
    if OUT.progress_shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        OUT.progress_shown = False


def describe(entry: dict) -> str:
    """'1234 2024-05-01 running' for messages."""
    return f"{entry['id']} {entry['start_local'][:10]} {entry['type']}"


def printable(text: str) -> str:
    """An activity name on one line: control characters become spaces."""
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in valid_text(text))


def valid_text(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate (half an emoji, say) becomes '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


class LogBridge(logging.Handler):
    """Send library log records (garminconnect, urllib3) through emit(), scrubbed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a library's bad format string must not crash a sync
            text = str(record.msg)
        emit("debug", f"[{record.name}] {text}")


def setup_output(verbosity: int) -> None:
    """Pick the threshold and the line format for this process's stderr."""
    OUT.threshold = PRIORITIES[{-1: "warning", 0: "info"}.get(verbosity, "debug")]
    OUT.journal = bool(os.environ.get("JOURNAL_STREAM"))
    OUT.progress = sys.stderr.isatty() and not OUT.journal and verbosity >= 0
    root = logging.getLogger()
    root.handlers[:] = [LogBridge()]
    # garminconnect logs a traceback on every HTTP error: only with -v.
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.CRITICAL + 1)


class Fatal(Exception):
    """Stops the run with a one-line message and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def fatal_level(err: Fatal) -> str:
    """Temporary trouble (exit 75) is a warning: the next run goes on by itself."""
    return "warning" if err.code == EXIT_TEMPFAIL else "error"


class Interrupted(BaseException):
    """Raised by the SIGINT/SIGTERM handler so every wait ends at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def on_stop_signal(signum: int, _frame: Any) -> None:
    """First SIGINT/SIGTERM: ignore further ones (so the manifest flush finishes), stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


# ---------------------------------------------------------------------------------------
# Settings and credentials: the command line and environment turned into plain values,
# and the three places a password may come from.

DEFAULT_DELAY = 2.0
DEFAULT_TIMEOUT = 120.0
NETRC_MACHINES = ("garmin.com", "connect.garmin.com", "sso.garmin.com")


def this_command() -> str:
    """'python garminsync.py', or the interpreter and path this copy was started with."""
    if sys.argv[0].endswith(".py") and sys.argv[0] != "garminsync.py":
        return f"{sys.executable} {Path(sys.argv[0]).resolve()}"
    return "python garminsync.py"


def run_hint(flag: str) -> str:
    """'run `python garminsync.py --login` once', naming the command as it was started."""
    return f"run `{this_command()} {flag}` once"


LOGIN_HINT = run_hint("--login")


@dataclasses.dataclass
class Settings:
    action: str = "missing"  # missing | list | status | login | strava-only | strava-login
    list_filter: str = "all"
    dest: Path = Path("~/fit")
    offline: bool = False
    since: dt.date | None = None
    until: dt.date | None = None
    delay: float = DEFAULT_DELAY
    timeout: float = DEFAULT_TIMEOUT
    limit: int | None = None
    dry_run: bool = False
    json: bool = False
    verbosity: int = 0
    strava: bool = False
    strava_since: dt.date | None = None


def token_file() -> Path:
    """The saved session (garminconnect 0.3's format): $GARMINTOKENS, a folder or a .json
    file; else garmin_tokens.json in the XDG state dir."""
    if os.environ.get("GARMINTOKENS"):
        path = Path(os.environ["GARMINTOKENS"]).expanduser()
        return path if path.suffix == ".json" else path / "garmin_tokens.json"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "garminsync" / "garmin_tokens.json"


def netrc_credentials(machines: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Login and password of the first of these machines in ~/.netrc (warns if loose)."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None, None
    if path.stat().st_mode & 0o077:
        emit("warning", f"{path} is readable by group or others; run `chmod 600 {path}`")
    try:
        parsed = netrc.netrc(str(path))  # an explicit path skips netrc's own permission error
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as err:
        emit("warning", f"cannot read {path}: {err}; ignoring it")
        return None, None
    for machine in machines:
        entry = parsed.authenticators(machine)
        if entry:
            return entry[0] or None, entry[2] or None
    return None, None


def systemd_credential(name: str) -> str | None:
    """A secret passed by systemd's LoadCredential=, or None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def find_credentials(
    names: tuple[str, str], machines: tuple[str, ...]
) -> tuple[str | None, str | None]:
    """A user and secret from the environment (the names in upper case), the first of these
    machines in ~/.netrc, or systemd credentials (the names as given), in that order."""
    user, secret = (os.environ.get(name.upper()) or None for name in names)
    if not (user and secret):
        netrc_user, netrc_secret = netrc_credentials(machines)
        user, secret = user or netrc_user, secret or netrc_secret
    user = user or systemd_credential(names[0])
    secret = secret or systemd_credential(names[1])
    add_secret(secret)
    return user, secret


# ---------------------------------------------------------------------------------------
# Files: every write is atomic (temp file in the same directory, fsync, rename), so a
# crash leaves either the old file or the new one, never half of one.

TEMP_PREFIX = ".garminsync-tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename in a directory durable (where the file system can: some network and
    FUSE file systems refuse to fsync a directory, and the rename is done all the same)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A temp file beside path that becomes path (fsynced) only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write bytes to path atomically with the given permissions."""
    with atomic_file(path, mode) as out:
        out.write(data)


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temp files a killed run left behind (only ours: the lock says no run is live)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


# ---------------------------------------------------------------------------------------
# Garmin session: the saved tokens, the one narrow seam to the client library (garminconnect,
# or a saved garth session), and the pacing, retries and timeouts around every request.


def read_saved_tokens() -> tuple[str | None, str]:
    """The saved session's JSON text, or None and why there is no usable one."""
    path = token_file()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, "no saved Garmin session"
    if st.st_mode & 0o077:
        emit("warning", f"{path} was readable by group or others; tightened it to 0600")
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as err:
        return None, f"the saved session {path} is unreadable ({err.__class__.__name__})"
    if not isinstance(data, dict) or not isinstance(data.get("di_token"), str):
        return None, f"the saved session {path} holds no token"
    add_secret(data["di_token"])
    add_secret(data.get("di_refresh_token"))
    return text, ""


def save_tokens(text: str) -> None:
    """Store the Garmin session atomically."""
    save_in_token_store(token_file(), text)


def save_in_token_store(path: Path, text: str) -> None:
    """Write a secret file atomically: directory 0700, file 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    atomic_write(path, text.encode("utf-8"), mode=0o600)


def session_saved() -> bool:
    """Whether a session file exists and parses (for --status; never contacts Garmin)."""
    try:
        return isinstance(json.loads(token_file().read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


@dataclasses.dataclass
class Seam:
    """The client library behind one interface: connectapi(path, ...) and download(path, ...).

    A failed request's HTTP answer comes from a requests response hook (garminconnect) or
    from the exception (garth raises GarthHTTPError with the answer in .error.response)."""

    client: Any
    extra_kwargs: dict  # passed with every request (garminconnect: the timeout)
    dump_tokens: Callable[[], str | None]
    persist: Callable[[str], None]
    takes_hooks: bool = False  # whether requests' response hooks reach the HTTP layer


def garth_seam(home: str, timeout: float) -> Seam | None:
    """A saved garth (or garth-ng) session from $GARTH_HOME, when garth is importable."""
    try:
        import garth  # noqa: PLC0415 (optional, and lazy so offline runs stay light)
    except ImportError:
        emit("debug", "GARTH_HOME is set but garth is not installed; using garminconnect")
        return None
    try:
        garth.resume(home)
    except Exception as err:
        raise Fatal(EXIT_AUTH, f"cannot resume the garth session in {home} ({err}); {LOGIN_HINT}")
    client = garth.client
    with contextlib.suppress(Exception):  # garminsync paces and retries; garth must not
        client.configure(timeout=int(timeout), retries=0)

    def dump() -> str:
        """The session as {file name: content}, the way garth saves it in $GARTH_HOME
        (garth keeps an OAuth1 and an OAuth2 token, garth-ng only the OAuth2 one)."""
        tokens = {name: getattr(client, name, None) for name in ("oauth1_token", "oauth2_token")}
        return json.dumps(
            {f"{name}.json": dataclasses.asdict(t) for name, t in tokens.items() if t},
            sort_keys=True,
        )

    def persist(text: str) -> None:
        for name, value in json.loads(text).items():
            atomic_write(Path(home).expanduser() / name, json.dumps(value).encode(), 0o600)

    add_token_secrets(dump())
    return Seam(client, {}, dump, persist)


def keep_one_connection(client: Any) -> None:
    """One kept-alive HTTPS connection for the whole run, sparing Garmin a TLS handshake per
    activity. garminconnect 0.3.3+ keeps one itself; 0.3.2 opens a new one per request
    through _fresh_api_session, pinned here only while that private method exists."""
    fresh = getattr(client, "_fresh_api_session", None)
    if callable(fresh) and not hasattr(client, "_api_session"):
        session = fresh()
        client._fresh_api_session = lambda: session


def garminconnect_seam(tokens: str, timeout: float) -> Seam:
    """garminconnect 0.3's own client, loaded from the saved token text (no login call)."""
    from garminconnect.client import Client  # noqa: PLC0415 (lazy: offline runs skip it)

    client = Client()
    try:
        client.loads(tokens)
    except Exception:
        raise Fatal(EXIT_AUTH, f"the saved session in {token_file()} is unusable; {LOGIN_HINT}")
    keep_one_connection(client)
    extra = {"timeout": (10, min(30.0, timeout))}
    return Seam(client, extra, client.dumps, save_tokens, takes_hooks=True)


def open_seam(settings: Settings) -> Seam:
    """The client for this run: a saved garth session, else the saved garminconnect session,
    else a non-interactive login with stored credentials; exit 3 when none of that works."""
    if os.environ.get("GARTH_HOME"):
        seam = garth_seam(os.environ["GARTH_HOME"], settings.timeout)
        if seam:
            return seam
    tokens, problem = read_saved_tokens()
    if tokens is None:
        tokens = login(interactive=False, problem=problem)
    return garminconnect_seam(tokens, settings.timeout)


def ask(prompt: str, secret: bool = False) -> str:
    """One answer typed at the terminal; the end of input stops the run with exit 3."""
    import getpass  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    try:
        with warnings.catch_warnings():  # getpass warns at length when stdin is no terminal
            warnings.simplefilter("ignore")
            answer = getpass.getpass(prompt) if secret else input(prompt)
    except (EOFError, RuntimeError):
        print(file=sys.stderr)
        raise Fatal(EXIT_AUTH, "the input ended before the answer; run --login at a terminal")
    return answer.strip()


def login(interactive: bool, problem: str = "") -> str:
    """Log in with garminconnect, save the session and return its token text."""
    email_addr, password = find_credentials(("garmin_email", "garmin_password"), NETRC_MACHINES)
    if interactive:
        email_addr = email_addr or ask("Garmin Connect email: ")
        password = password or ask("Garmin Connect password: ", secret=True)
        add_secret(password)
    if not (email_addr and password):
        if interactive:
            raise Fatal(EXIT_AUTH, "no email or password given; run --login again and type them")
        raise Fatal(EXIT_AUTH, f"{problem} and no credentials; {LOGIN_HINT}")
    from garminconnect.client import Client  # noqa: PLC0415
    from garminconnect.exceptions import (  # noqa: PLC0415
        GarminConnectAuthenticationError,
        GarminConnectTooManyRequestsError,
    )

    # Without a prompt, garminconnect raises an authentication error that names MFA.
    ask_mfa = (lambda: ask("MFA code: ")) if interactive else None
    client = Client()
    emit("info", f"logging in to Garmin Connect as {email_addr}")
    try:
        client.login(email_addr, password, prompt_mfa=ask_mfa)
    except GarminConnectAuthenticationError as err:
        if "MFA" in str(err):
            raise Fatal(EXIT_AUTH, f"Garmin asks for a one-time code (MFA); {LOGIN_HINT}")
        raise Fatal(EXIT_AUTH, f"Garmin refused the login ({err}); check the email and password")
    except GarminConnectTooManyRequestsError:
        raise Fatal(EXIT_TEMPFAIL, "Garmin is rate limiting logins; try again in an hour")
    except Exception as err:
        why = describe_failure(err, None)  # the library's reason can run to 500 characters
        raise Fatal(EXIT_TEMPFAIL, f"login failed, Garmin Connect unreachable? ({why}); try later")
    tokens = client.dumps()
    for value in json.loads(tokens).values():
        add_secret(value)
    save_tokens(tokens)
    emit("info", f"session saved in {token_file()}")
    return tokens


class RequestFailed(Exception):
    """A Garmin request that failed after its retries (the message says why)."""


class NotFound(RequestFailed):
    """HTTP 404."""


class Deadline(BaseException):
    """A request took longer than its total time budget (a BaseException, so no library's
    `except Exception` swallows it, say in the middle of a token refresh)."""


RETRIES = 3
MAX_RETRY_AFTER_TOTAL = 300.0  # seconds a run will wait on 429s before stopping with exit 75


def on_deadline(_signum: int, _frame: Any) -> None:
    raise Deadline()


@contextlib.contextmanager
def time_budget(seconds: float):
    """Bound a whole request (a trickling body too), not only each socket read."""
    previous = signal.signal(signal.SIGALRM, on_deadline)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta or HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # noqa: PLC0415 (only a 429 needs it; it costs every start 12 ms)

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def describe_failure(err: BaseException, status: int | None) -> str:
    """A short reason for a failed request, without the library's traceback."""
    if isinstance(err, Deadline):
        return "timed out"
    if status is not None and status >= 400:
        return f"HTTP {status}"
    if isinstance(err, ValueError) and "JSON" in err.__class__.__name__ + str(err):
        return "the answer is not JSON"
    text = str(err).split("\n")[0]
    name = err.__class__.__name__
    return f"{name}: {text[:160]}" if text else name


def http_answer_of(err: Exception) -> Any:
    """The HTTP answer a garth error carries (GarthHTTPError.error.response), or None."""
    return getattr(getattr(err, "error", None), "response", None)


class GarminAPI:
    """Paced, retried, time-bounded GET requests to Garmin Connect through the seam."""

    def __init__(self, seam: Seam, settings: Settings) -> None:
        self.seam = seam
        self.delay = settings.delay
        self.timeout = settings.timeout
        self.last_request = 0.0
        self.waited_on_429 = 0.0
        self.requests = 0
        self.reached = False  # whether Garmin answered anything at all this run
        self.saved_tokens = seam.dump_tokens()

    def get_json(self, path: str, params: dict | None = None) -> Any:
        return self._call(self.seam.client.connectapi, path, params=params)

    def get_bytes(self, path: str) -> bytes:
        return self._call(self.seam.client.download, path)

    def _call(self, fn: Callable, path: str, **kwargs: Any) -> Any:
        """One request: paced, time-bounded, 429s waited out, other failures tried 3 times."""
        attempt = 0
        while True:
            answers: list = []
            extra = dict(self.seam.extra_kwargs)
            if self.seam.takes_hooks:  # keeps every HTTP answer, the 401 before a refresh too
                extra["hooks"] = {"response": lambda r, *_, seen=answers, **__: seen.append(r)}
            time.sleep(max(0.0, self.last_request + self.delay - time.monotonic()))
            self.requests += 1
            emit("debug", f"GET {path} {kwargs.get('params') or ''}".rstrip())
            try:
                with time_budget(self.timeout):
                    result = fn(path, **extra, **kwargs)
                self.reached = True
                return result
            except (Exception, Deadline) as err:
                answer = answers[-1] if answers else http_answer_of(err)
                status = getattr(answer, "status_code", None)
                self.reached = self.reached or status is not None
                if status == 429:
                    self._wait_for_rate_limit(answer)
                    continue
                if status in (401, 403):
                    raise Fatal(
                        EXIT_AUTH, f"Garmin refused the saved session (HTTP {status}); {LOGIN_HINT}"
                    )
                if status == 404:
                    raise NotFound("HTTP 404") from err
                attempt += 1
                reason = describe_failure(err, status)
                if attempt >= RETRIES or 400 <= (status or 0) < 500:  # other 4xx: no retry
                    raise RequestFailed(reason) from err
                backoff = max(self.delay, 0.5) * 2 ** (attempt - 1)
                emit("debug", f"{path}: {reason}; retry in {backoff:g}s")
                time.sleep(backoff)
            finally:
                self.last_request = time.monotonic()
                self._persist_refreshed_tokens()

    def _wait_for_rate_limit(self, answer: Any) -> None:
        """Honour Retry-After within the run's budget; beyond it, stop with exit 75."""
        wait = retry_after_seconds(answer.headers.get("Retry-After"))
        wait = 60.0 if wait is None else wait
        if self.waited_on_429 + wait > MAX_RETRY_AFTER_TOTAL:
            why = f"Garmin is rate limiting (HTTP 429, Retry-After {wait:.0f}s)"
            raise Fatal(EXIT_TEMPFAIL, f"{why}; everything so far is saved, the next run goes on")
        emit("warning", f"Garmin is rate limiting (HTTP 429); waiting {wait:.0f}s as asked")
        self.waited_on_429 += max(wait, 10.0)  # a Retry-After of 0, again and again, ends too
        time.sleep(wait)

    def _persist_refreshed_tokens(self) -> None:
        """When the library refreshed the tokens, save them at once (atomically, 0600)."""
        current = self.seam.dump_tokens()
        if current and current != self.saved_tokens:
            add_token_secrets(current)
            self.seam.persist(current)
            self.saved_tokens = current
            emit("debug", "tokens refreshed and saved")


# ---------------------------------------------------------------------------------------
# Listing: turning Garmin's activity list into plain records, and deciding what is new
# with as few requests as possible (one, when nothing changed).

LIST_PATH = "/activitylist-service/activities/search/activities"
COUNT_PATH = "/activitylist-service/activities/count"
DOWNLOAD_PATH = "/download-service/files/activity/{id}"
FIRST_PAGE = 100  # an incremental run's first page: new activities are almost always here
PAGE = 1000  # the most the list endpoint returns per request
FULL_LISTING_EVERY = dt.timedelta(days=7)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_ACTIVITY_ID = 10**20 - 1  # 20 digits, as FILE_PATTERN reads them (Garmin's have 11)


class ListingFailed(Exception):
    """Garmin's activity list could not be read (the message says why)."""


def parse_start(value: Any) -> dt.datetime | None:
    """Garmin's 'YYYY-MM-DD HH:MM:SS' (or ISO 8601) start time, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("T", " ")[:19])
    except ValueError:
        return None
    return parsed.replace(tzinfo=None, microsecond=0)


def activity_record(raw: Any) -> dict | None:
    """The manifest's view of one listed activity, or None when it lacks an id or start."""
    if not isinstance(raw, dict):
        return None
    activity_id = raw.get("activityId")
    if isinstance(activity_id, str) and re.fullmatch(r"[0-9]+", activity_id.strip()):
        activity_id = int(activity_id.strip())
    if isinstance(activity_id, bool) or not isinstance(activity_id, int):
        return None
    if not 0 < activity_id <= MAX_ACTIVITY_ID:  # its file name could not be read back
        return None
    start = parse_start(raw.get("startTimeLocal")) or parse_start(raw.get("startTimeGMT"))
    if start is None and isinstance(raw.get("beginTimestamp"), (int, float)):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            start = dt.datetime.fromtimestamp(raw["beginTimestamp"] / 1000, dt.timezone.utc)
            start = start.replace(tzinfo=None)
    if start is None or start.year < 1970:
        return None
    gmt = parse_start(raw.get("startTimeGMT"))
    kind = raw.get("activityType")
    type_key = kind.get("typeKey") if isinstance(kind, dict) else None
    name = raw.get("activityName")
    return {
        "id": activity_id,
        "start_local": start.strftime(TIME_FORMAT),
        "start_gmt": gmt.strftime(TIME_FORMAT) if gmt else None,
        "type": valid_text(type_key) if isinstance(type_key, str) and type_key else "unknown",
        "name": valid_text(name) if isinstance(name, str) else "",
        "manual": raw.get("manualActivity") is True,
    }


def list_page(api: GarminAPI, start: int, limit: int, settings: Settings) -> tuple[list, int]:
    """One page of the newest-first list: the usable records, and how many items it held."""
    params: dict[str, Any] = {"start": start, "limit": limit}
    if settings.since:
        params["startDate"] = settings.since.isoformat()
    if settings.until:
        params["endDate"] = settings.until.isoformat()
    try:
        answer = api.get_json(LIST_PATH, params=params)
    except RequestFailed as err:
        raise ListingFailed(f"the activity list failed: {err}") from err
    if not isinstance(answer, list):
        raise ListingFailed(f"the activity list answered with {type(answer).__name__}, not a list")
    records = [record for record in map(activity_record, answer) if record is not None]
    if skipped := len(answer) - len(records):
        emit("warning", f"skipped {skipped} listed activities without a usable id or start time")
    return records, len(answer)


def fetch_count(api: GarminAPI) -> int:
    """How many activities the account has, per Garmin (one small request)."""
    try:
        answer = api.get_json(COUNT_PATH)
    except RequestFailed as err:
        raise ListingFailed(f"the activity count failed: {err}") from err
    total = answer.get("totalCount") if isinstance(answer, dict) else None
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ListingFailed("the activity count answer holds no totalCount")
    return total


@dataclasses.dataclass
class Walk:
    """What one walk down the list found."""

    new: int = 0  # activities not known to be on Garmin before
    seen: set[int] = dataclasses.field(default_factory=set)
    unusable: int = 0  # listed items without a usable id or start (Garmin counts them too)
    complete: bool = False  # whether the whole list was read


def walk_list(
    api: GarminAPI, store: ManifestStore, settings: Settings, want_new: int | None, total: int
) -> Walk:
    """Page through the newest-first list, merging each record into the manifest; stop
    early once `want_new` unknown activities were found (None: read to the end)."""
    walk, start = Walk(), 0
    limit = FIRST_PAGE if want_new else PAGE
    while True:
        records, held = list_page(api, start, limit, settings)
        before = len(walk.seen)
        walk.unusable += held - len(records)
        for record in records:
            walk.seen.add(record["id"])
            walk.new += store.merge_listed(record)
        counted = len(walk.seen) + walk.unusable
        if held < limit or (want_new is None and total and counted >= total):
            walk.complete = True
            return walk
        if want_new is not None and walk.new >= want_new:
            return walk
        if len(walk.seen) == before:
            emit("warning", "Garmin's list repeats itself; stopping the listing here")
            return walk
        start, limit = start + held, PAGE


def discover(api: GarminAPI, store: ManifestStore, settings: Settings) -> int:
    """Bring the manifest up to date with Garmin's list; return how many activities are new.

    The rule: Garmin's count equal to the number of known activities means nothing is new
    (one request). Otherwise read the newest-first list until as many unknown activities
    turned up as the count says, however deep they sit (late uploads). The whole list is
    read on the first run, when the count dropped (deletions) and once every 7 days."""
    if settings.since or settings.until:
        return walk_list(api, store, settings, None, 0).new  # a date range: read it whole
    total = fetch_count(api)
    present = store.present_ids()
    known = len(present) + store.data["unusable_listed"]  # Garmin counts the unusable too
    last_full = store.data.get("last_full_listing")
    full_due = (
        not present or not isinstance(last_full, str) or last_full < iso_now(-FULL_LISTING_EVERY)
    )
    if not full_due and total == known:
        emit("debug", f"Garmin counts {total} activities, all known: nothing new")
        return 0
    want_new = None if full_due or total < known else total - known
    walk = walk_list(api, store, settings, want_new, total)
    if walk.complete and len(walk.seen) + walk.unusable < total:
        emit("debug", f"read {len(walk.seen)} of {total} activities; the list moved, reading again")
        again = walk_list(api, store, settings, None, total)
        again.new, again.seen = walk.new + again.new, walk.seen | again.seen
        walk = again
    if walk.complete:
        store.mark_gone(present - walk.seen)
        store.data["last_full_listing"] = iso_now()
        store.data["unusable_listed"] = walk.unusable
    return walk.new


# ---------------------------------------------------------------------------------------
# Download: one activity's zip from Garmin to DEST/activity_<id>_<start>.<ext>, checked
# (member, size, CRC, content) before it is renamed into place.

ORIGINAL_EXTENSIONS = ("fit", "gpx", "tcx")
MANUAL = "manual entry: Garmin keeps no file"
MAX_ORIGINAL_BYTES = 64 * 1024 * 1024  # the largest original (after unzipping) we accept


class BadArchive(Exception):
    """The download is not a zip holding one plausible activity file."""


def activity_filename(record: dict, ext: str) -> str:
    """activity_<id>_<YYYY-MM-DD_HH-MM-SS>.<ext>: built from numbers only, never from names."""
    start = dt.datetime.strptime(record["start_local"], TIME_FORMAT)
    return f"activity_{int(record['id'])}_{start:%Y-%m-%d_%H-%M-%S}.{ext}"


def pick_original(archive: zipfile.ZipFile) -> tuple[zipfile.ZipInfo, str]:
    """The one activity file in Garmin's zip and its extension; its name is never a path."""
    candidates = []
    for info in archive.infolist():
        ext = info.filename.rsplit(".", 1)[-1].lower() if "." in info.filename else ""
        if not info.is_dir() and ext in ORIGINAL_EXTENSIONS:
            candidates.append((info, ext))
    if len(candidates) != 1:
        raise BadArchive(f"the zip holds {len(candidates)} .fit/.gpx/.tcx files, expected one")
    info, ext = candidates[0]
    if info.file_size > MAX_ORIGINAL_BYTES:
        raise BadArchive(f"the file in the zip is {info.file_size} bytes, over the size cap")
    return info, ext


def plausible_content(ext: str, head: bytes) -> bool:
    """A FIT file carries '.FIT' at bytes 8-11; GPX and TCX are XML."""
    if ext == "fit":
        return len(head) >= 12 and head[8:12] == b".FIT"
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def save_original(dest: Path, record: dict, data: bytes) -> tuple[str, int]:
    """Unzip the original into DEST atomically; returns (file name, size)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as err:
        kind = "an empty answer" if not data else f"not a zip ({len(data)} bytes)"
        raise BadArchive(f"Garmin sent {kind}") from err
    with archive:
        info, ext = pick_original(archive)
        name = activity_filename(record, ext)
        with atomic_file(dest / name) as out:
            size = copy_member(archive, info, ext, out)
    return name, size


def copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, ext: str, out: IO[bytes]) -> int:
    """Copy one member into an open file, checking its content, size cap and CRC."""
    try:
        with archive.open(info) as member:
            head = member.read(64)
            if not plausible_content(ext, head):
                raise BadArchive(f"the .{ext} file in the zip is not a {ext.upper()} file")
            out.write(head)
            size = len(head)
            while chunk := member.read(1024 * 1024):  # the CRC is checked at the end
                size += len(chunk)
                if size > MAX_ORIGINAL_BYTES:
                    raise BadArchive("the file in the zip unpacks past the size cap")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise BadArchive(f"the zip is damaged ({err})") from err
    except (RuntimeError, NotImplementedError, ValueError) as err:  # encrypted, deflate64...
        raise BadArchive(f"the zip cannot be unpacked ({str(err)[:80]})") from err
    return size


def fetch_original(api: GarminAPI, dest: Path, record: dict) -> dict:
    """Download one activity; returns the manifest fields describing the outcome."""
    if record.get("manual"):
        return {"status": "no_file", "error": MANUAL}
    try:
        data = api.get_bytes(DOWNLOAD_PATH.format(id=int(record["id"])))
    except NotFound:
        return {"status": "no_file", "error": "Garmin has no original file (HTTP 404)"}
    except RequestFailed as err:
        return {"status": "failed", "error": str(err)}
    try:
        name, size = save_original(dest, record, data)
    except BadArchive as err:
        return {"status": "failed", "error": str(err)}
    return {
        "status": "downloaded",
        "file": name,
        "size": size,
        "downloaded_at": iso_now(),
        "error": None,
    }


# ---------------------------------------------------------------------------------------
# Manifest: DEST/garminsync.json, what is known of every activity plus the last run. The
# files on disk are the ground truth; the manifest is rebuilt from them when it cannot be read.

MANIFEST_NAME = "garminsync.json"
MANIFEST_VERSION = 1
LOCK_NAME = ".garminsync.lock"
FILE_PATTERN = re.compile(
    r"activity_([1-9][0-9]{0,19})_(\d{4}-\d{2}-\d{2})_(\d{2})-(\d{2})-(\d{2})\.(fit|gpx|tcx)"
)
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # as the manifest keeps it
STATUSES = ("pending", "downloaded", "no_file", "failed")
FLUSH_SECONDS, FLUSH_CHANGES = 30.0, 1000  # bounded rewrites of a growing manifest


def iso_now(offset: dt.timedelta = dt.timedelta()) -> str:
    """The current UTC time (plus an offset) as ISO 8601 seconds with a Z."""
    now = dt.datetime.now(dt.timezone.utc) + offset
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def is_local_time(value: Any) -> bool:
    """Whether a value is a real 'YYYY-MM-DD HH:MM:SS' time (not the 31st of February)."""
    if not isinstance(value, str) or not LOCAL_TIME.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def files_on_disk(dest: Path) -> dict[int, tuple[str, str]]:
    """Every activity_<id>_<start>.<ext> regular file in DEST: id -> (name, start)."""
    found: dict[int, tuple[str, str]] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.scandir(dest), key=lambda e: e.name):
            match = FILE_PATTERN.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                day, hh, mm, ss = match.group(2, 3, 4, 5)
                start = f"{day} {hh}:{mm}:{ss}"
                if is_local_time(start):  # not 2024-13-45: such a file is not ours
                    found.setdefault(int(match.group(1)), (entry.name, start))
    return found


def new_entry(record: dict) -> dict:
    """A manifest entry with every field, for an activity seen for the first time."""
    entry = dict.fromkeys(("start_gmt", "file", "size", "downloaded_at", "error", "gone_since"))
    return {**entry, "type": "unknown", "name": "", "manual": False, "status": "pending", **record}


def clean_entry(key: str, value: Any) -> dict | None:
    """A manifest entry with the right types, or None when it cannot be one."""
    if not isinstance(value, dict) or not (key.isascii() and key.isdigit()):
        return None
    if value.get("id") != int(key):
        return None
    if not is_local_time(value.get("start_local")):
        return None
    if value.get("status") not in STATUSES:
        return None
    entry = {"id": int(key), "start_local": value["start_local"], "status": value["status"]}
    for field in ("start_gmt", "type", "name", "file", "downloaded_at", "error", "gone_since"):
        entry[field] = value[field] if isinstance(value.get(field), str) else None
    entry["size"] = value["size"] if isinstance(value.get("size"), int) else None
    entry["type"] = entry["type"] or "unknown"
    entry["name"] = entry["name"] or ""
    entry["manual"] = value.get("manual") is True
    if isinstance(value.get("strava"), dict):
        entry["strava"] = value["strava"]
    return entry


def manifest_text(data: dict) -> Iterator[str]:
    """The manifest as JSON, one activity per line (easy to grep and diff), in pieces so a
    big manifest is never held twice in memory."""

    def one_line(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    yield '{\n "activities": {'
    separator = "\n"
    for key in sorted(data["activities"]):
        yield f"{separator}  {one_line(key)}: {one_line(data['activities'][key])}"
        separator = ",\n"
    yield "\n }"
    for key in sorted(k for k in data if k != "activities"):
        yield f",\n {one_line(key)}: {one_line(data[key])}"
    yield "\n}\n"


def parse_manifest(text: str) -> dict:
    """The manifest's data from its JSON text; ValueError when it is not a manifest."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("activities"), dict):
        raise ValueError("not a garminsync manifest")
    version = data.get("version")
    if isinstance(version, int) and version > MANIFEST_VERSION:
        why = f"the manifest was written by a newer garminsync (version {version})"
        raise Fatal(EXIT_USAGE, f"{why}; upgrade garminsync.py to use this DEST")
    activities = {}
    for key, value in data["activities"].items():
        entry = clean_entry(str(key), value)
        if entry is None:
            emit("warning", f"manifest entry {str(key)[:40]!r} is malformed; dropped it")
        else:
            activities[key] = entry
    manifest = {"version": MANIFEST_VERSION, "activities": activities}
    for key, kind in (("last_run", dict), ("last_full_listing", str), ("strava_since", str)):
        manifest[key] = data[key] if isinstance(data.get(key), kind) else None
    unusable = data.get("unusable_listed")
    manifest["unusable_listed"] = unusable if type(unusable) is int and unusable >= 0 else 0
    return manifest


class ManifestStore:
    """The manifest in memory, reconciled with DEST, flushed every few seconds or changes."""

    def __init__(self, dest: Path, writable: bool) -> None:
        self.dest = dest
        self.path = dest / MANIFEST_NAME
        self.writable = writable
        self.data: dict = {
            "version": MANIFEST_VERSION,
            "activities": {},
            "last_run": None,
            "last_full_listing": None,
            "unusable_listed": 0,
        }
        self.changes = 0
        self.flushed_at = time.monotonic()

    @property
    def activities(self) -> dict[str, dict]:
        return self.data["activities"]

    def load(self) -> None:
        """Read the manifest; one that does not parse is moved aside (never overwritten), one
        that cannot be read stops the run and is left alone."""
        try:
            self.data = parse_manifest(self.path.read_text(encoding="utf-8"))
            return
        except FileNotFoundError:
            return
        except OSError as err:  # a read error says nothing of the content: leave it in place
            problem = f"cannot read {self.path} ({err.strerror})"
            if not self.writable:
                emit("warning", f"{problem}; showing what is on disk")
                return
            if err.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP):
                raise Fatal(EXIT_USAGE, f"{problem}; make it a readable file, or move it away")
            raise Fatal(EXIT_TEMPFAIL, f"{problem}; left as it is, the next run tries again")
        except ValueError as err:  # a UnicodeDecodeError is a ValueError
            reason = str(err).split("\n")[0][:80]
        if not self.writable:
            emit("warning", f"{self.path} is unreadable ({reason}); showing what is on disk")
            return
        aside = self.path.with_name(f"{MANIFEST_NAME}.corrupt-{iso_now().replace(':', '')}")
        os.replace(self.path, aside)
        why = f"{self.path} is unreadable ({reason})"
        emit("warning", f"{why}; moved it to {aside.name}; the manifest is rebuilt from the files")
        self.changes += 1

    def adopt_files_on_disk(self) -> None:
        """Files are the truth: adopt unknown ones, and forget files that vanished."""
        on_disk = files_on_disk(self.dest)
        for activity_id, (name, start) in on_disk.items():
            entry = self.activities.get(str(activity_id))
            if entry is None:
                entry = new_entry({"id": activity_id, "start_local": start})
                self.activities[str(activity_id)] = entry
            if (entry["status"], entry["file"]) != ("downloaded", name):
                size = (self.dest / name).stat().st_size
                entry.update(status="downloaded", file=name, size=size, error=None)
                self.changes += 1
        for key, entry in self.activities.items():
            if entry["status"] == "downloaded" and int(key) not in on_disk:
                entry.update(
                    status="pending", file=None, size=None, error="the file vanished from DEST"
                )
                self.changes += 1

    def status_counts(self) -> dict[str, int]:
        """How many activities have each status."""
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.activities.values():
            counts[entry["status"]] += 1
        return counts

    def present_ids(self) -> set[int]:
        """Activities believed to be on Garmin (not marked gone)."""
        return {e["id"] for e in self.activities.values() if not e.get("gone_since")}

    def merge_listed(self, record: dict) -> int:
        """Merge one listed activity; returns 1 if it was not known to be on Garmin."""
        entry = self.activities.get(str(record["id"]))
        is_new = entry is None or bool(entry.get("gone_since"))
        if entry is None:
            entry = self.activities[str(record["id"])] = new_entry(record)
        changed = {k: v for k, v in record.items() if entry.get(k) != v}
        if changed or is_new:
            entry.update(changed, gone_since=None)
            if record["manual"] and entry["status"] == "pending":
                entry.update(status="no_file", error=MANUAL)
            self.changes += 1
        return int(is_new)

    def mark_gone(self, ids: set[int]) -> None:
        """Activities deleted on Garmin keep their files; they are only marked."""
        for activity_id in ids:
            entry = self.activities[str(activity_id)]
            if not entry.get("gone_since"):
                entry["gone_since"] = iso_now()
                self.changes += 1
        if ids:
            emit("info", f"{len(ids)} activities are gone from Garmin; their files stay")

    def record(self, activity_id: int, outcome: dict) -> None:
        """Store a download's outcome (flushed when due)."""
        self.activities[str(activity_id)].update(outcome)
        self.changes += 1
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Write the manifest atomically when due (every few seconds or changes) or forced."""
        if not self.writable or not (self.changes or force):
            return
        due = self.changes >= FLUSH_CHANGES or time.monotonic() - self.flushed_at >= FLUSH_SECONDS
        if force or due:
            with atomic_file(self.path) as out:
                for chunk in manifest_text(self.data):
                    out.write(chunk.encode("utf-8", "replace"))  # even from a hostile manifest
            self.changes, self.flushed_at = 0, time.monotonic()


def in_range(entry: dict, settings: Settings) -> bool:
    """Whether an activity's local start date is within --since/--until."""
    day = dt.date.fromisoformat(entry["start_local"][:10])
    return (settings.since or dt.date.min) <= day <= (settings.until or dt.date.max)


def newest_first(store: ManifestStore, settings: Settings, statuses: tuple) -> list[dict]:
    """The activities with one of these statuses within --since/--until, newest first."""
    chosen = [e for e in store.activities.values() if e["status"] in statuses]
    chosen = [e for e in chosen if in_range(e, settings)]
    return sorted(chosen, key=lambda e: (e["start_local"], e["id"]), reverse=True)


def pending_activities(store: ManifestStore, settings: Settings) -> list[dict]:
    """Activities to download this run, newest first: not yet saved, still on Garmin."""
    todo = newest_first(store, settings, ("pending", "failed"))
    return [e for e in todo if not e.get("gone_since")][: settings.limit]


# ---------------------------------------------------------------------------------------
# Strava (optional): upload downloaded originals once each, with OAuth tokens kept beside
# the Garmin session, Strava's rate limits read from every answer, duplicates not retried.

STRAVA = "https://www.strava.com"
STRAVA_REDIRECT = "http://localhost:9321/"
STRAVA_SCOPE = "activity:write,activity:read_all"
STRAVA_POLL_FOR = 60.0  # seconds to wait for Strava to process one upload, then next run
STRAVA_RESERVE = 5  # requests left unused in every rate-limit window
STRAVA_ATTEMPTS = 3  # uploads Strava rejected are tried this often in all
STRAVA_LOGIN_HINT = run_hint("--strava-login")
DUPLICATE = re.compile(r"duplicate of\D*?(\d+)", re.I)
FORM_TYPE = "application/x-www-form-urlencoded"


def strava_app() -> tuple[str, str]:
    """Client id and secret of the user's Strava API application, or exit 3 saying where."""
    client_id, secret = find_credentials(
        ("strava_client_id", "strava_client_secret"), ("www.strava.com",)
    )
    if not (client_id and secret):
        where = "STRAVA_CLIENT_ID/_SECRET, ~/.netrc machine www.strava.com or systemd credentials"
        raise Fatal(EXIT_AUTH, f"no Strava client id/secret: set {where} (see README)")
    return client_id, secret


def strava_token_file() -> Path:
    """The saved Strava tokens, beside the Garmin session."""
    return token_file().parent / "strava_tokens.json"


def save_strava_tokens(answer: dict) -> dict:
    """Keep what a token answer says, atomically and 0600, before the tokens are used."""
    tokens = {key: answer.get(key) for key in ("access_token", "refresh_token", "expires_at")}
    if not all(isinstance(v, (str, int)) and v for v in tokens.values()):
        raise Fatal(EXIT_AUTH, f"Strava's token answer is incomplete; {STRAVA_LOGIN_HINT}")
    add_secret(tokens["access_token"])
    add_secret(tokens["refresh_token"])
    save_in_token_store(strava_token_file(), json.dumps(tokens))
    return tokens


def load_strava_tokens() -> dict:
    """The saved Strava tokens, or exit 3 asking for --strava-login."""
    try:
        tokens = json.loads(strava_token_file().read_text(encoding="utf-8"))
        for key in ("access_token", "refresh_token"):
            add_secret(tokens[key])
        return tokens
    except (OSError, ValueError, KeyError, TypeError):
        raise Fatal(EXIT_AUTH, f"no usable Strava authorisation; {STRAVA_LOGIN_HINT}")


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one file; returns (body, type)."""
    boundary = f"garminsync-{os.urandom(12).hex()}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename='
        f'"{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class StravaAPI:
    """Strava's three endpoints over urllib, with token refresh and rate-limit accounting."""

    def __init__(self, timeout: float, tokens: dict) -> None:
        self.app = strava_app()
        self.tokens = tokens
        self.timeout = timeout
        self.left: dict[str, int] = {}  # remaining requests per window, from the headers

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
    ) -> dict:
        """One request; JSON answer. 401 refreshes once; 429 or an exhausted window stops."""
        import urllib.error  # noqa: PLC0415 (only Strava runs need urllib.request)
        import urllib.request  # noqa: PLC0415

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            if auth:
                headers["Authorization"] = f"Bearer {self.access_token()}"
            request = urllib.request.Request(STRAVA + path, body, headers, method=method)
            emit("debug", f"Strava {method} {path}")
            try:
                with (
                    time_budget(self.timeout),
                    urllib.request.urlopen(request, timeout=min(30.0, self.timeout)) as answer,
                ):
                    self.read_limits(answer.headers)
                    return json.loads(answer.read() or b"{}")
            except urllib.error.HTTPError as err:
                self.read_limits(err.headers)
                if err.code == 401 and auth and attempt == 1:
                    self.refresh()
                    continue
                if err.code == 401 or (err.code == 400 and not auth):
                    why = f"Strava refused the authorisation (HTTP {err.code})"
                    raise Fatal(EXIT_AUTH, f"{why}; {STRAVA_LOGIN_HINT}")
                if err.code == 429 or err.code >= 500:
                    why = f"Strava is {'rate limiting' if err.code == 429 else 'failing'}"
                    raise Fatal(EXIT_TEMPFAIL, f"{why} (HTTP {err.code}); the next run goes on")
                raise RequestFailed(f"Strava answered HTTP {err.code}")
            except ValueError as err:
                raise RequestFailed(f"Strava's answer is not JSON ({err})")
            except (OSError, Deadline) as err:
                why = f"Strava is unreachable ({describe_failure(err, None)})"
                raise Fatal(EXIT_TEMPFAIL, f"{why}; uploads resume next run")
        raise AssertionError("unreachable")

    def read_limits(self, headers: Any) -> None:
        """Remember how many requests each of Strava's windows has left."""
        for kind in ("RateLimit", "ReadRateLimit"):
            limits = (headers.get(f"X-{kind}-Limit") or "").split(",")
            usage = (headers.get(f"X-{kind}-Usage") or "").split(",")
            for window, limit, used in zip(("15min", "day"), limits, usage, strict=False):
                with contextlib.suppress(ValueError):
                    self.left[f"{kind}-{window}"] = int(limit) - int(used)

    def ensure_room(self, reads: int) -> None:
        """Stop (exit 75) before any window would be exhausted."""
        for window, left in self.left.items():
            need = STRAVA_RESERVE + (reads if window.startswith("Read") else reads + 1)
            if left < need:
                why = f"Strava's {window} rate limit is nearly used up ({left} left)"
                raise Fatal(EXIT_TEMPFAIL, f"{why}; stopping uploads, the next run goes on")

    def access_token(self) -> str:
        """The access token, refreshed first when it expires within five minutes."""
        expires_at = self.tokens.get("expires_at")
        if not isinstance(expires_at, int) or expires_at - time.time() < 300:
            self.refresh()
        return self.tokens["access_token"]

    def refresh(self) -> None:
        """Trade the refresh token for new tokens; Strava rotates it, so save before use."""
        refresh_token = self.tokens["refresh_token"]
        self.tokens = self.fetch_tokens(grant_type="refresh_token", refresh_token=refresh_token)
        emit("debug", "Strava tokens refreshed and saved")

    def fetch_tokens(self, **grant: str) -> dict:
        """Ask /oauth/token for tokens with this grant; they are saved before they are used."""
        client_id, secret = self.app
        form = {"client_id": client_id, "client_secret": secret, **grant}
        body = urllib.parse.urlencode(form).encode()
        answer = self.call("POST", "/oauth/token", body, FORM_TYPE, auth=False)
        return save_strava_tokens(answer)


def strava_outcome(answer: dict) -> dict | None:
    """What an upload answer says: uploaded, duplicate, failed, or None while processing."""
    known = {"upload_id": answer.get("id"), "error": None}
    error = str(answer.get("error") or "")
    if duplicate := DUPLICATE.search(error):
        return {**known, "status": "duplicate", "activity_id": int(duplicate.group(1))}
    if error:
        return {**known, "status": "failed", "error": error[:300]}
    if answer.get("activity_id"):
        return {**known, "status": "uploaded", "activity_id": answer["activity_id"]}
    return None


def check_upload(api: StravaAPI, upload_id: Any) -> dict | None:
    """Ask Strava once how an upload went; None while it is still processing."""
    api.ensure_room(reads=1)
    return strava_outcome(api.call("GET", f"/api/v3/uploads/{int(upload_id)}"))


def strava_poll(api: StravaAPI, upload_id: Any) -> dict:
    """Poll an upload at most once a second for about a minute; 'processing' if still not done."""
    give_up = time.monotonic() + STRAVA_POLL_FOR
    while time.monotonic() < give_up:
        time.sleep(1.0)
        if outcome := check_upload(api, upload_id):
            return outcome
    return {"status": "processing", "upload_id": upload_id, "error": "still processing"}


def strava_upload(api: StravaAPI, entry: dict, path: Path) -> dict:
    """Upload one original (or look again at an upload still processing)."""
    previous = entry.get("strava") or {}
    if previous.get("status") == "processing" and previous.get("upload_id"):
        return check_upload(api, previous["upload_id"]) or strava_poll(api, previous["upload_id"])
    api.ensure_room(reads=3)
    fields = {"data_type": path.suffix[1:], "external_id": f"garmin_{entry['id']}"}
    if entry.get("name"):
        fields["name"] = printable(entry["name"])[:200]
    body, content_type = multipart(fields, path.name, path.read_bytes())
    answer = api.call("POST", "/api/v3/uploads", body, content_type)
    if not isinstance(answer.get("id"), int):
        raise RequestFailed(f"Strava's upload answer has no id: {str(answer)[:120]}")
    if outcome := strava_outcome(answer):
        return outcome
    # Kept before polling: if a rate limit or an outage stops the run while Strava is still
    # processing, the next run looks at this upload instead of sending the file again.
    entry["strava"] = {**previous, "status": "processing", "upload_id": answer["id"]}
    return strava_poll(api, answer["id"])


def strava_since(store: ManifestStore, settings: Settings) -> dt.date:
    """The Strava start date: --strava-since, else the day uploads were first enabled."""
    since = store.data.get("strava_since")
    if settings.strava_since:
        since = settings.strava_since.isoformat()
    elif not isinstance(since, str):
        since = dt.date.today().isoformat()
        emit(
            "info",
            f"Strava uploads start with activities from {since}; "
            "use --strava-since to include older ones",
        )
    if since != store.data.get("strava_since"):
        store.data["strava_since"] = since
        store.changes += 1
    return dt.date.fromisoformat(store.data["strava_since"][:10])


def strava_pending(store: ManifestStore, since: dt.date) -> list[tuple[dict, Path]]:
    """Downloaded originals on or after the start date not yet on Strava, oldest first."""
    on_disk = files_on_disk(store.dest)
    todo = []
    for entry in store.activities.values():
        done = entry.get("strava") or {}
        retired = done.get("status") == "failed" and done.get("attempts", 0) >= STRAVA_ATTEMPTS
        wanted = entry["id"] in on_disk and entry["start_local"][:10] >= since.isoformat()
        if wanted and not retired and done.get("status") not in ("uploaded", "duplicate"):
            todo.append((entry, store.dest / on_disk[entry["id"]][0]))
    return sorted(todo, key=lambda item: (item[0]["start_local"], item[0]["id"]))


def strava_step(settings: Settings, store: ManifestStore, _summary: RunSummary) -> int:
    """Upload what is pending to Strava; a run with nothing to upload asks Strava nothing."""
    todo = strava_pending(store, strava_since(store, settings))
    if settings.dry_run:
        for _, path in todo:
            print(f"would upload to Strava {path.name}")
        return EXIT_OK
    if not todo:
        emit("debug", "nothing to upload to Strava")
        return EXIT_OK
    api = StravaAPI(settings.timeout, load_strava_tokens())
    failed = 0
    for number, (entry, path) in enumerate(todo, 1):
        progress(f"[{number}/{len(todo)}] Strava upload {describe(entry)}")
        try:
            outcome = strava_upload(api, entry, path)
        except RequestFailed as err:
            outcome = {"status": "failed", "error": str(err)}
        attempts = (entry.get("strava") or {}).get("attempts", 0) + 1
        entry["strava"] = {**outcome, "attempts": attempts, "at": iso_now()}
        store.changes += 1
        store.flush()
        status = outcome["status"]
        if status in ("failed", "processing"):
            failed += 1
            emit("warning", f"Strava upload of {path.name}: {outcome['error']}")
        else:
            emit("info", f"Strava: {path.name} {status} (activity {outcome['activity_id']})")
    clear_progress()
    return EXIT_PARTIAL if failed else EXIT_OK


def strava_login() -> int:
    """--strava-login: the OAuth code flow with a one-request server on 127.0.0.1:9321."""
    api = StravaAPI(60.0, tokens={})  # no tokens yet: only the unauthenticated token call
    state = os.urandom(12).hex()
    query = urllib.parse.urlencode(
        {
            "client_id": api.app[0],
            "response_type": "code",
            "redirect_uri": STRAVA_REDIRECT,
            "approval_prompt": "auto",
            "scope": STRAVA_SCOPE,
            "state": state,
        }
    )
    received: list[str] = []
    server = redirect_server(received)  # listening before the address is shown
    print(
        f"Open this address in a browser and authorise garminsync:\n\n"
        f"  {STRAVA}/oauth/authorize?{query}\n\nWaiting for Strava's redirect to "
        f"{STRAVA_REDIRECT} (or paste the address the browser ended on here):",
        flush=True,
    )
    redirect = receive_redirect(server, received)
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))
    if params.get("state") != state or not params.get("code"):
        why = params.get("error") or "state mismatch"
        raise Fatal(EXIT_AUTH, f"Strava's redirect lacks the code ({why}); run --strava-login")
    if not {"activity:write", "activity:read_all"} <= set(params.get("scope", "").split(",")):
        boxes = "'Upload your activities' and 'View data about your private activities'"
        raise Fatal(EXIT_AUTH, f"Strava was not allowed to upload activities: tick {boxes}")
    api.fetch_tokens(grant_type="authorization_code", code=params["code"])
    print(f"Strava authorised; tokens saved in {strava_token_file()}")
    return EXIT_OK


def redirect_server(received: list[str]) -> Any:
    """A server on 127.0.0.1:9321 that adds the browser's redirect URL to received; None
    (and a warning) when the port is taken."""
    import http.server  # noqa: PLC0415

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            received.append(STRAVA_REDIRECT.rstrip("/") + self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"garminsync: Strava authorised; you can close this tab.\n")

        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = http.server.HTTPServer(("127.0.0.1", 9321), Handler)
    except OSError as err:
        emit("warning", f"cannot listen on 127.0.0.1:9321 ({err.strerror}); paste the address")
        return None
    server.handle_error = lambda *_: emit("debug", traceback.format_exc())  # not on stderr
    return server


def receive_redirect(server: Any, received: list[str], wait: float = 600.0) -> str:
    """The redirect URL: from the browser through the server, or pasted on standard input."""
    import select  # noqa: PLC0415

    end = time.monotonic() + wait
    sources: list[Any] = [sys.stdin] + ([server.socket] if server else [])
    try:
        while not received and sources and time.monotonic() < end:
            ready, _, _ = select.select(sources, [], [], 1.0)
            if server and server.socket in ready:
                server.handle_request()
            elif sys.stdin in ready:
                line = sys.stdin.readline()
                if line.strip():
                    received.append(line.strip())
                elif not line:  # end of input: only the browser can answer now
                    sources.remove(sys.stdin)
    finally:
        if server:
            server.server_close()
    if not received:
        raise Fatal(EXIT_AUTH, "no redirect from Strava arrived; run --strava-login again")
    return received[0]


# ---------------------------------------------------------------------------------------
# Command line: parsing, the lock on DEST, and the actions (--missing, --strava-only,
# --list, --status, --login) with their exit codes.


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"garminsync: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def iso_date(text: str) -> dt.date:
    """A YYYY-MM-DD argument."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2024-05-31") from None


def seconds(text: str) -> float:
    """A number of seconds, from 0 up to a day."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def env_seconds(name: str, default: float, least: float = 0.0) -> float:
    """A number of seconds (at least `least`) from the environment, or exit 2 saying why."""
    raw = os.environ.get(name, "").strip()
    try:
        value = seconds(raw) if raw else default
    except argparse.ArgumentTypeError:
        value = -1.0
    if value < least:
        raise Fatal(
            EXIT_USAGE, f"{name}={raw!r} is not a number of seconds from {least:g}; fix or unset it"
        )
    return value


def positive_int(text: str) -> int:
    """A whole number from 1 up."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


ACTIONS = [  # flag, action, help
    ("--missing", "missing", "download every activity not yet in DEST (the default)"),
    ("--status", "status", "counts by status, the last run, the session"),
    ("--login", "login", "log in interactively (MFA too) and save the session"),
    ("--strava-only", "strava-only", "upload pending files to Strava; ask Garmin nothing"),
    ("--strava-login", "strava-login", "authorise uploads to Strava (OAuth, once)"),
]
OPTIONS = [  # flag, argparse keywords
    ("--dest", dict(metavar="DIR", help="where the files go ($GARMINSYNC_DEST, else ~/fit)")),
    ("--offline", dict(action="store_true", help="--list/--status from the manifest only")),
    ("--since", dict(type=iso_date, metavar="YYYY-MM-DD", help="only activities from this date")),
    ("--until", dict(type=iso_date, metavar="YYYY-MM-DD", help="only activities up to this date")),
    ("--delay", dict(type=seconds, metavar="SECONDS", help="pause between Garmin requests (2)")),
    ("--limit", dict(type=positive_int, metavar="N", help="download at most N activities")),
    ("--dry-run", dict(action="store_true", help="show what would be done; write nothing")),
    ("--json", dict(action="store_true", help="machine-readable --list and --status")),
    ("--strava", dict(action="store_true", help="with --missing: upload new files to Strava")),
    ("--strava-since", dict(type=iso_date, metavar="YYYY-MM-DD", help="Strava start date")),
]


def env_switch(name: str) -> bool:
    """An on/off setting from the environment (1/yes/true/on, 0/no/false/off or unset)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return False
    if value in ("1", "yes", "true", "on"):
        return True
    raise Fatal(EXIT_USAGE, f"{name}={value!r} is neither on (1) nor off (0); fix or unset it")


def build_parser() -> Parser:
    parser = Parser(
        prog="garminsync.py",
        description="Keep a local copy of the original file of every Garmin Connect activity.",
        epilog="Exit codes: 0 ok, 1 some failed, 2 usage, 3 login needed, 75 try later, "
        "130/143 stopped by SIGINT/SIGTERM.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--list",
        dest="list_filter",
        choices=("all", "missing", "downloaded"),
        help="print activities: id, start, type, name, status",
    )
    for flag, const, text in ACTIONS:
        action.add_argument(flag, dest="action", action="store_const", const=const, help=text)
    for flag, keywords in OPTIONS:
        parser.add_argument(flag, **keywords)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--version", action="version", version=f"garminsync {__version__}")
    return parser


def parse_settings(argv: list[str]) -> Settings:
    """The command line and environment as Settings; usage errors exit 2 with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    action = "list" if args.list_filter else (args.action or "missing")
    strava_env = env_switch("GARMINSYNC_STRAVA")
    problems = [
        (args.offline and action not in ("list", "status"), "--offline goes with --list/--status"),
        (args.json and action not in ("list", "status"), "--json goes with --list or --status"),
        (
            args.dry_run and action not in ("missing", "strava-only"),
            "--dry-run goes with --missing or --strava-only",
        ),
        (args.strava and action != "missing", "--strava goes with --missing"),
        (args.verbose and args.quiet, "-v and -q exclude each other"),
        (args.since and args.until and args.since > args.until, "--since is after --until"),
    ]
    for bad, message in problems:
        if bad:
            parser.error(message)
    delay = env_seconds("GARMINSYNC_DELAY", DEFAULT_DELAY) if args.delay is None else args.delay
    return Settings(
        action=action,
        list_filter=args.list_filter or "all",
        dest=Path(args.dest or os.environ.get("GARMINSYNC_DEST") or "~/fit").expanduser(),
        offline=args.offline,
        since=args.since,
        until=args.until,
        delay=delay,
        timeout=env_seconds("GARMINSYNC_TIMEOUT", DEFAULT_TIMEOUT, least=1.0),
        limit=args.limit,
        dry_run=args.dry_run,
        json=args.json,
        verbosity=1 if args.verbose else (-1 if args.quiet else 0),
        strava=action == "strava-only" or (action == "missing" and (args.strava or strava_env)),
        strava_since=args.strava_since,
    )


def prepare_dest(dest: Path) -> None:
    """Create DEST if absent and check it is a writable folder, or exit 2 saying how to fix it."""
    check_dest_is_a_folder(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Fatal(EXIT_USAGE, f"cannot create {dest}: {err.strerror}; pick another --dest")


def check_dest_is_a_folder(dest: Path) -> None:
    """A DEST that exists must be a folder (exit 2); a missing one is fine."""
    if dest.exists() and not dest.is_dir():
        raise Fatal(EXIT_USAGE, f"{dest} is not a folder; pick another --dest")


@contextlib.contextmanager
def dest_lock(dest: Path):
    """One run per DEST: an advisory flock on DEST/.garminsync.lock, or exit 75."""
    path = dest / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        hint = (
            "it is read-only (under systemd: allow it with `make install DEST=...`)"
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
            else err.strerror
        )
        raise Fatal(EXIT_USAGE, f"cannot write in {dest}: {hint}")
    with os.fdopen(fd, "rb"):  # closing it releases the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fatal(EXIT_TEMPFAIL, f"another garminsync run holds {path}; try again later")
        yield


def local_write_error(err: OSError, dest: Path) -> Fatal:
    """A one-line, actionable error for a failed write in DEST (or the folder the error
    names: refreshed tokens are saved beside a request too)."""
    dest = Path(err.filename).parent if isinstance(err.filename, str) else dest
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"cannot write in {dest}: {err.strerror} (disk full or file size limit)"
        return Fatal(EXIT_PARTIAL, f"{why}; free some space, the next run goes on")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Fatal(EXIT_USAGE, f"cannot write in {dest}: {err.strerror}; make it writable")
    return Fatal(EXIT_PARTIAL, f"cannot write in {dest}: {err.strerror or err}")


@dataclasses.dataclass
class RunSummary:
    """What --status shows of the last run."""

    started_at: str = dataclasses.field(default_factory=iso_now)
    began: float = dataclasses.field(default_factory=time.monotonic)
    result: str = "ok"
    exit_code: int = EXIT_OK
    error: str | None = None
    new: int = 0
    downloaded: int = 0
    no_file: int = 0
    failed: int = 0
    requests: int = 0

    def as_json(self) -> dict:
        fields = dataclasses.asdict(self)
        del fields["began"]
        fields["finished_at"] = iso_now()
        fields["duration_s"] = round(time.monotonic() - self.began, 1)
        return fields


def garmin_step(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """Discover new activities, then download what is pending; returns the exit code."""
    api = GarminAPI(open_seam(settings), settings)
    try:
        try:
            summary.new = discover(api, store, settings)
        except ListingFailed as err:
            if not api.reached:
                why = f"Garmin Connect is unreachable ({err})"
                raise Fatal(EXIT_TEMPFAIL, f"{why}; the next run tries again") from err
            emit("error", f"{err}; downloading only what was already known")
            summary.error = str(err)
        store.flush()
        if settings.action == "missing":
            download_pending(api, store, settings, summary)
    finally:
        summary.requests = api.requests
    if summary.failed and not api.reached:
        raise Fatal(EXIT_TEMPFAIL, "Garmin Connect is unreachable; the next run tries again")
    return EXIT_PARTIAL if summary.failed or summary.error else EXIT_OK


def download_pending(
    api: GarminAPI, store: ManifestStore, settings: Settings, summary: RunSummary
) -> None:
    """Download every pending activity (newest first), recording each outcome."""
    todo = pending_activities(store, settings)
    if settings.dry_run:
        for entry in todo:
            print(f"would download {describe(entry)}")
        emit("info", f"{len(todo)} activities would be downloaded")
        return
    for number, entry in enumerate(todo, 1):
        progress(f"[{number}/{len(todo)}] activity {describe(entry)}")
        try:
            outcome = fetch_original(api, store.dest, entry)
        except OSError as err:
            raise local_write_error(err, store.dest) from err
        store.record(entry["id"], outcome)
        status = outcome["status"]
        summary.downloaded += status == "downloaded"
        summary.no_file += status == "no_file"
        summary.failed += status == "failed"
        if status == "downloaded":  # on a terminal the progress line already said it
            emit("debug" if OUT.progress else "info", f"saved {outcome['file']}")
        elif status == "failed":
            emit(
                "warning",
                f"activity {describe(entry)}: {outcome['error']}; the next run tries again",
            )
        else:
            emit("debug", f"activity {describe(entry)}: {outcome['error']}")
    clear_progress()


def cmd_sync(settings: Settings) -> int:
    """--missing, --strava-only, --list and --status: lock DEST (unless only reading it), run
    the steps (unless --offline), then show the list, the status or the closing line."""
    check_dest_is_a_folder(settings.dest)
    reading = settings.offline or (settings.dry_run and not settings.dest.is_dir())
    if not reading:
        prepare_dest(settings.dest)
    elif not settings.dest.exists():
        emit("warning", f"{settings.dest} does not exist (yet): nothing has been saved there")
    with contextlib.nullcontext() if reading else dest_lock(settings.dest):
        store = ManifestStore(settings.dest, writable=not (settings.dry_run or settings.offline))
        if store.writable:
            remove_stale_temp_files(settings.dest)
        store.load()
        store.adopt_files_on_disk()
        summary = RunSummary()
        code = EXIT_OK if settings.offline else run_steps(settings, store, summary)
    if settings.action == "list":
        show_list(settings, store)
    elif settings.action == "status":
        show_status(settings, store)
    elif settings.action == "missing" and code in (EXIT_OK, EXIT_PARTIAL) and store.writable:
        report(summary, store)
    return code


SEVERITY = [EXIT_OK, EXIT_TEMPFAIL, EXIT_PARTIAL, EXIT_AUTH, EXIT_USAGE]  # mildest first


def run_steps(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """The Garmin step, then the Strava step (a failure of one does not stop the other);
    the manifest and the run's summary are flushed whatever happens."""
    steps = [] if settings.action == "strava-only" else [garmin_step]
    steps += [strava_step] if settings.strava else []
    codes = []
    try:
        for step in steps:
            try:
                codes.append(step(settings, store, summary))
            except (Fatal, OSError) as err:
                failure = err if isinstance(err, Fatal) else local_write_error(err, settings.dest)
                emit(fatal_level(failure), str(failure))
                summary.error = redact(str(failure))
                codes.append(failure.code)
                if isinstance(err, OSError):
                    break  # DEST cannot be written: the next step could not record anything
    except Interrupted as stop:
        summary.result, summary.error = "interrupted", signal.Signals(stop.signum).name
        summary.exit_code = EXIT_SIGNAL_BASE + stop.signum
        raise
    except Exception as err:
        summary.result, summary.error = "failed", f"unexpected {err.__class__.__name__}"
        summary.exit_code = EXIT_PARTIAL
        raise
    else:
        summary.exit_code = max(codes or [EXIT_OK], key=SEVERITY.index)
        if summary.exit_code:
            summary.result = "failed" if summary.exit_code != EXIT_TEMPFAIL else "stopped"
    finally:
        if settings.action in ("missing", "strava-only") and store.writable:
            store.data["last_run"] = summary.as_json()
        try:
            store.flush(force=True)
        except OSError as err:
            emit("error", f"could not save the manifest: {err.strerror}; the files are safe")
    return summary.exit_code


def report(summary: RunSummary, store: ManifestStore) -> None:
    """The closing line of a sync: this run's downloads, then what DEST holds in all."""
    counts = store.status_counts()
    emit(
        "info" if not summary.failed else "warning",
        f"{summary.downloaded} downloaded, {summary.failed} failed; files in {store.dest}: "
        f"{counts['downloaded']}, activities without a file: {counts['no_file']}",
    )


def show_list(settings: Settings, store: ManifestStore) -> None:
    """Print the activities that match --list and --since/--until."""
    wanted = {"all": STATUSES, "downloaded": ("downloaded",), "missing": ("pending", "failed")}
    rows = newest_first(store, settings, wanted[settings.list_filter])
    if settings.json:
        json.dump(rows, sys.stdout, indent=1, ensure_ascii=False)
        print()
        return
    for e in rows:
        status = e["status"] + (" (gone from Garmin)" if e.get("gone_since") else "")
        print(
            f"{e['id']:>12}  {e['start_local']}  {e['type'][:20]:<20}  "
            f"{printable(e['name'])[:40]:<40}  {status}"
        )


def show_status(settings: Settings, store: ManifestStore) -> None:
    """Print counts by status, the last run and the session."""
    counts = store.status_counts()
    gone = sum(1 for e in store.activities.values() if e.get("gone_since"))
    status = {
        "dest": str(store.dest),
        "counts": counts,
        "gone_from_garmin": gone,
        "last_run": store.data.get("last_run"),
        "token_store": str(token_file()),
        "session_saved": session_saved(),
    }
    if settings.json:
        json.dump(status, sys.stdout, indent=1)
        print()
        return
    last = status["last_run"] or {}
    print(f"dest:      {store.dest}")
    print(
        f"activities: {len(store.activities)} known: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; {gone} gone from Garmin"
    )
    if last:
        print(
            f"last run:  {last.get('finished_at')}, {last.get('result')} (exit "
            f"{last.get('exit_code')}), {last.get('duration_s')} s, "
            f"{last.get('downloaded')} downloaded"
            + (f", error: {last['error']}" if last.get("error") else "")
        )
    else:
        print("last run:  none")
    print(f"session:   {'saved' if status['session_saved'] else 'none'} in {token_file()}")


def cmd_login(settings: Settings) -> int:
    """--login: prompt for what is missing (and the MFA code), then save the session."""
    login(interactive=True)
    print(f"logged in; next: {this_command()} --missing --dest {settings.dest}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns the exit code."""
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
        setup_output(settings.verbosity)
        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit becomes EFBIG
        if settings.action == "login":
            return cmd_login(settings)
        if settings.action == "strava-login":
            return strava_login()
        return cmd_sync(settings)
    except Fatal as err:
        emit(fatal_level(err), str(err))
        return err.code
    except Interrupted as stop:
        emit(
            "warning",
            f"stopped by {signal.Signals(stop.signum).name}; the files saved so far "
            "are complete, the next run goes on",
        )
        return EXIT_SIGNAL_BASE + stop.signum
    except (Exception, Deadline) as err:
        emit("debug", traceback.format_exc())
        emit(
            "error",
            f"unexpected {err.__class__.__name__}: {' '.join(str(err).split())[:200]} "
            "(run with -v for details, and please report it)",
        )
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
