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
    --list {all,missing,downloaded,types}   print activities (or each type and its count)
    --status                         counts by status, the last runs, the session
    --report                         write DEST/garminsync.html from the manifest
    --login                          log in interactively (MFA too), then save the session
    --strava-only / --strava-login   upload pending files to Strava / authorise that once

Options:
    --dest DIR        where the files go; default $GARMINSYNC_DEST, else ~/fit
    --offline         with --list/--status: read the manifest only, no network
    --since DATE / --until DATE      only activities whose local start date is in range
    --delay SECONDS   fixed pause between two Garmin requests; default $GARMINSYNC_DELAY or 2
    --limit N         download (and export) at most N activities this run
    --retry-failed    with --missing: try the activities set aside after repeated failures
    --dry-run         show what --missing (or --strava-only) would do; write nothing
    --json            machine-readable output for --list and --status
    --strava, --strava-since DATE    with --missing: then upload new files to Strava
    --type KEY,...    only these activity types, each with its sub-types ($GARMINSYNC_TYPES)
    --also FORMAT,... keep gpx, tcx and/or json beside each original ($GARMINSYNC_ALSO)
    --profile NAME    another Garmin account: its own DEST, session, settings
    --metrics-file PATH              write metrics for node_exporter ($GARMINSYNC_METRICS_FILE)
    -v / -q           more / less output;  --version, --help

Files:
    DEST/activity_<id>_<YYYY-MM-DD_HH-MM-SS>.<fit|gpx|tcx>   the originals (local start time);
        a multisport original of several files: ..._leg<n>of<m>.fit, one per leg
    DEST/gpx/, DEST/tcx/, DEST/json/   the exports --also keeps
    DEST/garminsync.json     the manifest: what is known of every activity, the last runs
    DEST/garminsync.html     the report page
    DEST/.garminsync.lock    held while a run works on DEST (one run per DEST)
    $GARMINTOKENS/garmin_tokens.json   the saved session (default ~/.local/state/garminsync)
    strava_tokens.json       beside it, the Strava authorisation (--strava-login)

Credentials (only needed to log in): GARMIN_EMAIL/GARMIN_PASSWORD, else ~/.netrc
(machine garmin.com, connect.garmin.com or sso.garmin.com), else systemd credentials
$CREDENTIALS_DIRECTORY/garmin_email and garmin_password.

Also read: GARMINSYNC_TIMEOUT (seconds a request may take, 120), GARMINSYNC_STRAVA (1: as
--strava), GARMINSYNC_PING_URL (healthchecks-style pings), GARMINSYNC_STALE_AFTER (3d).

Exit codes: 0 success; 1 some activities failed (the rest saved), a local write failed, or
no sync succeeded for GARMINSYNC_STALE_AFTER; 2 usage or bad input; 3 authentication needed
or refused; 75 temporary (rate limited, network down, another run holds DEST); 130/143
interrupted by SIGINT/SIGTERM.

See README.md for everyday use and troubleshooting, docs/design.md for how a run decides.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and {"--help", "-h"} & set(sys.argv[1:]):
    try:  # before any other import: --help costs little more than Python itself
        print(__doc__.strip(), flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations; imported where used, as runs need them
    import zipfile

__version__ = "0.2.0"

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
    if text.isprintable():  # no control character, no lone surrogate: the usual case
        return text
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in valid_text(text))


def valid_text(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate (half an emoji, say) becomes '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def setup_output(verbosity: int) -> None:
    """Pick the threshold and the line format for this process's stderr."""
    OUT.threshold = PRIORITIES[{-1: "warning", 0: "info"}.get(verbosity, "debug")]
    OUT.journal = bool(os.environ.get("JOURNAL_STREAM"))
    OUT.progress = sys.stderr.isatty() and not OUT.journal and verbosity >= 0


def route_library_logs() -> None:
    """Send what the client libraries log through emit(): only with -v, scrubbed. Called
    before they are imported (offline commands never import logging)."""
    import logging  # noqa: PLC0415

    class LogBridge(logging.Handler):
        """Send library log records (garminconnect, urllib3) through emit(), scrubbed."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = self.format(record)
            except Exception:  # a library's bad format string must not crash a sync
                text = str(record.msg)
            emit("debug", f"[{record.name}] {text}")

    root = logging.getLogger()
    root.handlers[:] = [LogBridge()]
    # garminconnect logs a traceback on every HTTP error: only with -v.
    root.setLevel(logging.DEBUG if OUT.threshold >= PRIORITIES["debug"] else logging.CRITICAL + 1)


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
# Settings: the command line and environment turned into one plain Settings value, and the
# three places a password may come from.

DEFAULT_DELAY = 2.0
DEFAULT_TIMEOUT = 120.0
NETRC_MACHINES = ("garmin.com", "connect.garmin.com", "sso.garmin.com")


def this_command() -> str:
    """'python garminsync.py', the installed command (which says its name in
    $GARMINSYNC_COMMAND), or the interpreter and path this copy was started with; with
    the profile this run uses."""
    command = "python garminsync.py"
    if os.environ.get("GARMINSYNC_COMMAND"):
        command = os.environ["GARMINSYNC_COMMAND"]
    elif sys.argv[0].endswith(".py") and sys.argv[0] != "garminsync.py":
        command = f"{sys.executable} {Path(sys.argv[0]).resolve()}"
    profile = os.environ.get("GARMINSYNC_PROFILE")
    return f"{command} --profile {profile}" if profile and "--profile" not in command else command


def run_hint(flag: str) -> str:
    """'run `python garminsync.py --login` once', naming the command as it was started."""
    return f"run `{this_command()} {flag}` once"


@dataclasses.dataclass
class Settings:
    action: str = "missing"  # missing | list | status | report | login | strava-*
    list_filter: str = "all"
    dest: Path = Path("~/fit")
    offline: bool = False
    since: dt.date | None = None
    until: dt.date | None = None
    delay: float = DEFAULT_DELAY
    timeout: float = DEFAULT_TIMEOUT
    limit: int | None = None
    retry_failed: bool = False
    dry_run: bool = False
    json: bool = False
    verbosity: int = 0
    strava: bool = False
    strava_since: dt.date | None = None
    stale_after: dt.timedelta = dt.timedelta(days=3)  # then temporary trouble fails the run
    metrics_file: Path | None = None
    ping_url: str | None = None
    types: tuple[str, ...] = ()  # Garmin typeKeys to keep (each with its sub-types); all if none
    also: tuple[str, ...] = ()  # formats to keep besides the original: gpx, tcx, json
    profile: str | None = None


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
    ("--status", "status", "counts by status, the last runs, the session"),
    ("--report", "report", "write DEST/garminsync.html from the manifest; print its path"),
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
    ("--retry-failed", dict(action="store_true", help="try the set-aside activities again")),
    ("--dry-run", dict(action="store_true", help="show what would be done; write nothing")),
    ("--json", dict(action="store_true", help="machine-readable --list and --status")),
    ("--strava", dict(action="store_true", help="with --missing: upload new files to Strava")),
    ("--strava-since", dict(type=iso_date, metavar="YYYY-MM-DD", help="Strava start date")),
    ("--metrics-file", dict(metavar="PATH", help="write metrics for node_exporter there")),
    ("--type", dict(dest="types", metavar="KEY,...", help="only these activity types")),
    ("--also", dict(metavar="FORMAT,...", help="keep gpx, tcx and/or json beside originals")),
    ("--profile", dict(metavar="NAME", help="a Garmin account of its own: DEST, session...")),
]
EXPORT_FORMATS = ("gpx", "tcx", "json")
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


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
        choices=("all", "missing", "downloaded", "types"),
        help="print activities: id, start, type, name, status (types: each type, its count)",
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
    profile = args.profile or os.environ.get("GARMINSYNC_PROFILE") or None
    if profile:
        if not PROFILE_NAME.fullmatch(profile):
            parser.error(f"profile {profile[:40]!r} is not a name of letters, digits, . _ or -")
        use_profile(profile)
    action = "list" if args.list_filter else (args.action or "missing")
    strava_env = env_switch("GARMINSYNC_STRAVA")
    also = word_list(args.also or os.environ.get("GARMINSYNC_ALSO", ""))
    problems = [
        (
            args.offline and action not in ("list", "status", "report"),
            "--offline goes with --list/--status",
        ),
        (args.json and action not in ("list", "status"), "--json goes with --list or --status"),
        (
            args.dry_run and action not in ("missing", "strava-only"),
            "--dry-run goes with --missing or --strava-only",
        ),
        (args.strava and action != "missing", "--strava goes with --missing"),
        (args.retry_failed and action != "missing", "--retry-failed goes with --missing"),
        (args.verbose and args.quiet, "-v and -q exclude each other"),
        (args.since and args.until and args.since > args.until, "--since is after --until"),
        (bool(set(also) - set(EXPORT_FORMATS)), "--also takes gpx, tcx and json"),
    ]
    for bad, message in problems:
        if bad:
            parser.error(message)
    delay = env_seconds("GARMINSYNC_DELAY", DEFAULT_DELAY) if args.delay is None else args.delay
    metrics_file = args.metrics_file or os.environ.get("GARMINSYNC_METRICS_FILE")
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
        retry_failed=args.retry_failed,
        dry_run=args.dry_run,
        json=args.json,
        verbosity=1 if args.verbose else (-1 if args.quiet else 0),
        strava=action == "strava-only" or (action == "missing" and (args.strava or strava_env)),
        strava_since=args.strava_since,
        stale_after=env_duration("GARMINSYNC_STALE_AFTER", dt.timedelta(days=3)),
        metrics_file=Path(metrics_file).expanduser() if metrics_file else None,
        ping_url=env_url("GARMINSYNC_PING_URL"),
        types=word_list(args.types or os.environ.get("GARMINSYNC_TYPES", "")),
        also=also,
        profile=profile,
    )


def word_list(text: str) -> tuple[str, ...]:
    """'running, cycling' as ('running', 'cycling')."""
    return tuple(word for word in (w.strip().lower() for w in text.split(",")) if word)


def use_profile(name: str) -> None:
    """A profile's defaults: its settings file ~/.config/garminsync/NAME.env, then DEST
    ~/fit/NAME and the session ~/.local/state/garminsync/NAME; what the environment or the
    command line says still wins."""
    settings_file = Path.home() / ".config" / "garminsync" / f"{name}.env"
    with contextlib.suppress(FileNotFoundError):
        for line in settings_file.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                os.environ.setdefault(key, value.strip().strip('"'))
    os.environ["GARMINSYNC_PROFILE"] = name  # for the hints this run gives
    os.environ.setdefault("GARMINSYNC_DEST", str(Path.home() / "fit" / name))
    os.environ.setdefault("GARMINTOKENS", str(Path.home() / ".local/state/garminsync" / name))


def env_duration(name: str, default: dt.timedelta) -> dt.timedelta:
    """A duration from the environment: a number of days, or a number with s, m, h or d."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", raw)
    if not match:
        raise Fatal(EXIT_USAGE, f"{name}={raw!r} is not a duration like 3d or 36h; fix or unset it")
    unit = {"s": "seconds", "m": "minutes", "h": "hours"}.get(match.group(2), "days")
    return dt.timedelta(**{unit: float(match.group(1))})


def env_url(name: str) -> str | None:
    """An http(s) URL from the environment, remembered as a secret (a ping URL lets anyone
    report for you)."""
    raw = os.environ.get(name, "").strip()
    add_secret(raw)
    if raw:
        import urllib.parse  # noqa: PLC0415

        try:
            parts = urllib.parse.urlsplit(raw)
            usable = parts.scheme in ("http", "https") and parts.hostname and not parts.username
            usable = usable and (parts.port or 0) >= 0  # reading .port checks it
        except ValueError:
            usable = False
        if not usable or re.search(r"\s", raw):
            raise Fatal(EXIT_USAGE, f"{name} is not an http(s) URL without a password; fix it")
    return raw or None


