"""What a process may do, as JSON: run inside garminsync.service's sandbox and outside it.

    python systemd_probe.py OUT HOME RUNTIME_DIR DEST STATE TMP_MARKER [FOLDER...]

test_systemd_live.py runs it as an ExecStartPre= of garminsync.service (same sandbox as the
script) and as a plain unit of the same user manager (the control), then compares. Each
check is "ok" when the operation worked, else the errno name, or a value read from /proc.
Each further FOLDER gets a write check of its own, under "write_folders" (a profile's
instance of garminsync@.service must not write in another profile's folders).
Standard library only; it must run with the installed venv's python.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

LIBC = ctypes.CDLL(None, use_errno=True)
# Syscalls glibc has no wrapper for: (keyctl, ioprio_get) by machine.
SYSCALLS = {"x86_64": (250, 252), "aarch64": (219, 31)}
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, IOPRIO_WHO_PROCESS = 0, -3, 1
READ_IMPLIES_EXEC, CLONE_NEWUSER = 0x0400000, 0x10000000


def attempt(action: Callable[[], object]) -> str:
    """'ok', or the errno name of the OSError the action raised."""
    try:
        action()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err))
    return "ok"


def libc_call(result: int) -> int:
    """Turn a libc -1 return into an OSError."""
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def create_and_remove(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    path.unlink()


def open_for_append(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))


def setuid_bit(directory: Path) -> None:
    path = directory / ".probe-suid"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        os.chmod(path, 0o4700)
    finally:
        path.unlink()


def writable_exec_memory() -> None:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()


def change_personality() -> None:
    old = libc_call(LIBC.personality(0xFFFFFFFF))
    libc_call(LIBC.personality(old | READ_IMPLIES_EXEC))
    LIBC.personality(old)


def read_clock_state() -> None:
    libc_call(LIBC.adjtimex(ctypes.create_string_buffer(512)))  # modes=0: only reads


def new_user_namespace() -> None:
    pid = os.fork()
    if pid == 0:  # in a child, so the probe itself stays where it is
        os._exit(0 if LIBC.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno())
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, os.strerror(code))


def socket_of(family: int, kind: int) -> None:
    socket.socket(family, kind).close()


def status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("NoNewPrivs", "Seccomp", "CapBnd", "Umask"):
            fields[key] = value.strip()
    return fields


def read_only(path: str) -> bool | str:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err))


def block_devices() -> int:
    count = 0
    for name in os.listdir("/dev"):
        try:
            count += stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode)
        except OSError:
            pass
    return count


def probe(
    home: Path, runtime_dir: Path, dest: Path, state: Path, marker: str, folders: list[str]
) -> dict:
    keyctl, ioprio_get = SYSCALLS.get(platform.machine(), (None, None))
    result: dict = {
        "write": {
            "dest": attempt(lambda: create_and_remove(dest / ".probe")),
            "token_store": attempt(lambda: create_and_remove(state / ".probe")),
            "home": attempt(lambda: create_and_remove(home / ".probe")),
            "units": attempt(lambda: create_and_remove(home / ".config/systemd/user/.probe")),
            "app": attempt(lambda: create_and_remove(home / ".local/share/garminsync/.probe")),
            "env_file": attempt(lambda: open_for_append(home / ".config/garminsync/env")),
            "run_user": attempt(lambda: create_and_remove(runtime_dir / ".probe")),
            "run_lock": attempt(lambda: create_and_remove(Path("/run/lock/.probe"))),
            "tmp": attempt(lambda: create_and_remove(Path("/tmp/.probe"))),  # noqa: S108
        },
        "write_folders": {
            folder: attempt(lambda f=folder: create_and_remove(Path(f) / ".probe"))
            for folder in folders
        },
        "tmp_marker_visible": os.path.exists(marker),
        "setuid_bit": attempt(lambda: setuid_bit(dest)),
        "status": status_fields(),
        "uid_map": Path("/proc/self/uid_map").read_text().split(),
        "ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in ("user", "mnt", "uts")},
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "wx_memory": attempt(writable_exec_memory),
        "personality": attempt(change_personality),
        "adjtimex": attempt(read_clock_state),
        "setaffinity": attempt(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        "userns": attempt(new_user_namespace),
        "af_inet": attempt(lambda: socket_of(socket.AF_INET, socket.SOCK_STREAM)),
        "af_inet6": attempt(lambda: socket_of(socket.AF_INET6, socket.SOCK_STREAM)),
        "af_unix": attempt(lambda: socket_of(socket.AF_UNIX, socket.SOCK_STREAM)),
        "af_netlink": attempt(lambda: socket_of(socket.AF_NETLINK, socket.SOCK_RAW)),
        "proc_sys_read_only": read_only("/proc/sys"),
        "cgroup_read_only": read_only("/sys/fs/cgroup"),
        "block_devices": block_devices(),
        "kmsg_visible": os.path.exists("/dev/kmsg"),
    }
    if keyctl is not None:
        get_id = LIBC.syscall
        get_id.restype = ctypes.c_long
        result["session_keyring"] = get_id(
            keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0
        )
        result["io_class"] = LIBC.syscall(ioprio_get, IOPRIO_WHO_PROCESS, 0) >> 13
    return result


def main() -> int:
    out, home, runtime_dir, dest, state, marker = sys.argv[1:7]
    data = probe(Path(home), Path(runtime_dir), Path(dest), Path(state), marker, sys.argv[7:])
    Path(out).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
