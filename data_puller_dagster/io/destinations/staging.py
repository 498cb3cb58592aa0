"""Staging tokens and the sweep of crash debris, shared by the file stores (Parquet, CSV, JSONL).

Crash debris: a writer killed mid-write (kill -9, OOM, a lost node) leaves its temp files behind. Each
write of a file store therefore first sweeps the directories it writes (every partition directory of its slice; the
table directory when it writes the schema) of *stale* temp files, so debris never outlives the next
write of its partition and repeated crashes cannot accumulate files. A temp file is stale when
  * its token names a writer on this machine and pid namespace whose pid is gone, a zombie, or now
    belongs to a younger process (pid reuse): removed at once; or
  * its token is older than STALE_TEMP_AFTER (6 h): the only test for writers on other machines
    sharing the lake (an object store, NFS), whose pids cannot be checked from here.
A live writer's temp file (another process, another thread of this one, another machine within the
age threshold) is never removed, so concurrent writers keep working. Tokens are
`<namespace>-<pid>-<process start ticks>-<unix seconds>-<random>`; names from before tokens named their
writer (12 hex digits) are judged by their mtime against the same threshold. Nothing else can pile up:
a rename replaces the one `part-0.parquet` of a partition (no generations), an object store's
copy-then-delete move leaves at worst the temp file (swept like any other), and the directory created
for a new partition is reused by its next write (at most one per partition, however many crashes).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

# A temp file older than this is debris whoever wrote it. Generous on purpose: it only decides for
# writers whose liveness cannot be checked (other machines), and a day file is staged in milliseconds.
STALE_TEMP_AFTER = 6 * 3600.0

_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<token>[^.]+)\.tmp$")
_TOKEN = re.compile(r"^(?P<ns>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-(?P<t>\d+)-[0-9a-f]{6}$")
_LEGACY_TOKEN = re.compile(r"^[0-9a-f]{12}$")


@functools.cache
def _namespace() -> str:
    """Who can judge a pid: this machine's boot, pid namespace and hostname, hashed to 8 hex digits.

    Two writers with the same namespace see the same pids, so a missing pid really is a dead writer.
    Without /proc (not Linux) the hostname alone decides, and `os.kill(pid, 0)` checks the pid.
    """
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]  # noqa: S324 - an id, not security


@functools.cache
def _procfs() -> bool:
    """Whether /proc describes this process's pid namespace, so other pids can be looked up there."""
    try:
        return int(Path("/proc/self/stat").read_text().split(" ", 1)[0]) == os.getpid()
    except (OSError, ValueError):
        return False


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of `pid` from /proc; None when there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


_OWN_START: dict[int, int] = {}


def _own_start() -> int:
    """This process's start ticks (0 without /proc), cached per pid so a forked child gets its own."""
    pid = os.getpid()
    if pid not in _OWN_START:
        stat = _proc_stat(pid) if _procfs() else None
        _OWN_START[pid] = stat[1] if stat else 0
    return _OWN_START[pid]


def staging_token() -> str:
    """A temp-file token naming its writer: `<namespace>-<pid>-<start ticks>-<unix s>-<random>`."""
    return f"{_namespace()}-{os.getpid()}-{_own_start()}-{int(time.time())}-{secrets.token_hex(3)}"


def _alive(pid: int, start: int) -> bool:
    """Whether the writer (pid, start ticks) of this namespace may still be running. Unsure: True."""
    if pid <= 0:
        return False
    if pid == os.getpid() and start == _own_start():
        return True  # this process: another thread's write in flight
    if _procfs():
        try:
            stat = _proc_stat(pid)
        except OSError:  # /proc mounted with hidepid: cannot tell
            return True
        if stat is None or stat[0] in ("Z", "X"):  # gone, or killed and not yet reaped by its parent
            return False
        return start == 0 or stat[1] == start  # another start time: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(name: str, stem_ok: Callable[[str], bool], mtime: float | None) -> bool:
    """Whether `name` is a temp file of ours (`.<stem>.<token>.tmp`, stem accepted by `stem_ok`) whose
    writer is dead or which is older than STALE_TEMP_AFTER. Any other name is never stale."""
    m = _TEMP_NAME.match(name)
    if m is None or not stem_ok(m["stem"]):
        return False
    now = time.time()
    token = _TOKEN.match(m["token"])
    if token is not None:
        if now - int(token["t"]) > STALE_TEMP_AFTER:
            return True
        return token["ns"] == _namespace() and not _alive(int(token["pid"]), int(token["start"]))
    if _LEGACY_TOKEN.match(m["token"]):
        return mtime is not None and now - mtime > STALE_TEMP_AFTER
    return False


def sweep_local(directory: Path, stem_ok: Callable[[str], bool]) -> int:
    """Delete the stale temp files directly in a local `directory`; returns how many were deleted."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            # Only a temp-file name needs its mtime (a stat): other files are never stale.
            if (
                _TEMP_NAME.match(entry.name) is None
                or not entry.is_file(follow_symlinks=False)
                or not is_stale_temp(entry.name, stem_ok, entry.stat(follow_symlinks=False).st_mtime)
            ):
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # renamed by its writer or swept by another one meanwhile
            continue
        removed += 1
    return removed