def token_file() -> Path:
    """The saved session (garminconnect 0.3's format): $GARMINTOKENS, a folder or a .json
    file; else ~/.local/state/garminsync/garmin_tokens.json, where the unit looks too."""
    if os.environ.get("GARMINTOKENS"):
        path = Path(os.environ["GARMINTOKENS"]).expanduser()
        return path if path.suffix == ".json" else path / "garmin_tokens.json"
    return Path.home() / ".local" / "state" / "garminsync" / "garmin_tokens.json"


def netrc_credentials(machines: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Login and password of the first of these machines in ~/.netrc (warns if loose)."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None, None
    if path.stat().st_mode & 0o077:
        emit("warning", f"{path} is readable by group or others; run `chmod 600 {path}`")
    try:
        import netrc  # noqa: PLC0415

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
def atomic_files(paths: list[Path], mode: int = 0o644) -> Iterator[list[IO[bytes]]]:
    """Temp files beside the paths that become those paths only if the block succeeds, all
    of them: each is fsynced before any is renamed, and no stop signal cuts the renames."""
    import tempfile  # noqa: PLC0415

    temps: list[str] = []
    outs: list[IO[bytes]] = []
    try:
        for path in paths:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
            temps.append(tmp)
            outs.append(os.fdopen(fd, "wb"))
            os.fchmod(fd, mode)
        yield outs
        for out in outs:
            out.flush()
            os.fsync(out.fileno())
            out.close()
        with stop_signals_held():
            for tmp, path in zip(temps, paths, strict=True):
                os.replace(tmp, path)
    except BaseException:
        for out in outs:
            out.close()
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for directory in {path.parent for path in paths}:
        fsync_dir(directory)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A temp file beside path that becomes path (fsynced) only if the block succeeds."""
    with atomic_files([path], mode) as (out,):
        yield out


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done; they are delivered after it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write bytes to path atomically with the given permissions."""
    with atomic_file(path, mode) as out:
        out.write(data)


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temp files a killed run left behind, in DEST and its export folders (only
    ours: the lock says no run is live)."""
    for folder in (directory, *(directory / fmt for fmt in ("gpx", "tcx", "json"))):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


# ---------------------------------------------------------------------------------------
# File names: the one contract between an activity and its files in DEST, read back when
# the manifest is rebuilt: activity_<id>_<local start>[_leg<n>of<m>].<ext>.

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ORIGINAL_EXTENSIONS = ("fit", "gpx", "tcx")
MAX_ACTIVITY_ID = 10**20 - 1  # 20 digits, as FILE_PATTERN reads them (Garmin's have 11)
MAX_LEGS = 99
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # as the manifest keeps it
FILE_PATTERN = re.compile(
    r"activity_([1-9][0-9]{0,19})_(\d{4}-\d{2}-\d{2})_(\d{2})-(\d{2})-(\d{2})"
    r"(?:_leg([1-9][0-9]?)of([1-9][0-9]?))?\.(fit|gpx|tcx)"
)


def activity_filename(record: dict, ext: str, leg: int = 0, legs: int = 0) -> str:
    """activity_<id>_<YYYY-MM-DD_HH-MM-SS>.<ext>, built from numbers only, never from names;
    leg n of a multisport original of m files adds _leg<n>of<m>."""
    start = dt.datetime.strptime(record["start_local"], TIME_FORMAT)
    part = f"_leg{leg}of{legs}" if legs else ""
    return f"activity_{int(record['id'])}_{start:%Y-%m-%d_%H-%M-%S}{part}.{ext}"


def leg_filename(first: str, leg: int, legs: int) -> str:
    """The name of leg n, from the name of leg 1."""
    return first.replace(f"_leg1of{legs}.", f"_leg{leg}of{legs}.")


def activity_files(entry: dict) -> list[str]:
    """The names of a downloaded activity's files: one, or one per leg."""
    if not entry["file"] or not entry["legs"]:
        return [entry["file"]] if entry["file"] else []
    return [leg_filename(entry["file"], n, entry["legs"]) for n in range(1, entry["legs"] + 1)]


def files_on_disk(dest: Path) -> dict[int, tuple[str, str, int]]:
    """Every activity file set in DEST: id -> (name, local start, legs). A multisport
    activity counts only when all its legs are there; its name is that of leg 1."""
    found: dict[int, tuple[str, str, int]] = {}
    legs_found: dict[tuple[int, str, str, int], set[int]] = {}
    try:
        with os.scandir(dest) as listing:
            files = {e.name: e for e in listing if e.name.startswith("activity_")}
    except FileNotFoundError:
        return found
    for name in sorted(files):  # of two files of one activity, the same one on every run
        match = FILE_PATTERN.fullmatch(name)
        if not match or not files[name].is_file(follow_symlinks=False):
            continue
        number, day, hh, mm, ss, leg_text, legs_text, _ = match.groups()
        start = f"{day} {hh}:{mm}:{ss}"
        if not is_local_time(start):  # not 2024-13-45: such a file is not ours
            continue
        activity_id, leg, legs = int(number), int(leg_text or 0), int(legs_text or 0)
        if not legs:
            found.setdefault(activity_id, (name, start, 0))
        elif 1 <= leg <= legs and legs >= 2:
            first = name.replace(f"_leg{leg}of{legs}.", f"_leg1of{legs}.")
            legs_found.setdefault((activity_id, first, start, legs), set()).add(leg)
    for (activity_id, first, start, legs), seen in legs_found.items():
        if len(seen) == legs:
            found.setdefault(activity_id, (first, start, legs))
    return found


def is_day(value: str) -> bool:
    """Whether a text is a real 'YYYY-MM-DD' date."""
    try:
        return bool(re.fullmatch(r"\d{4}-\d\d-\d\d", value)) and bool(dt.date.fromisoformat(value))
    except ValueError:
        return False


def is_local_time(value: Any) -> bool:
    """Whether a value is a real 'YYYY-MM-DD HH:MM:SS' time (not the 31st of February)."""
    if not isinstance(value, str) or not LOCAL_TIME.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def iso_now(offset: dt.timedelta = dt.timedelta()) -> str:
    """The current UTC time (plus an offset) as ISO 8601 seconds with a Z."""
    now = dt.datetime.now(dt.timezone.utc) + offset
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------
# Manifest: DEST/garminsync.json, what is known of every activity plus the last run. The
# files on disk are the ground truth; the manifest is rebuilt from them when it cannot be read.

MANIFEST_NAME = "garminsync.json"
MANIFEST_VERSION = 1
LOCK_NAME = ".garminsync.lock"
STATUSES = ("pending", "downloaded", "no_file", "failed", "set_aside")
FLUSH_SECONDS, FLUSH_CHANGES = 30.0, 1000  # bounded rewrites of a growing manifest

NUMBER = (int, float)
EXACT_TYPES = {
    str: {str},
    int: {int},
    bool: {bool},
    dict: {dict},
    list: {list},
    NUMBER: {int, float},
}
# The one definition of a manifest entry: every field, its JSON type and its default.
# Creating, checking, merging and writing an entry all go by this table.
ENTRY: dict[str, tuple[type, Any]] = {
    "id": (int, 0),
    "start_local": (str, ""),  # 'YYYY-MM-DD HH:MM:SS', the activity's local start
    "start_gmt": (str, None),
    "type": (str, "unknown"),  # Garmin's typeKey
    "name": (str, ""),
    "distance": (NUMBER, None),  # metres, as Garmin lists it
    "moving_s": (NUMBER, None),  # moving time in seconds, as Garmin lists it
    "manual": (bool, False),  # entered by hand: Garmin keeps no file
    "parent": (int, None),  # a multisport leg Garmin lists on its own: the parent's id
    "status": (str, "pending"),  # one of STATUSES
    "file": (str, None),  # the original's name in DEST; of a multisport one, leg 1's
    "legs": (int, 0),  # how many leg files a multisport original has; 0 for one file
    "size": (int, None),  # bytes, all legs together
    "downloaded_at": (str, None),
    "error": (str, None),  # why the last download failed
    "failures": (int, 0),  # runs in a row whose download of it failed
    "first_failure": (str, None),  # when the first of those runs was
    "gone_since": (str, None),  # when a full listing found it deleted on Garmin
    "exports": (dict, None),  # --also: {format: "saved" | "none" | "failed: why"}
    "strava": (dict, None),  # the upload of the file to Strava, as STRAVA_UPLOAD
    "strava_legs": (list, None),  # of a multisport original: one STRAVA_UPLOAD (or null) a leg
}
STRAVA_UPLOAD: dict[str, tuple[type, Any]] = {
    "status": (str, None),  # one of STRAVA_STATUSES
    "upload_id": (int, None),
    "activity_id": (int, None),
    "error": (str, None),
    "attempts": (int, 0),
    "at": (str, None),
}
STRAVA_STATUSES = ("uploaded", "duplicate", "failed", "processing")
# The manifest's other fields (besides "version" and "activities").
MANIFEST_FIELDS: dict[str, tuple[type, Any]] = {
    "last_run": (dict, None),
    "last_full_listing": (str, None),  # ISO UTC time of the last complete listing
    "count_offset": (int, 0),  # Garmin's count minus the activities its list shows
    "strava_since": (str, None),  # 'YYYY-MM-DD': uploads start with activities of this day
    "runs": (list, None),  # the last RUNS_KEPT runs, oldest first, as RunSummary.as_json
    "last_success": (str, None),  # ISO UTC time the last sync that ended with exit 0 ended
    # Garmin's table of activity types, kept for --type: {"fetched_at": ISO UTC time,
    # "parents": {typeKey: the parent's typeKey or null}}
    "activity_types": (dict, None),
}
RUNS_KEPT = 100
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # as iso_now() writes it


def clean_fields(value: dict, schema: dict, where: str, problems: list[str]) -> dict:
    """The schema's fields taken from value: each of its type, else its default (and noted).
    Parsed JSON has exact types, so a type test is a set lookup."""
    clean = {}
    for field, (kind, default) in schema.items():
        got = value.get(field)
        if got is None:
            got = default
        elif type(got) not in EXACT_TYPES[kind]:
            problems.append(f"{where}.{field}")
            got = default
        clean[field] = got
    return clean


ENTRY_TYPES = {  # a field's JSON types; null where its default is null
    field: EXACT_TYPES[kind] | ({type(None)} if default is None else set())
    for field, (kind, default) in ENTRY.items()
}
WELL_TYPED: set[tuple] = set()  # shapes of entries found well typed: checked once each


def well_typed(value: dict) -> bool:
    """Whether every field of a stored entry is an ENTRY field of its type. The entries of
    a manifest share a few shapes (fields and their types): each shape is checked once."""
    shape = (tuple(value), tuple(map(type, value.values())))
    if shape not in WELL_TYPED:
        if any(kind not in ENTRY_TYPES.get(f, ()) for f, kind in zip(*shape, strict=True)):
            return False
        WELL_TYPED.add(shape)
    return True


ENTRY_DEFAULTS = {field: default for field, (_, default) in ENTRY.items()}


def new_entry(record: dict) -> dict:
    """A manifest entry with every field, for an activity seen for the first time."""
    return {**ENTRY_DEFAULTS, **record}


# Fields a manifest file leaves out while they are null, 0 or false: reading fills them in.
# A big manifest is a third smaller, and as much faster to read.
UNSET_LEFT_OUT = {field for field, default in ENTRY_DEFAULTS.items() if default in (None, 0)}


def stored_entry(entry: dict) -> dict:
    """An entry as the manifest file holds it (without its unset fields)."""
    return {
        field: value
        for field, value in entry.items()
        if not (field in UNSET_LEFT_OUT and value == ENTRY_DEFAULTS[field])
    }


def clean_entry(key: str, value: Any, problems: list[str]) -> dict | None:
    """A manifest entry with every field of the right type, or None when it cannot be one
    (its id is not its key, its start is no time, its status unknown)."""
    if not isinstance(value, dict) or not (key.isascii() and key.isdigit()):
        return None
    if value.get("id") != int(key) or not is_local_time(value.get("start_local")):
        return None
    if value.get("status") not in STATUSES:
        return None
    if well_typed(value):
        entry = {**ENTRY_DEFAULTS, **value}
    else:
        entry = clean_fields(value, ENTRY, key, problems)
    if entry["legs"] and not (2 <= entry["legs"] <= MAX_LEGS and entry["file"]):
        problems.append(f"{key}.legs")
        entry["legs"] = 0
    if entry["exports"] and not all(isinstance(v, str) for v in entry["exports"].values()):
        problems.append(f"{key}.exports")
        entry["exports"] = None
    entry["strava"] = clean_upload(entry["strava"], f"{key}.strava", problems)
    if entry["strava_legs"] is not None:
        where = f"{key}.strava_legs"
        entry["strava_legs"] = [clean_upload(u, where, problems) for u in entry["strava_legs"]]
    return entry


def clean_upload(value: dict | None, where: str, problems: list[str]) -> dict | None:
    """A Strava upload state with the right types, or None when it has no known status."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("status") not in STRAVA_STATUSES:
        problems.append(where)
        return None
    return clean_fields(value, STRAVA_UPLOAD, where, problems)


def manifest_text(data: dict) -> Iterator[str]:
    """The manifest as JSON, one activity per line (easy to grep and diff), in pieces so a
    big manifest is never held twice in memory."""

    def one_line(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    yield '{\n "activities": {'
    separator = "\n"
    for key in sorted(data["activities"]):
        yield f"{separator}  {one_line(key)}: {one_line(stored_entry(data['activities'][key]))}"
        separator = ",\n"
    yield "\n }"
    for key in sorted(k for k in data if k != "activities"):
        yield f",\n {one_line(key)}: {one_line(data[key])}"
    yield "\n}\n"


def parse_manifest(text: str) -> dict:
    """The manifest's data from its JSON text, every field checked here: a field of the wrong
    type is reset, an entry that cannot be one dropped, each with a warning; ValueError when
    the text is no manifest at all."""
    data = json.loads(text)
    del text  # the parsed data is all that is needed: a big manifest is not held twice
    if not isinstance(data, dict) or not isinstance(data.get("activities"), dict):
        raise ValueError("not a garminsync manifest")
    version = data.get("version")
    if isinstance(version, int) and version > MANIFEST_VERSION:
        why = f"the manifest was written by a newer garminsync (version {version})"
        raise Fatal(EXIT_USAGE, f"{why}; upgrade garminsync.py to use this DEST")
    if "count_offset" not in data and type(data.get("unusable_listed")) is int:
        data["count_offset"] = data["unusable_listed"]  # what version 0.1 called it
    problems: list[str] = []
    activities, raw = {}, data.pop("activities")
    while raw:  # each parsed entry is let go as soon as its clean copy is made
        key, value = raw.popitem()
        entry = clean_entry(str(key), value, problems)
        if entry is None:
            emit("warning", f"manifest entry {str(key)[:40]!r} is malformed; dropped it")
        else:
            activities[key] = entry
    manifest = {"version": MANIFEST_VERSION, "activities": activities}
    manifest.update(clean_fields(data, MANIFEST_FIELDS, "manifest", problems))
    manifest["runs"] = [run for run in manifest["runs"] or [] if isinstance(run, dict)]
    for field, shape in (("last_success", ISO_TIME), ("last_full_listing", ISO_TIME)):
        if manifest[field] is not None and not shape.fullmatch(manifest[field]):
            problems.append(f"manifest.{field}")
            manifest[field] = None
    if manifest["strava_since"] is not None and not is_day(manifest["strava_since"]):
        problems.append("manifest.strava_since")
        manifest["strava_since"] = None
    types = manifest["activity_types"] or {}
    parents = types.get("parents")
    if types and not (
        isinstance(types.get("fetched_at"), str)
        and isinstance(parents, dict)
        and all(isinstance(p, str) or p is None for p in parents.values())
    ):
        problems.append("manifest.activity_types")
        manifest["activity_types"] = None
    if problems:
        shown = ", ".join(p[:60] for p in problems[:5]) + (", ..." if len(problems) > 5 else "")
        emit("warning", f"manifest fields of the wrong type were reset: {shown}")
    return manifest


class ManifestStore:
    """The manifest in memory, reconciled with DEST, flushed every few seconds or changes."""

    def __init__(self, dest: Path, writable: bool) -> None:
        self.dest = dest
        self.path = dest / MANIFEST_NAME
        self.writable = writable
        self.data: dict = {"version": MANIFEST_VERSION, "activities": {}}
        self.data.update({field: default for field, (_, default) in MANIFEST_FIELDS.items()})
        self.changes = 0  # since the last write
        self.edits = 0  # changes to the activities since the manifest was loaded
        self.types: set[str] | None = None  # the typeKeys --type covers; None: every type
        self.flushed_at = time.monotonic()

    @property
    def activities(self) -> dict[str, dict]:
        return self.data["activities"]

    def edited(self) -> None:
        """Note a change to the activities (for the next write, and for the report page)."""
        self.changes += 1
        self.edits += 1

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
        self.edited()

    def adopt_files_on_disk(self) -> None:
        """Files are the truth: adopt unknown ones, and forget files that vanished."""
        on_disk = files_on_disk(self.dest)
        for activity_id, (name, start, legs) in on_disk.items():
            entry = self.activities.get(str(activity_id))
            if entry is None:
                entry = new_entry({"id": activity_id, "start_local": start})
                self.activities[str(activity_id)] = entry
            if (entry["status"], entry["file"], entry["legs"]) != ("downloaded", name, legs):
                entry.update(status="downloaded", file=name, legs=legs, error=None, failures=0)
                entry["size"] = sum((self.dest / n).stat().st_size for n in activity_files(entry))
                entry["first_failure"] = None
                self.edited()
        for key, entry in self.activities.items():
            if entry["status"] == "downloaded" and int(key) not in on_disk:
                entry.update(status="pending", file=None, legs=0, size=None)
                entry["error"] = "the file vanished from DEST"
                self.edited()

    def is_listed_leg(self, entry: dict) -> bool:
        """A multisport leg Garmin lists on its own, whose parent's download saves it."""
        return entry["parent"] is not None and str(entry["parent"]) in self.activities

    def status_counts(self) -> dict[str, int]:
        """How many activities have each status (a multisport activity counts once)."""
        counts = dict.fromkeys(STATUSES, 0)
        for entry in self.activities.values():
            if not self.is_listed_leg(entry):
                counts[entry["status"]] += 1
        return counts

    def present_ids(self) -> set[int]:
        """Activities believed to be on Garmin (not marked gone)."""
        return {e["id"] for e in self.activities.values() if not e.get("gone_since")}

    def merge_listed(self, record: dict) -> int:
        """Merge one listed activity; returns 1 if it was not known to be on Garmin."""
        entry = self.activities.get(str(record["id"]))
        is_new = entry is None or bool(entry["gone_since"])
        if entry is None:
            entry = self.activities[str(record["id"])] = new_entry(record)
        changed = {k: v for k, v in record.items() if entry[k] != v}
        if changed or is_new:
            entry.update(changed, gone_since=None)
            if record["manual"] and entry["status"] == "pending":
                entry.update(status="no_file", error=MANUAL)
            self.edited()
        return int(is_new)

    def mark_gone(self, ids: set[int]) -> None:
        """Activities deleted on Garmin keep their files; they are only marked."""
        for activity_id in ids:
            entry = self.activities[str(activity_id)]
            if not entry.get("gone_since"):
                entry["gone_since"] = iso_now()
                self.edited()
        if ids:
            emit("info", f"{len(ids)} activities are gone from Garmin; their files stay")

    def record(self, activity_id: int, outcome: dict) -> None:
        """Store a download's outcome (flushed when due)."""
        self.activities[str(activity_id)].update(outcome)
        self.edited()
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
    """The activities with one of these statuses within --since/--until, newest first
    (a multisport leg listed on its own goes with its parent)."""
    chosen = [e for e in store.activities.values() if e["status"] in statuses]
    chosen = [e for e in chosen if in_range(e, settings) and not store.is_listed_leg(e)]
    chosen = [e for e in chosen if store.types is None or e["type"] in store.types]
    return sorted(chosen, key=lambda e: (e["start_local"], e["id"]), reverse=True)


def pending_activities(store: ManifestStore, settings: Settings) -> list[dict]:
    """Activities to download this run, newest first: not yet saved, still on Garmin, not set
    aside (unless --retry-failed)."""
    statuses = ("pending", "failed") + (("set_aside",) if settings.retry_failed else ())
    todo = newest_first(store, settings, statuses)
    return [e for e in todo if not e["gone_since"]][: settings.limit]


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
    """One run per DEST: an advisory flock on DEST/.garminsync.lock, or exit 75. The lock
    file says since when the run holds it, for --status to show."""
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
    with os.fdopen(fd, "r+b") as lock:  # closing it releases the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            since = run_in_progress(dest) or "a moment ago"
            raise Fatal(
                EXIT_TEMPFAIL,
                f"another garminsync run holds {path} (since {since}); try again later",
            )
        with contextlib.suppress(OSError):  # only for --status to show; a full disk is fine
            lock.truncate(0)
            lock.write(iso_now().encode())
            lock.flush()
        yield


def run_in_progress(dest: Path) -> str | None:
    """When a run holds DEST's lock: since when (ISO UTC time), else None."""
    try:
        with open(dest / LOCK_NAME, "rb") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                since = lock.read(40).decode("ascii", "replace").strip()
                return since if re.fullmatch(r"[0-9T:Z-]{20}", since) else "an unknown time"
    except OSError:
        pass
    return None


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


# ---------------------------------------------------------------------------------------
# Garmin session: the saved tokens, the one narrow seam to the client library (garminconnect,
# or a saved garth session), and the path of every request: pacing, one attempt, what its
# answer means, the retry policy, and saving tokens the library refreshed.


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
    """Whether a saved session with a token is there (for --status; never contacts Garmin)."""
    try:
        data = json.loads(token_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("di_token"), str)


@dataclasses.dataclass
class Seam:
    """The client library behind one interface: connectapi(path, ...) and download(path, ...).

    A failed request's HTTP answer is on the exception (garminconnect 0.3.3+: .response;
    garth: .error.response), else caught by a requests response hook (garminconnect 0.3.2)."""

    client: Any
    extra_kwargs: dict  # passed with every request (garminconnect: the timeout)
    dump_tokens: Callable[[], str | None]
    persist: Callable[[str], None]
    takes_hooks: bool = False  # whether requests' response hooks reach the HTTP layer


def garth_seam(home: str, timeout: float) -> Seam | None:
    """A saved garth (or garth-ng) session from $GARTH_HOME, when garth is importable."""
    route_library_logs()
    try:
        import garth  # noqa: PLC0415 (optional, and lazy so offline runs stay light)
    except ImportError:
        emit("debug", "GARTH_HOME is set but garth is not installed; using garminconnect")
        return None
    try:
        garth.resume(home)
    except Exception as err:
        raise Fatal(
            EXIT_AUTH, f"cannot resume the garth session in {home} ({err}); {run_hint('--login')}"
        )
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


def garminconnect_client() -> Any:
    """A new garminconnect Client, or exit 2 saying how to install the library."""
    route_library_logs()
    try:
        from garminconnect.client import Client  # noqa: PLC0415 (lazy: offline runs skip it)
    except ModuleNotFoundError:
        raise Fatal(
            EXIT_USAGE,
            "the garminconnect library is not installed: run "
            "`pip install 'garminconnect>=0.3.2,<0.4'` (in a venv), or `uv run garminsync.py`",
        ) from None
    return Client()


def keep_one_connection(client: Any) -> None:
    """One kept-alive HTTPS connection for the whole run spares Garmin a TLS handshake per
    activity. garminconnect 0.3.3+ keeps one (_api_session); 0.3.2 opens one per request
    through _fresh_api_session, which is pinned here only while that private method exists."""
    fresh = getattr(client, "_fresh_api_session", None)
    if callable(fresh) and not hasattr(client, "_api_session"):
        session = fresh()
        client._fresh_api_session = lambda: session


def garminconnect_seam(tokens: str, timeout: float) -> Seam:
    """garminconnect 0.3's own client, loaded from the saved token text (no login call)."""
    client = garminconnect_client()
    try:
        client.loads(tokens)
    except Exception:
        raise Fatal(
            EXIT_AUTH, f"the saved session in {token_file()} is unusable; {run_hint('--login')}"
        )
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
        if not email_addr:
            raise Fatal(EXIT_AUTH, "no email given; run --login again and type it")
        password = password or ask("Garmin Connect password: ", secret=True)
        add_secret(password)
    if not (email_addr and password):
        if interactive:
            raise Fatal(EXIT_AUTH, "no password given; run --login again and type it")
        raise Fatal(EXIT_AUTH, f"{problem} and no credentials; {run_hint('--login')}")
    client = garminconnect_client()
    from garminconnect.exceptions import (  # noqa: PLC0415
        GarminConnectAuthenticationError,
        GarminConnectTooManyRequestsError,
    )

    # Without a prompt, garminconnect raises an authentication error that names MFA.
    ask_mfa = (lambda: ask("MFA code: ")) if interactive else None
    emit("info", f"logging in to Garmin Connect as {email_addr}")
    try:
        client.login(email_addr, password, prompt_mfa=ask_mfa)
    except GarminConnectAuthenticationError as err:
        if "MFA" in str(err):
            raise Fatal(EXIT_AUTH, f"Garmin asks for a one-time code (MFA); {run_hint('--login')}")
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


RETRIES = 3  # tries of a request that failed for a passing reason (5xx, timeout, reset)
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


def shorten(text: str, limit: int = 120) -> str:
    """Text on one line, at most about `limit` characters, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."


def describe_failure(err: BaseException, status: int | None) -> str:
    """A short reason for a failed request, without the library's traceback."""
    if isinstance(err, Deadline):
        return "timed out"
    if status is not None and status >= 400:
        return f"HTTP {status}"
    if isinstance(err, ValueError) and "JSON" in err.__class__.__name__ + str(err):
        return "the answer is not JSON"
    text = plain_cause(str(err).split("\n")[0])
    name = err.__class__.__name__
    return f"{name}: {shorten(text)}" if text else name


def plain_cause(text: str) -> str:
    """What a connection error's long text comes down to ('Unable to connect to proxy:
    Connection refused', 'Temporary failure in name resolution'), else the text."""
    said = re.search(r"Caused by \w+\('([^']+)'", text)
    system = re.findall(r"\[Errno -?\d+\] ([^'\")\]>]+)", text)
    return ": ".join(filter(None, [said and said.group(1), system and system[-1].strip()])) or text


def http_answer_of(err: BaseException) -> Any:
    """The HTTP answer a library's error carries: garminconnect 0.3.3+ sets .response,
    garth keeps it in .error.response; None when there is none."""
    for holder in (err, getattr(err, "error", None)):
        answer = getattr(holder, "response", None)
        if isinstance(getattr(answer, "status_code", None), int):
            return answer
    return None


def failure_kind(status: int | None, download: bool) -> str:
    """What a failed request's HTTP status means: 'rate_limited' (wait as asked, then again),
    'session_refused' (exit 3), 'not_found', 'refused' (this request alone, no retry: Garmin
    will not export one activity, say), or 'passing' (5xx, timeouts, resets: retried)."""
    if status == 429:
        return "rate_limited"
    if status == 401 or (status == 403 and not download):
        return "session_refused"
    if status == 404:
        return "not_found"
    if status is not None and 400 <= status < 500:
        return "refused"
    return "passing"


@dataclasses.dataclass
class Attempt:
    """How one try of a request went: its result, or the error and the HTTP answer."""

    result: Any = None
    error: BaseException | None = None
    answer: Any = None

    @property
    def status(self) -> int | None:
        return getattr(self.answer, "status_code", None)


class GarminAPI:
    """GET requests to Garmin Connect through the seam, paced, time-bounded and retried."""

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
        return self._call(self.seam.client.connectapi, path, download=False, params=params)

    def get_bytes(self, path: str) -> bytes:
        return self._call(self.seam.client.download, path, download=True)

    def get_page(self, path: str, params: dict) -> bytes:
        """A JSON answer as bytes, for a caller that parses it piece by piece."""
        return self._call(self.seam.client.download, path, download=False, params=params)

    def _call(self, fn: Callable, path: str, download: bool, **kwargs: Any) -> Any:
        """The retry policy: 429s waited out, passing failures tried RETRIES times with a
        growing pause, a refused session stops the run, anything else fails this request."""
        failures = 0
        while True:
            self._pace()
            try:
                attempt = self._attempt(fn, path, **kwargs)
            except BaseException:  # stopped by a signal mid-request: keep refreshed tokens
                with contextlib.suppress(OSError):
                    self._save_refreshed_tokens()
                raise
            self._save_refreshed_tokens()
            if attempt.error is None:
                return attempt.result
            kind, status = failure_kind(attempt.status, download), attempt.status
            if kind == "rate_limited":
                self._wait_for_rate_limit(attempt.answer)
                continue
            if kind == "session_refused":
                raise Fatal(
                    EXIT_AUTH,
                    f"Garmin refused the saved session (HTTP {status}); {run_hint('--login')}",
                )
            reason = describe_failure(attempt.error, status)
            if kind == "not_found":
                raise NotFound(reason) from attempt.error
            if kind == "refused":
                raise RequestFailed(f"Garmin refused it ({reason})") from attempt.error
            failures += 1
            if failures >= RETRIES:
                raise RequestFailed(reason) from attempt.error
            backoff = max(self.delay, 0.5) * 2 ** (failures - 1)
            emit("debug", f"{path}: {reason}; retry in {backoff:g}s")
            time.sleep(backoff)

    def _pace(self) -> None:
        """Keep the fixed delay between the end of one request and the start of the next."""
        time.sleep(max(0.0, self.last_request + self.delay - time.monotonic()))

    def _attempt(self, fn: Callable, path: str, **kwargs: Any) -> Attempt:
        """Send the request once within its time budget; a failure is returned, not raised."""
        answers: list = []
        extra = dict(self.seam.extra_kwargs)
        if self.seam.takes_hooks:  # keeps every HTTP answer, the 401 before a refresh too
            extra["hooks"] = {"response": lambda r, *_, seen=answers, **__: seen.append(r)}
        self.requests += 1
        emit("debug", f"GET {path} {kwargs.get('params') or ''}".rstrip())
        try:
            with time_budget(self.timeout):
                result = fn(path, **extra, **kwargs)
        except (Exception, Deadline) as err:
            answer = http_answer_of(err)
            if answer is None and answers:
                answer = answers[-1]
            self.reached = self.reached or answer is not None
            return Attempt(error=err, answer=answer)
        finally:
            self.last_request = time.monotonic()
            answers.clear()  # the hook holds the list, each answer the hook: a cycle, which
            # would keep every page's body alive until a full garbage collection
        self.reached = True
        return Attempt(result=result)

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

    def _save_refreshed_tokens(self) -> None:
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
FIRST_PAGE = 100  # an incremental run's first page: new activities are almost always here
PAGE = 1000  # the most the list endpoint returns per request
FULL_LISTING_EVERY = dt.timedelta(days=7)


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
    activity_id = listed_id(raw.get("activityId"))
    start = parse_start(raw.get("startTimeLocal")) or parse_start(raw.get("startTimeGMT"))
    if start is None and isinstance(raw.get("beginTimestamp"), (int, float)):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            start = dt.datetime.fromtimestamp(raw["beginTimestamp"] / 1000, dt.timezone.utc)
            start = start.replace(tzinfo=None)
    if activity_id is None or start is None or start.year < 1970:
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
        "distance": listed_number(raw.get("distance")),
        "moving_s": listed_number(raw.get("movingDuration") or raw.get("duration")),
        "manual": raw.get("manualActivity") is True,
        "parent": listed_id(raw.get("parentId")),
    }


LISTED_FIELDS = (  # what activity_record reads of a listed activity
    "activityId", "startTimeLocal", "startTimeGMT", "beginTimestamp", "activityType",
    "activityName", "distance", "movingDuration", "duration", "manualActivity", "parentId",
)  # fmt: skip


def listed_fields(item: dict) -> dict:
    """A listed activity's fields that activity_record reads; other objects as they are."""
    if "activityId" not in item:
        return item
    return {key: item[key] for key in LISTED_FIELDS if key in item}


def listed_number(value: Any) -> float | None:
    """A distance or duration as Garmin lists it, when it is a real number from 0 up."""
    if isinstance(value, bool) or not isinstance(value, NUMBER):
        return None
    return round(float(value), 1) if 0 <= value < 1e12 else None


def listed_id(value: Any) -> int | None:
    """An activity id as Garmin lists it (a number, or plain ASCII digits), or None."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        value = int(value.strip())
    if type(value) is not int or not 0 < value <= MAX_ACTIVITY_ID:
        return None  # its file name could not be read back
    return value


def list_page(api: GarminAPI, start: int, limit: int, settings: Settings) -> tuple[list, int]:
    """One page of the newest-first list: (record, Garmin's entry) for each usable item, and
    how many items it held."""
    params: dict[str, Any] = {"start": start, "limit": limit}
    if settings.since:
        params["startDate"] = settings.since.isoformat()
    if settings.until:
        params["endDate"] = settings.until.isoformat()
    try:
        data = api.get_page(LIST_PATH, params=params)
    except RequestFailed as err:
        raise ListingFailed(f"the activity list failed: {err}") from err
    # Each entry is cut down to what the manifest keeps as soon as it is parsed (Garmin's
    # are about 3 KB each), unless --also json keeps them whole.
    keep = None if "json" in settings.also else listed_fields
    try:
        answer = json.loads(data, object_hook=keep)
    except ValueError as err:
        raise ListingFailed(f"the activity list is not JSON ({str(err)[:80]})") from err
    del data
    if not isinstance(answer, list):
        raise ListingFailed(f"the activity list answered with {type(answer).__name__}, not a list")
    records = [(activity_record(raw), raw) for raw in answer]
    records = [(record, raw) for record, raw in records if record is not None]
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


TYPES_PATH = "/activity-service/activity/activityTypes"
TYPES_REFRESH_EVERY = dt.timedelta(days=7)


def type_table(answer: Any) -> dict[str, str | None]:
    """Garmin's table of activity types as {typeKey: the parent's typeKey, or None}."""
    if not isinstance(answer, list):
        raise ListingFailed("the table of activity types is not a list")
    rows = [
        row
        for row in answer
        if isinstance(row, dict)
        and type(row.get("typeId")) is int
        and isinstance(row.get("typeKey"), str)
    ]
    key_of = {row["typeId"]: row["typeKey"] for row in rows}
    return {row["typeKey"]: key_of.get(row.get("parentTypeId")) for row in rows}


def refresh_type_table(api: GarminAPI, store: ManifestStore) -> None:
    """Fetch Garmin's table of types for --type: when there is none, or it is a week old."""
    kept = store.data["activity_types"] or {}
    if kept and kept["fetched_at"] >= iso_now(-TYPES_REFRESH_EVERY):
        return
    try:
        parents = type_table(api.get_json(TYPES_PATH))
    except (RequestFailed, ListingFailed) as err:
        if not kept:
            raise ListingFailed(f"the table of activity types failed: {err}") from err
        emit("warning", f"the table of activity types failed ({err}); using the one kept")
        return
    store.data["activity_types"] = {"fetched_at": iso_now(), "parents": parents}
    store.changes += 1


def covered_types(keys: tuple[str, ...], store: ManifestStore) -> set[str] | None:
    """Every typeKey the --type keys cover, each with its sub-types (running takes
    trail_running...); None for no filter. An unknown key stops the run with exit 2."""
    if not keys:
        return None
    parents = (store.data["activity_types"] or {}).get("parents") or {}
    if not parents:
        why = "Garmin's table of activity types is not known here yet"
        raise Fatal(EXIT_USAGE, f"{why}: run a sync with --type once, then this")
    known = set(parents) | {e["type"] for e in store.activities.values()}
    for key in keys:
        if key not in known:
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            hint = f"; the closest: {', '.join(close)}" if close else ""
            raise Fatal(EXIT_USAGE, f"unknown activity type {key!r}{hint} (see --list types)")
    covered = set(keys)
    while more := {key for key, parent in parents.items() if parent in covered} - covered:
        covered |= more
    return covered


def type_filter(settings: Settings, store: ManifestStore) -> set[str] | None:
    """The typeKeys this run keeps to (store.types, worked out once, from the kept table):
    every step or view that filters by type asks here; None: every type."""
    if settings.types and store.types is None:
        store.types = covered_types(settings.types, store)
    return store.types


@dataclasses.dataclass(frozen=True)
class ListingPlan:
    """What a run reads of Garmin's list: nothing, the newest part until `new` unknown
    activities turned up, or all of it."""

    read: str  # "nothing" | "newest" | "all"
    new: int = 0


def listing_plan(count: int, expected: int, last_full: str | None, full_due: str) -> ListingPlan:
    """The no-op rule. `expected` is what Garmin's count should be if nothing changed: the
    known activities plus the difference between count and list learned last time. A count
    that fell (deletions), no full listing yet or none since `full_due`: read it all."""
    if last_full is None or last_full < full_due or count < expected:
        return ListingPlan("all")
    if count == expected:
        return ListingPlan("nothing")
    return ListingPlan("newest", count - expected)


@dataclasses.dataclass
class Walk:
    """What one walk down the newest-first list found."""

    new: int = 0  # activities not known to be on Garmin before
    seen: set[int] = dataclasses.field(default_factory=set)
    deleted: set[int] = dataclasses.field(default_factory=set)  # known, passed, not seen
    complete: bool = False  # the whole list was read
    found_all: bool = False  # as many new activities turned up as the plan looked for


def walk_list(api: GarminAPI, store: ManifestStore, settings: Settings, plan: ListingPlan) -> Walk:
    """Page through the newest-first list, merging each record into the manifest. Reading
    the newest part stops once `plan.new` unknown activities turned up, plus one for every
    known activity the walk passed without seeing: it was deleted, and the count is net."""
    walk = Walk()
    known = sorted(
        ((e["start_local"], e["id"]) for e in store.activities.values() if not e["gone_since"]),
        reverse=True,
    )
    passed, start = 0, 0
    limit = FIRST_PAGE if plan.read == "newest" else PAGE
    while True:
        records, held = list_page(api, start, limit, settings)
        before = len(walk.seen)
        for record, raw in records:
            walk.seen.add(record["id"])
            walk.new += store.merge_listed(record)
            wanted = store.types is None or record["type"] in store.types
            if "json" in settings.also and store.writable and wanted:
                keep_json_summary(store, store.activities[str(record["id"])], raw)
        if records:
            oldest = min(record["start_local"] for record, _ in records)
            while passed < len(known) and known[passed][0] > oldest:
                passed += 1
            walk.deleted = {i for _, i in known[:passed] if i not in walk.seen}
        if held < limit:
            walk.complete = walk.found_all = True
            return walk
        if plan.read == "newest" and walk.new >= plan.new + len(walk.deleted):
            walk.found_all = True
            return walk
        if len(walk.seen) == before:
            emit("warning", "Garmin's list repeats itself; stopping the listing here")
            return walk
        start, limit = start + held, PAGE


def discover(api: GarminAPI, store: ManifestStore, settings: Settings) -> Walk:
    """Bring the manifest up to date with Garmin's list; returns what the walk found.
    docs/design.md tells the rule; listing_plan decides how much of the list to read."""
    if settings.since or settings.until:  # a date range: read it whole, learn nothing more
        return walk_list(api, store, settings, ListingPlan("all"))
    count = fetch_count(api)
    present = store.present_ids()
    expected = len(present) + store.data["count_offset"]
    full_due = iso_now(-FULL_LISTING_EVERY)
    plan = listing_plan(count, expected, store.data["last_full_listing"], full_due)
    emit("debug", f"Garmin counts {count} activities, {expected} expected: reading {plan.read}")
    if plan.read == "nothing":
        return Walk(found_all=True)
    walk = walk_list(api, store, settings, plan)
    if walk.complete and count - len(walk.seen) != store.data["count_offset"]:
        # A new difference between count and list: standing (a second count, one small
        # request, says the same), or the list moved while it was read (then read it again).
        again = fetch_count(api)
        if again != count:
            emit("debug", f"Garmin's count went from {count} to {again}; reading the list again")
            second = walk_list(api, store, settings, ListingPlan("all"))
            walk = dataclasses.replace(
                second, new=walk.new + second.new, seen=walk.seen | second.seen
            )
            count = again
    if walk.complete:
        store.mark_gone(present - walk.seen)
        store.data["last_full_listing"] = iso_now()
    elif walk.found_all:
        store.mark_gone(walk.deleted)
    if walk.found_all:
        store.data["count_offset"] = count - len(store.present_ids())
        store.changes += 1
    return walk


# ---------------------------------------------------------------------------------------
# Download: one activity's zip from Garmin to its file (or one file per leg of a multisport
# original) in DEST, checked (members, size, CRC, content) before it is renamed into place.

DOWNLOAD_PATH = "/download-service/files/activity/{id}"
MANUAL = "manual entry: Garmin keeps no file"
MAX_ORIGINAL_BYTES = 64 * 1024 * 1024  # the largest original (after unzipping) we accept


class BadArchive(Exception):
    """The download is not a zip holding one plausible activity file."""


def pick_originals(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """The activity files in Garmin's zip, in its order, with their extensions: one, or one
    per leg of a multisport activity. A member's name is never used as a path."""
    found = []
    for info in archive.infolist():
        ext = info.filename.rsplit(".", 1)[-1].lower() if "." in info.filename else ""
        if not info.is_dir() and ext in ORIGINAL_EXTENSIONS:
            found.append((info, ext))
    if not found:
        raise BadArchive("the zip holds no .fit, .gpx or .tcx file")
    if len(found) > MAX_LEGS:
        raise BadArchive(f"the zip holds {len(found)} activity files, more than {MAX_LEGS} legs")
    for info, _ in found:
        if info.file_size > MAX_ORIGINAL_BYTES:
            raise BadArchive(f"a file in the zip is {info.file_size} bytes, over the size cap")
    return found


def plausible_content(ext: str, head: bytes) -> bool:
    """A FIT file carries '.FIT' at bytes 8-11; GPX and TCX are XML."""
    if ext == "fit":
        return len(head) >= 12 and head[8:12] == b".FIT"
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def save_original(dest: Path, record: dict, data: bytes) -> tuple[str, int, int]:
    """Unzip the original into DEST, every file atomically and none unless all are good;
    returns (the name of its file, or of leg 1; total size; number of legs, 0 for one file)."""
    import io  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as err:
        kind = "an empty answer" if not data else f"not a zip ({len(data)} bytes)"
        raise BadArchive(f"Garmin sent {kind}") from err
    with archive:
        members = pick_originals(archive)
        legs = len(members) if len(members) > 1 else 0
        names = [
            activity_filename(record, ext, leg if legs else 0, legs)
            for leg, (_, ext) in enumerate(members, 1)
        ]
        with atomic_files([dest / name for name in names]) as outs:
            size = sum(
                copy_member(archive, info, ext, out)
                for (info, ext), out in zip(members, outs, strict=True)
            )
    return names[0], size, legs


def copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, ext: str, out: IO[bytes]) -> int:
    """Copy one member into an open file, checking its content, size cap and CRC."""
    import zipfile  # noqa: PLC0415
    import zlib  # noqa: PLC0415

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
    if record["manual"]:
        return {"status": "no_file", "error": MANUAL}
    try:
        data = api.get_bytes(DOWNLOAD_PATH.format(id=int(record["id"])))
    except NotFound:
        return {"status": "no_file", "error": "Garmin has no original file (HTTP 404)"}
    except RequestFailed as err:
        return {"status": "failed", "error": str(err)}
    try:
        name, size, legs = save_original(dest, record, data)
    except BadArchive as err:
        return {"status": "failed", "error": str(err)}
    return {
        "status": "downloaded",
        "file": name,
        "legs": legs,
        "size": size,
        "downloaded_at": iso_now(),
        "error": None,
        "failures": 0,
        "first_failure": None,
    }


EXPORT_PATHS = {
    "gpx": "/download-service/export/gpx/activity/{id}",
    "tcx": "/download-service/export/tcx/activity/{id}",
}
EXPORT_ROOTS = {"gpx": "gpx", "tcx": "TrainingCenterDatabase"}  # the documents' root elements


def export_name(entry: dict, fmt: str) -> str:
    """gpx/activity_<id>_<start>.gpx: a folder per format, so that an export never takes the
    name of an original that is itself a .gpx or .tcx, nor is taken for one."""
    return f"{fmt}/{activity_filename(entry, fmt)}"


def keep_export(store: ManifestStore, entry: dict, fmt: str, outcome: str) -> None:
    """Record what became of one export: 'saved', 'none' (Garmin has none) or 'failed: why'."""
    entry["exports"] = {**(entry["exports"] or {}), fmt: outcome}
    store.edited()


def keep_json_summary(store: ManifestStore, entry: dict, raw: dict) -> None:
    """--also json: the activity's entry as Garmin listed it, once, written atomically."""
    path = store.dest / export_name(entry, "json")
    if (entry["exports"] or {}).get("json") != "saved" or not path.exists():
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, json.dumps(raw, indent=1, ensure_ascii=False).encode("utf-8", "replace"))
        keep_export(store, entry, "json", "saved")


def check_export(fmt: str, data: bytes) -> None:
    """The export is the XML document it should be, not an HTML error page."""
    import xml.etree.ElementTree as ElementTree  # noqa: PLC0415

    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as err:
        raise BadArchive(f"the {fmt.upper()} export is not XML ({err})") from err
    if root.tag.rsplit("}", 1)[-1] != EXPORT_ROOTS[fmt]:
        raise BadArchive(f"the {fmt.upper()} export is a <{root.tag[:40]}> document")


def fetch_export(api: GarminAPI, dest: Path, entry: dict, fmt: str) -> str:
    """Keep one export (GPX or TCX) of one activity; returns what the manifest records."""
    path = dest / export_name(entry, fmt)
    if entry["manual"]:
        return "none"
    if path.exists():  # kept before the manifest was rebuilt
        return "saved"
    try:
        data = api.get_bytes(EXPORT_PATHS[fmt].format(id=int(entry["id"])))
        check_export(fmt, data)
    except NotFound:
        return "none"
    except (RequestFailed, BadArchive) as err:
        return f"failed: {err}"
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, data)
    return "saved"


def export_pending(api: GarminAPI, store: ManifestStore, settings: Settings) -> None:
    """The --also GPX and TCX exports still missing, newest first, for at most --limit
    activities a run; a failed export is retried next run and fails nothing else."""
    formats = [fmt for fmt in settings.also if fmt in EXPORT_PATHS]

    def missing(entry: dict) -> list[str]:
        done = entry["exports"] or {}
        kept = [
            f
            for f in formats
            if done.get(f) == "saved" and (store.dest / export_name(entry, f)).exists()
        ]
        return [f for f in formats if done.get(f) != "none" and f not in kept]

    todo = newest_first(store, settings, ("downloaded", "no_file"))
    todo = [entry for entry in todo if not entry["gone_since"] and missing(entry)]
    for entry in todo[: settings.limit]:
        for fmt in missing(entry):
            outcome = fetch_export(api, store.dest, entry, fmt)
            keep_export(store, entry, fmt, outcome)
            store.flush()
            if outcome.startswith("failed"):
                emit(
                    "warning",
                    f"{fmt.upper()} of {describe(entry)}: {outcome[8:]}; tried again next run",
                )


# ---------------------------------------------------------------------------------------
# The sync run: lock DEST, load the manifest, the Garmin step (discover, then download),
# the Strava step, and what a run records and says at the end.

SET_ASIDE_AFTER_RUNS = 5  # an activity that failed on this many runs in a row ...
SET_ASIDE_AFTER_DAYS = dt.timedelta(days=2)  # ... the first at least this long ago, is set aside


@dataclasses.dataclass
class RunSummary:
    """One sync run, as the manifest's run history keeps it."""

    action: str = "missing"
    started_at: str = dataclasses.field(default_factory=iso_now)
    began: float = dataclasses.field(default_factory=time.monotonic)
    result: str = "ok"  # ok | failed | rate limited | unreachable | stopped | interrupted
    exit_code: int = EXIT_OK
    error: str | None = None
    listed: int = 0  # activities Garmin's list showed this run
    new: int = 0
    downloaded: int = 0
    no_file: int = 0
    failed: int = 0
    set_aside: int = 0
    uploaded: int = 0  # to Strava
    requests: int = 0  # to Garmin

    def as_json(self) -> dict:
        fields = dataclasses.asdict(self)
        del fields["began"]
        fields["finished_at"] = iso_now()
        fields["duration_s"] = round(time.monotonic() - self.began, 1)
        return fields


def cmd_sync(settings: Settings) -> int:
    """--missing, --strava-only, --list, --status and --report: open DEST as the command
    needs it (dest_access), run the steps, then show the list, the status or the page."""
    check_dest_is_a_folder(settings.dest)
    running = settings.action in ("list", "status") and run_in_progress(settings.dest)
    if running and not settings.offline:
        emit("notice", "a sync is running on this DEST: showing the manifest as it last saved it")
    network, writes = dest_access(settings, bool(running))
    if writes:
        prepare_dest(settings.dest)
    elif settings.action == "report" and not settings.dest.is_dir():
        raise Fatal(EXIT_USAGE, f"{settings.dest} does not exist: nothing to report yet")
    elif not settings.dest.exists():
        emit("warning", f"{settings.dest} does not exist (yet): nothing has been saved there")
    with dest_lock(settings.dest) if writes else contextlib.nullcontext():
        store = ManifestStore(settings.dest, writable=writes)
        if writes:
            remove_stale_temp_files(settings.dest)
        store.load()
        store.adopt_files_on_disk()
        code = run_and_tell(settings, store) if network else EXIT_OK
    if settings.action == "list":
        show_list(settings, store)
    elif settings.action == "status":
        show_status(settings, store)
    elif settings.action == "report":
        try:
            print(write_report(store))
        except OSError as err:
            raise local_write_error(err, settings.dest) from err
    return code


def is_sync(settings: Settings, store: ManifestStore) -> bool:
    """Whether this run is a sync that the history records and pings tell of."""
    return settings.action in ("missing", "strava-only") and store.writable


def dest_access(settings: Settings, sync_running: bool) -> tuple[bool, bool]:
    """Whether a command asks Garmin (or Strava) and whether it writes DEST (and so holds its
    lock). Offline, --report, and --list/--status during a sync only read the manifest; a
    dry run asks but writes nothing."""
    reads_only = settings.offline or settings.action == "report" or sync_running
    return not reads_only, not (reads_only or settings.dry_run)


def run_and_tell(settings: Settings, store: ManifestStore) -> int:
    """Run the steps; a sync also pings at its start, and at its end says its closing line
    and tells what watches it (after_the_run), interrupted or not."""
    summary = RunSummary(action=settings.action)
    syncing = is_sync(settings, store)
    if syncing:
        ping(settings.ping_url, "/start", f"garminsync {settings.action} started")
    try:
        return run_steps(settings, store, summary)
    finally:  # further stop signals are ignored by now
        if syncing:
            closing = ""
            if settings.action == "missing" and summary.exit_code in (EXIT_OK, EXIT_PARTIAL):
                closing = report(summary, store)
            after_the_run(settings, store, summary, summary.error or closing)


def after_the_run(settings: Settings, store: ManifestStore, summary: RunSummary, line: str) -> None:
    """What watches the runs hears of this one: the report page (when the activities or the
    result changed), the metrics file and the closing ping. None of it changes the exit code."""
    runs = store.data["runs"] or []
    result_changed = len(runs) < 2 or runs[-2].get("result") != summary.result
    if store.edits or result_changed or not (store.dest / REPORT_NAME).exists():
        with contextlib.suppress(OSError):  # DEST's trouble was reported by the run itself
            write_report(store)
    if settings.metrics_file:
        try:
            write_metrics(settings.metrics_file, store, summary)
        except OSError as err:
            emit("warning", f"cannot write {settings.metrics_file}: {err.strerror}")
    suffix = "" if summary.exit_code == EXIT_OK else f"/{summary.exit_code}"
    ping(settings.ping_url, suffix, line)


SEVERITY = [EXIT_OK, EXIT_TEMPFAIL, EXIT_PARTIAL, EXIT_AUTH, EXIT_USAGE]  # mildest first


def run_steps(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """The Garmin step, then the Strava step (a failure of one does not stop the other);
    the manifest and the run's summary are saved whatever happens."""
    try:
        summary.exit_code = run_each_step(settings, store, summary)
        summary.result = result_word(summary.exit_code, summary.error)
        syncing = is_sync(settings, store)
        if (
            syncing
            and summary.exit_code == EXIT_TEMPFAIL
            and (since := trouble_since(store, settings))
        ):
            line = f"no successful sync since {since}; this run: {summary.error}"
            emit("error", line)
            summary.exit_code, summary.error = EXIT_PARTIAL, line
    except Interrupted as stop:
        summary.result, summary.error = "interrupted", signal.Signals(stop.signum).name
        summary.exit_code = EXIT_SIGNAL_BASE + stop.signum
        raise
    except Exception as err:
        summary.result, summary.error = "failed", f"unexpected {err.__class__.__name__}"
        summary.exit_code = EXIT_PARTIAL
        raise
    finally:
        save_run(settings, store, summary)
    return summary.exit_code


def run_each_step(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """Run the steps this action asks for; returns the most severe of their exit codes."""
    steps = [] if settings.action == "strava-only" else [garmin_step]
    steps += [strava_step] if settings.strava else []
    codes = [EXIT_OK]
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
    return max(codes, key=SEVERITY.index)


def result_word(code: int, error: str | None) -> str:
    """A run's result in a word or two, as the history and --status show it."""
    if code == EXIT_OK:
        return "ok"
    why = (error or "").lower()
    if code != EXIT_TEMPFAIL:
        return "failed"
    return (
        "rate limited" if "rate limit" in why else "unreachable" if "unreach" in why else "stopped"
    )


def trouble_since(store: ManifestStore, settings: Settings) -> str | None:
    """The last successful sync (or the first run on record), when it is older than
    GARMINSYNC_STALE_AFTER: temporary trouble has lasted too long to stay a warning."""
    runs = store.data["runs"] or [{}]
    since = store.data["last_success"] or runs[0].get("started_at")
    if not isinstance(since, str) or since >= iso_now(-settings.stale_after):
        return None
    return since


def save_run(settings: Settings, store: ManifestStore, summary: RunSummary) -> None:
    """Record the run in the manifest's history and write it; the files are safe if that
    fails."""
    if is_sync(settings, store):
        run = summary.as_json()
        store.data["last_run"] = run
        store.data["runs"] = [*(store.data["runs"] or [])[-(RUNS_KEPT - 1) :], run]
        if summary.exit_code == EXIT_OK and settings.action == "missing":  # Garmin's sync
            store.data["last_success"] = run["finished_at"]
    try:
        with stop_signals_held():  # a stop now would lose what the run did since the last write
            store.flush(force=True)
    except OSError as err:
        emit("error", f"could not save the manifest: {err.strerror}; the files are safe")


def garmin_step(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """Discover new activities, then download what is pending; returns the exit code."""
    api = GarminAPI(open_seam(settings), settings)
    try:
        if settings.types:
            try:
                refresh_type_table(api, store)
            except ListingFailed as err:  # without it no sub-type is known: download nothing
                raise Fatal(EXIT_TEMPFAIL, f"{err}; --type needs it, the next run tries again")
            type_filter(settings, store)  # an unknown key stops the run before any request more
        try:
            walk = discover(api, store, settings)
            summary.new, summary.listed = walk.new, len(walk.seen)
        except ListingFailed as err:
            if not api.reached:
                why = f"Garmin Connect is unreachable ({err})"
                raise Fatal(EXIT_TEMPFAIL, f"{why}; the next run tries again") from err
            emit("error", f"{err}; downloading only what was already known")
            summary.error = str(err)
        store.flush()
        if settings.action == "missing":
            download_pending(api, store, settings, summary)
            if not settings.dry_run:
                export_pending(api, store, settings)
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
        if outcome["status"] == "failed":
            outcome = counted_failure(entry, outcome)
        store.record(entry["id"], outcome)
        status = outcome["status"]
        summary.downloaded += status == "downloaded"
        summary.no_file += status == "no_file"
        summary.failed += status == "failed"
        summary.set_aside += status == "set_aside"
        if status == "downloaded":  # on a terminal the progress line already said it
            legs = f" ({outcome['legs']} legs)" if outcome["legs"] else ""
            emit("debug" if OUT.progress else "info", f"saved {outcome['file']}{legs}")
        elif status == "failed":
            emit(
                "warning",
                f"activity {describe(entry)}: {outcome['error']}; the next run tries again",
            )
        elif status == "set_aside":
            emit(
                "warning",
                f"activity {describe(entry)}: {outcome['error']}; set aside after "
                f"{outcome['failures']} failed runs since {outcome['first_failure'][:10]}: "
                "no longer tried (--retry-failed tries it again)",
            )
        else:
            emit("debug", f"activity {describe(entry)}: {outcome['error']}")
    clear_progress()


def counted_failure(entry: dict, outcome: dict) -> dict:
    """A failed download, counted: an activity that failed on SET_ASIDE_AFTER_RUNS runs in a
    row, the first SET_ASIDE_AFTER_DAYS ago or more, is set aside so it stops failing runs."""
    failures = entry["failures"] + 1
    first = entry["first_failure"] or iso_now()
    outcome = {**outcome, "failures": failures, "first_failure": first}
    if failures >= SET_ASIDE_AFTER_RUNS and first <= iso_now(-SET_ASIDE_AFTER_DAYS):
        outcome["status"] = "set_aside"
    return outcome


def report(summary: RunSummary, store: ManifestStore) -> str:
    """The closing line of a sync: this run's downloads, then what DEST holds in all."""
    counts = store.status_counts()
    aside = f", {counts['set_aside']} set aside" if counts["set_aside"] else ""
    line = (
        f"{summary.downloaded} downloaded, {summary.failed} failed; files in {store.dest}: "
        f"{counts['downloaded']}, activities without a file: {counts['no_file']}{aside}"
    )
    emit("info" if not summary.failed else "warning", line)
    return line


# ---------------------------------------------------------------------------------------
# Strava (optional): upload downloaded originals once each (each leg of a multisport one on
# its own), with OAuth tokens kept beside the Garmin session, Strava's rate limits read
# from every answer, duplicates not retried.

STRAVA = "https://www.strava.com"
STRAVA_REDIRECT = "http://localhost:9321/"
STRAVA_SCOPE = "activity:write,activity:read_all"
STRAVA_POLL_FOR = 60.0  # seconds to wait for Strava to process one upload, then next run
STRAVA_RESERVE = 5  # requests left unused in every rate-limit window
STRAVA_ATTEMPTS = 3  # uploads Strava rejected are tried this often in all
STRAVA_INACTIVE = (
    "Strava refused the API application (HTTP 403): since 2026-06-30 Strava API applications "
    "need a Strava subscription; check the application's status at "
    "https://www.strava.com/settings/api"
)
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
        raise Fatal(EXIT_AUTH, f"Strava's token answer is incomplete; {run_hint('--strava-login')}")
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
        raise Fatal(EXIT_AUTH, f"no usable Strava authorisation; {run_hint('--strava-login')}")


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
        import http.client  # noqa: PLC0415 (only Strava runs need these)
        import urllib.error  # noqa: PLC0415
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
                if err.code == 403:  # an inactive application, on every endpoint we use
                    raise Fatal(EXIT_AUTH, STRAVA_INACTIVE)
                if err.code == 401 or (err.code == 400 and not auth):
                    why = f"Strava refused the authorisation (HTTP {err.code})"
                    raise Fatal(EXIT_AUTH, f"{why}; {run_hint('--strava-login')}")
                if err.code == 429 or err.code >= 500:
                    why = f"Strava is {'rate limiting' if err.code == 429 else 'failing'}"
                    raise Fatal(EXIT_TEMPFAIL, f"{why} (HTTP {err.code}); the next run goes on")
                raise RequestFailed(f"Strava answered HTTP {err.code}")
            except ValueError as err:
                raise RequestFailed(f"Strava's answer is not JSON ({err})")
            except (OSError, http.client.HTTPException, Deadline) as err:  # cut off, say
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
        import urllib.parse  # noqa: PLC0415

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


def check_upload(api: StravaAPI, upload_id: int) -> dict | None:
    """Ask Strava once how an upload went; None while it is still processing."""
    api.ensure_room(reads=1)
    return strava_outcome(api.call("GET", f"/api/v3/uploads/{upload_id}"))


def strava_poll(api: StravaAPI, upload_id: Any) -> dict:
    """Poll an upload at most once a second for about a minute; 'processing' if still not done."""
    give_up = time.monotonic() + STRAVA_POLL_FOR
    while time.monotonic() < give_up:
        time.sleep(1.0)
        if outcome := check_upload(api, upload_id):
            return outcome
    return {"status": "processing", "upload_id": upload_id, "error": "still processing"}


def upload_state(entry: dict, leg: int) -> dict:
    """What the manifest keeps of the upload of an activity's file, or of one leg (from 1)."""
    if not leg:
        return entry["strava"] or {}
    states = entry["strava_legs"] or []
    return (states[leg - 1] if leg <= len(states) else None) or {}


def keep_upload_state(entry: dict, leg: int, state: dict) -> None:
    """Store the state of the upload of an activity's file, or of one leg (from 1)."""
    if not leg:
        entry["strava"] = state
        return
    states = list(entry["strava_legs"] or [])
    states += [None] * (leg - len(states))
    states[leg - 1] = state
    entry["strava_legs"] = states


def strava_upload(api: StravaAPI, entry: dict, leg: int, path: Path) -> dict:
    """Upload one original or leg (or look again at an upload still processing)."""
    previous = upload_state(entry, leg)
    if previous.get("status") == "processing" and previous.get("upload_id"):
        return check_upload(api, previous["upload_id"]) or strava_poll(api, previous["upload_id"])
    api.ensure_room(reads=3)
    external_id = f"garmin_{entry['id']}" + (f"_{leg}" if leg else "")
    fields = {"data_type": path.suffix[1:], "external_id": external_id}
    if entry["name"]:
        part = f" ({leg}/{entry['legs']})" if leg else ""
        fields["name"] = printable(entry["name"])[:190] + part
    body, content_type = multipart(fields, path.name, path.read_bytes())
    answer = api.call("POST", "/api/v3/uploads", body, content_type)
    if type(answer.get("id")) is not int:
        raise RequestFailed(f"Strava's upload answer has no id: {str(answer)[:120]}")
    if outcome := strava_outcome(answer):
        return outcome
    # Kept before polling: if a rate limit or an outage stops the run while Strava is still
    # processing, the next run looks at this upload instead of sending the file again.
    keep_upload_state(entry, leg, {**previous, "status": "processing", "upload_id": answer["id"]})
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


def strava_pending(store: ManifestStore, since: dt.date) -> list[tuple[dict, int, Path]]:
    """Downloaded originals (each leg on its own) on or after the start date not yet on
    Strava, oldest first: (entry, leg or 0, path)."""
    on_disk = files_on_disk(store.dest)
    todo = []
    for entry in store.activities.values():
        if entry["id"] not in on_disk or entry["start_local"][:10] < since.isoformat():
            continue
        if store.types is not None and entry["type"] not in store.types:
            continue
        first, _, legs = on_disk[entry["id"]]
        for leg in range(1, legs + 1) if legs else (0,):
            done = upload_state(entry, leg)
            retired = done.get("status") == "failed" and done.get("attempts", 0) >= STRAVA_ATTEMPTS
            if not retired and done.get("status") not in ("uploaded", "duplicate"):
                todo.append((entry, leg, store.dest / leg_filename(first, leg, legs)))
    return sorted(todo, key=lambda item: (item[0]["start_local"], item[0]["id"], item[1]))


def strava_step(settings: Settings, store: ManifestStore, summary: RunSummary) -> int:
    """Upload what is pending to Strava; a run with nothing to upload asks Strava nothing."""
    type_filter(settings, store)
    todo = strava_pending(store, strava_since(store, settings))
    if settings.dry_run:
        for _, _, path in todo:
            print(f"would upload to Strava {path.name}")
        return EXIT_OK
    if not todo:
        emit("debug", "nothing to upload to Strava")
        return EXIT_OK
    api = StravaAPI(settings.timeout, load_strava_tokens())
    failed = 0
    for number, (entry, leg, path) in enumerate(todo, 1):
        progress(f"[{number}/{len(todo)}] Strava upload {describe(entry)}")
        try:
            outcome = strava_upload(api, entry, leg, path)
        except RequestFailed as err:
            outcome = {"status": "failed", "error": str(err)}
        attempts = upload_state(entry, leg).get("attempts", 0) + 1
        keep_upload_state(entry, leg, {**outcome, "attempts": attempts, "at": iso_now()})
        store.changes += 1
        store.flush()
        status = outcome["status"]
        summary.uploaded += status == "uploaded"
        if status in ("failed", "processing"):
            failed += 1
            emit("warning", f"Strava upload of {path.name}: {outcome['error']}")
        else:
            emit("info", f"Strava: {path.name} {status} (activity {outcome['activity_id']})")
    clear_progress()
    return EXIT_PARTIAL if failed else EXIT_OK


def strava_login() -> int:
    """--strava-login: the OAuth code flow with a one-request server on 127.0.0.1:9321."""
    import urllib.parse  # noqa: PLC0415

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
    import traceback  # noqa: PLC0415

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
# Watching: the report page DEST/garminsync.html, the metrics file for node_exporter, and
# the pings a healthchecks.io-style service expects; all from the manifest and the run.

REPORT_NAME = "garminsync.html"
CHART_MONTHS = 36  # the activities-per-month chart covers the last three years
CHART_TYPES = 6  # types with a colour of their own; the rest are "other"
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#9c9c9c")
GARMIN_ACTIVITY = "https://connect.garmin.com/modern/activity/{id}"
PING_TIMEOUT = 10.0
PAGE_STYLE = """
:root{color-scheme:light dark;--fg:#1d1d1f;--bg:#fff;--mute:#6e6e73;--line:#d2d2d7}
@media (prefers-color-scheme:dark){:root{--fg:#f5f5f7;--bg:#1c1c1e;--mute:#a1a1a6;
--line:#3a3a3c}}
body{font:15px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg);
margin:0 auto;padding:1em;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}
td,th{padding:.25em .6em;border-bottom:1px solid var(--line);text-align:left;
white-space:nowrap}td.n,th.n{text-align:right}.mute{color:var(--mute)}
svg{width:100%;height:auto}svg text{fill:var(--mute);font-size:10px}
a{color:inherit}.key span{display:inline-block;margin-right:1em}
.key i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
"""


def esc(value: Any) -> str:
    """Text from Garmin or the manifest, safe inside HTML text and attributes."""
    import html  # noqa: PLC0415

    return html.escape(printable(str(value)), quote=True)


def hours(seconds: float) -> str:
    """A duration as h:mm."""
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def html_table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table from cells that are already HTML; columns in `numeric` align right."""
    cls = [' class="n"' if i in numeric else "" for i in range(len(head))]
    out = ["<div class=scroll><table><tr>"]
    out += [f"<th{cls[i]}>{cell}</th>" for i, cell in enumerate(head)] + ["</tr>"]
    for row in rows:
        out += ["<tr>"] + [f"<td{cls[i]}>{cell}</td>" for i, cell in enumerate(row)] + ["</tr>"]
    return "".join(out + ["</table></div>"])


def month_chart(entries: list[dict], this_month: str) -> str:
    """Activities per month over the last CHART_MONTHS months, stacked by type, as SVG."""
    year, month = int(this_month[:4]), int(this_month[5:7])
    months = []
    for back in range(CHART_MONTHS - 1, -1, -1):
        y, m = divmod(year * 12 + month - 1 - back, 12)
        months.append(f"{y:04d}-{m + 1:02d}")
    counts: dict[str, dict[str, int]] = {m: {} for m in months}
    totals: dict[str, int] = {}
    for e in entries:
        if e["start_local"][:7] in counts:
            totals[e["type"]] = totals.get(e["type"], 0) + 1
    shown = sorted(totals, key=lambda t: -totals[t])[:CHART_TYPES]
    for e in entries:
        if (month_counts := counts.get(e["start_local"][:7])) is not None:
            kind = e["type"] if e["type"] in shown else "other"
            month_counts[kind] = month_counts.get(kind, 0) + 1
    kinds = shown + (["other"] if len(totals) > len(shown) else [])
    top = max([sum(c.values()) for c in counts.values()] + [1])
    width, height, bar = 720, 160, 720 / CHART_MONTHS
    parts = [f'<svg viewBox="0 -4 {width} {height + 20}" role="img">']
    for i, m in enumerate(months):
        y = height
        for k, kind in enumerate(kinds):
            n = counts[m].get(kind, 0)
            if n:
                h = n / top * height
                y -= h
                parts.append(
                    f'<rect x="{i * bar + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                    f'height="{h:.1f}" fill="{COLOURS[k]}"><title>{m}: {n} {esc(kind)}'
                    "</title></rect>"
                )
        if m.endswith("-01"):
            parts.append(f'<text x="{i * bar + 1:.1f}" y="{height + 14}">{m[:4]}</text>')
    parts.append("</svg><p class=key>")
    parts += [f'<span><i style="background:{COLOURS[k]}"></i>{esc(kind)}</span>'
              for k, kind in enumerate(kinds)]  # fmt: skip
    return "".join(parts) + f"</p><p class=mute>highest month: {top} activities</p>"


def year_totals(entries: list[dict]) -> list[list[str]]:
    """Per year and type: count, distance and moving time, newest year first."""
    sums: dict[tuple[str, str], list[float]] = {}
    for e in entries:
        total = sums.setdefault((e["start_local"][:4], e["type"]), [0, 0.0, 0.0])
        total[0] += 1
        total[1] += e["distance"] or 0
        total[2] += e["moving_s"] or 0
    rows = sorted(sums.items(), key=lambda item: (item[0][0], item[1][0]), reverse=True)
    return [
        [year, esc(kind), str(n), f"{metres / 1000:.1f}", hours(seconds)]
        for (year, kind), (n, metres, seconds) in rows
    ]


def write_report(store: ManifestStore) -> Path:
    """Write DEST/garminsync.html atomically from the manifest: one self-contained page,
    no script, no request anywhere; returns its path."""
    import shutil  # noqa: PLC0415
    import urllib.parse  # noqa: PLC0415

    entries = [e for e in store.activities.values() if not store.is_listed_leg(e)]
    counts = store.status_counts()
    gone = sum(1 for e in entries if e["gone_since"])
    size = sum(e["size"] or 0 for e in entries if e["status"] == "downloaded")
    free = shutil.disk_usage(store.dest).free
    runs = list(reversed(store.data["runs"] or []))[:20]
    troubled = sorted(
        (e for e in entries if e["status"] in ("failed", "set_aside")),
        key=lambda e: e["start_local"],
        reverse=True,
    )
    newest = sorted(entries, key=lambda e: (e["start_local"], e["id"]), reverse=True)[:50]

    def activity_cells(e: dict) -> list[str]:
        link = f'<a href="{GARMIN_ACTIVITY.format(id=int(e["id"]))}">{int(e["id"])}</a>'
        file = (
            f'<a href="{urllib.parse.quote(e["file"])}">file</a>'
            if e["status"] == "downloaded" and e["file"]
            else esc(STATUS_WORDS.get(e["status"], e["status"]))
        )
        distance = f"{e['distance'] / 1000:.1f}" if e["distance"] else ""
        return [link, esc(e["start_local"][:16]), esc(e["type"]), esc(e["name"]), distance, file]

    status_rows = [[esc(STATUS_WORDS.get(k, k)), str(n)] for k, n in counts.items()]
    status_rows += [["gone from Garmin", str(gone)], ["size of the files", f"{size / 1e6:.1f} MB"]]
    status_rows += [["free space in DEST", f"{free / 1e9:.1f} GB"]]
    run_rows = [
        [esc(str(r.get("started_at", ""))[:16].replace("T", " ")), esc(r.get("result", "")),
         esc(r.get("downloaded", "")), esc(r.get("duration_s", "")), esc(r.get("error") or "")]
        for r in runs
    ]  # fmt: skip
    trouble_rows = [
        [esc(e["id"]), esc(e["start_local"][:10]), esc(STATUS_WORDS.get(e["status"], e["status"])),
         esc(e["error"] or ""), esc(e["failures"])]
        for e in troubled
    ]  # fmt: skip
    page = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>garminsync: {esc(store.dest)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>garminsync</h1><p class=mute>{esc(store.dest)}; written {esc(iso_now())}; "
        f"last success {esc(store.data['last_success'] or 'never')}</p>",
        "<h2>Activities</h2>",
        html_table(["status", "activities"], status_rows, {1}),
        "<h2>Activities per month</h2>",
        month_chart(entries, iso_now()[:7]),
        "<h2>Totals per year and type</h2>",
        html_table(
            ["year", "type", "activities", "km", "moving h"], year_totals(entries), {2, 3, 4}
        ),  # fmt: skip
        "<h2>Recent runs</h2>",
        html_table(["started (UTC)", "result", "downloaded", "seconds", "error"], run_rows, {2, 3}),
        "<h2>Failed or set aside</h2>",
        html_table(["id", "date", "status", "why", "failed runs"], trouble_rows, {4})
        if trouble_rows
        else "<p>None.</p>",
        "<h2>Newest activities</h2>",
        html_table(
            ["Garmin Connect", "start", "type", "name", "km", "file"],
            [activity_cells(e) for e in newest],
            {4},
        ),  # fmt: skip
        "</body></html>\n",
    ]
    path = store.dest / REPORT_NAME
    atomic_write(path, "\n".join(page).encode("utf-8", "replace"))
    return path


def write_metrics(path: Path, store: ManifestStore, summary: RunSummary) -> None:
    """Write node_exporter's textfile format atomically (temp file beside it, rename)."""

    def seconds_of(stamp: str | None) -> float:
        when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ") if stamp else None
        return when.replace(tzinfo=dt.timezone.utc).timestamp() if when else 0.0

    run = store.data["last_run"] or {}
    size = sum(e["size"] or 0 for e in store.activities.values() if e["status"] == "downloaded")
    gauges = [
        ("last_run_timestamp_seconds", "When the last sync ended.",
         seconds_of(run.get("finished_at"))),
        ("last_success_timestamp_seconds", "When the last sync that ended with exit 0 ended.",
         seconds_of(store.data["last_success"])),
        ("last_run_duration_seconds", "How long the last sync took.", run.get("duration_s", 0)),
        ("last_run_exit_code", "The exit code of the last sync.", summary.exit_code),
        ("last_run_downloaded", "Activities the last sync downloaded.", summary.downloaded),
        ("last_run_requests", "Requests the last sync made to Garmin.", summary.requests),
        ("dest_bytes", "Size of the activity files in DEST.", size),
    ]  # fmt: skip
    lines = []
    for name, text, value in gauges:
        lines += [f"# HELP garminsync_{name} {text}", f"# TYPE garminsync_{name} gauge"]
        value = float(value or 0)
        lines.append(f"garminsync_{name} {int(value) if value.is_integer() else value}")
    lines += ["# HELP garminsync_activities Activities in the manifest, by status.",
              "# TYPE garminsync_activities gauge"]  # fmt: skip
    for status, n in store.status_counts().items():
        lines.append(f'garminsync_activities{{status="{status}"}} {n}')
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def ping(url: str | None, suffix: str, body: str) -> None:
    """Tell a healthchecks.io-style service: <url>/start, <url> on success, <url>/<exit code>
    otherwise, with a line as the body. Short, tried twice; a failure is only a warning."""
    if not url:
        return
    import http.client  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    shown = "/".join(url.split("/")[:3]) + "/..."  # the URL itself is a secret
    request = urllib.request.Request(url.rstrip("/") + suffix, redact(body)[:2000].encode())
    for attempt in (1, 2):
        try:
            with time_budget(PING_TIMEOUT), urllib.request.urlopen(request, timeout=PING_TIMEOUT):
                return
        except (OSError, ValueError, http.client.HTTPException, Deadline) as err:
            if attempt == 2:
                why = describe_failure(err, getattr(err, "code", None))
                emit("warning", f"the ping to {shown} failed ({why}); the sync is not affected")


# ---------------------------------------------------------------------------------------
# Command line: what --list and --status print, --login, and main() with its exit codes.

STATUS_WORDS = {"set_aside": "set aside", "no_file": "no file"}


def display_width(text: str) -> int:
    """How many terminal columns text takes (a wide character, an emoji say, takes two)."""
    import unicodedata  # noqa: PLC0415

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def column(text: str, width: int) -> str:
    """Text cut and padded to exactly `width` terminal columns."""
    if text.isascii():
        return text[:width].ljust(width)
    while display_width(text) > width:
        text = text[:-1]
    return text + " " * (width - display_width(text))


def show_list(settings: Settings, store: ManifestStore) -> None:
    """Print the activities that match --list and --since/--until, with a header line."""
    wanted = {
        "all": STATUSES,
        "downloaded": ("downloaded",),
        "missing": ("pending", "failed", "set_aside"),
    }
    if settings.list_filter == "types":
        show_types(settings, store)
        return
    type_filter(settings, store)
    rows = newest_first(store, settings, wanted[settings.list_filter])
    if settings.json:
        json.dump(rows, sys.stdout, indent=1, ensure_ascii=False)
        print()
        return
    if not rows:
        emit(
            "notice",
            f"no {'' if settings.list_filter == 'all' else settings.list_filter + ' '}"
            f"activities in {store.dest}",
        )
        return
    print(f"{'id':>12}  {'start (local)':<19}  {'type':<20}  {'name':<40}  status")
    for e in rows:
        status = STATUS_WORDS.get(e["status"], e["status"])
        status += f" ({e['legs']} legs)" if e["legs"] else ""
        status += " (gone from Garmin)" if e["gone_since"] else ""
        print(
            f"{e['id']:>12}  {e['start_local']}  {column(e['type'], 20)}  "
            f"{column(printable(e['name']), 40)}  {status}"
        )


def show_types(settings: Settings, store: ManifestStore) -> None:
    """--list types: every activity type in the manifest, with its count, most first."""
    counts: dict[str, int] = {}
    for entry in store.activities.values():
        if not store.is_listed_leg(entry):
            counts[entry["type"]] = counts.get(entry["type"], 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if settings.json:
        json.dump(dict(ranked), sys.stdout, indent=1, ensure_ascii=False)
        print()
        return
    for type_key, n in ranked:
        print(f"{n:>7}  {printable(type_key)}")


def show_status(settings: Settings, store: ManifestStore) -> None:
    """Print counts by status, the last run, a run in progress, what is set aside, and the
    session."""
    counts = store.status_counts()
    shown = [e for e in store.activities.values() if not store.is_listed_leg(e)]
    gone = sum(1 for e in shown if e["gone_since"])
    set_aside = [e for e in newest_first(store, settings, ("set_aside",))]
    status = {
        "dest": str(store.dest),
        "counts": counts,
        "gone_from_garmin": gone,
        "set_aside": [{"id": e["id"], "error": e["error"]} for e in set_aside],
        "last_run": store.data["last_run"],
        "last_success": store.data["last_success"],
        "runs": store.data["runs"] or [],
        "running_since": run_in_progress(store.dest),
        "token_store": str(token_file()),
        "session_saved": session_saved(),
    }
    if settings.json:
        json.dump(status, sys.stdout, indent=1)
        print()
        return
    last = status["last_run"] or {}
    print(f"dest:       {store.dest}")
    print(
        f"activities: {len(shown)} known: "
        + ", ".join(f"{n} {STATUS_WORDS.get(word, word)}" for word, n in counts.items())
        + f"; {gone} gone from Garmin"
    )
    if status["running_since"]:
        print(f"running:    a sync has been running since {status['running_since']}")
    if last:
        print(
            f"last run:   {last.get('finished_at')}, {last.get('result')} (exit "
            f"{last.get('exit_code')}), {last.get('duration_s')} s, "
            f"{last.get('downloaded')} downloaded"
            + (f", error: {last['error']}" if last.get("error") else "")
        )
    else:
        print("last run:   none")
    if status["runs"]:
        print(f"history:    {runs_summary(status['runs'], store.data['last_success'])}")
    for e in set_aside:
        print(f"set aside:  {describe(e)}: {printable(e['error'] or '')}")
    print(f"session:    {'saved' if status['session_saved'] else 'none'} in {token_file()}")


def runs_summary(runs: list[dict], last_success: str | None) -> str:
    """'last 28 runs: 26 ok, 1 rate limited, 1 failed; last success 3 hours ago'."""
    words: dict[str, int] = {}
    for run in runs:
        words[str(run.get("result"))] = words.get(str(run.get("result")), 0) + 1
    counted = ", ".join(f"{n} {word}" for word, n in sorted(words.items(), key=lambda w: -w[1]))
    runs_word = "run" if len(runs) == 1 else f"{len(runs)} runs"
    return f"last {runs_word}: {counted}; last success {time_ago(last_success)}"


def time_ago(stamp: str | None) -> str:
    """'3 hours ago' (or minutes, or days) for an ISO UTC time; 'never' for none."""
    if not stamp:
        return "never"
    when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    minutes = max(0, int((dt.datetime.now(dt.timezone.utc) - when).total_seconds() // 60))
    for size, unit in ((1440, "day"), (60, "hour"), (1, "minute")):
        if minutes >= size or unit == "minute":
            n = minutes // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def cmd_login(settings: Settings) -> int:
    """--login: prompt for what is missing (and the MFA code), then save the session."""
    login(interactive=True)
    print(f"logged in; next: {this_command()} --missing --dest {settings.dest}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns the exit code."""
    settings = None
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
        code = cmd_sync(settings)
        sys.stdout.flush()  # here, so that a reader who closed the pipe is caught below
        return code
    except Fatal as err:
        emit(fatal_level(err), str(err))
        if settings and settings.action in ("missing", "strava-only") and not settings.dry_run:
            if err.code != EXIT_TEMPFAIL:  # DEST unusable, say: a sync that never began
                ping(settings.ping_url, f"/{err.code}", str(err))
        return err.code
    except Interrupted as stop:
        syncing = settings is not None and settings.action in ("missing", "strava-only")
        saved = "; the files saved so far are complete, the next run goes on" if syncing else ""
        emit("warning", f"stopped by {signal.Signals(stop.signum).name}{saved}")
        return EXIT_SIGNAL_BASE + stop.signum
    except BrokenPipeError:  # `--list | head`: the reader has all it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Exception, Deadline) as err:
        import traceback  # noqa: PLC0415

        emit("debug", traceback.format_exc())
        emit(
            "error",
            f"unexpected {err.__class__.__name__}: {' '.join(str(err).split())[:200]} "
            "(run with -v for details, and please report it)",
        )
        return EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
