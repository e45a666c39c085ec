"""One build per output folder: a lock with a lease and a heartbeat.

Contract. `BuildLock.acquire(folder)` takes `OUTPUT/manifests/.build.lock` for this process or
raises `OutputLocked` (a SetupError: message, exit code 2, no traceback) naming the holder: its
host, pid and start time. A build takes it before it reads the recorded plan and gives it back
when it ends, however it ends (`release`, also through `with`). Read-only commands (`mfhq
verify`, `mfhq report`) never take it, so they are never blocked.

The lock file records who holds it (`LockHolder`: host, pid, when it started, a random token,
the lease). While held, a daemon thread renews it every `lease_s / 4` s by touching the file
(no bytes written, so it renews on a full disk too). A lock is stale, and the next build takes
it over, when
  - its lease expired: not renewed for the `lease_s` it records (on the taker's clock against
    the file's mtime: hosts that share an output need clocks within a fraction of the lease), or
  - its holder ran on this machine (same host, boot and pid namespace) and that process is gone
    (no such pid, or a pid reused by a process that started later): a build that was SIGKILLed
    or lost its power is replaced at once instead of after its lease.
So a killed build cannot leave the folder locked for longer than its lease. A holder whose lock
was taken over (it was frozen for a whole lease) notices at its next renewal; `check()` then
raises `LockLost` and the build stops instead of writing beside the new holder.

The lease is `DEFAULT_LEASE_S` unless the environment sets `MFHQ_BUILD_LOCK_LEASE_S` (tests use
a short one); the holder records its own lease, so takers judge it by the holder's setting.

Storage. Everything the lock does goes through five operations of a backend,
`create(holder)`, `read()`, `renew(token)`, `replace(stale_token, holder)`, `delete(token)`;
`LocalLockFile` implements them on a local or shared POSIX filesystem (exclusive create;
touch; rename-aside takeover). An object-store variant (an S3 `--output`) is a second backend
with the same lease and heartbeat semantics, without rename: `create` is a PutObject with
`If-None-Match: *` (412: held), `read` a GetObject returning the holder and the object's ETag
and age (LastModified, the store's clock), `renew` a PutObject of the same body with `If-Match:
<our ETag>` (412: lost), `replace` a PutObject with `If-Match: <stale ETag>` (only one taker
wins, which is the compare-and-swap the local rename dance approximates), `delete` a
DeleteObject with `If-Match`. The same-machine liveness shortcut does not apply there (a
different host); takeover waits for the lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from curation.errors import SetupError

LOCK_FILE = ".build.lock"
LEASE_ENV = "MFHQ_BUILD_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0
ACQUIRE_ATTEMPTS = 5            # create / read / take over rounds before giving up (contention)


class OutputLocked(SetupError):
    """Another live build holds the output folder; the message names it and says what to do."""


class LockLost(SetupError):
    """This build's lock was taken over (it stalled for longer than its lease)."""


def lease_seconds() -> float:
    """The lease this process takes: MFHQ_BUILD_LOCK_LEASE_S, else DEFAULT_LEASE_S."""
    value = os.environ.get(LEASE_ENV)
    if not value:
        return DEFAULT_LEASE_S
    try:
        lease = float(value)
    except ValueError:
        raise SetupError(f"{LEASE_ENV}={value!r} is not a number of seconds") from None
    if not lease > 0:
        raise SetupError(f"{LEASE_ENV}={value!r} must be above 0 seconds")
    return lease


def _pid_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), None when there is none or it
    is dead (a zombie its parent has not reaped yet runs no heartbeat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _machine() -> tuple[str, str]:
    """(boot id, pid namespace): a pid names the same process only where both are equal."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return boot, ns


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: written once by the holder, read by anyone refused or taking over."""

    host: str
    pid: int
    started_at: float           # time.time() when the lock was taken
    token: str                  # random: tells this holding apart from any other
    lease_s: float
    pid_start: str | None = None
    boot_id: str = ""
    pid_ns: str = ""
    command: str = ""

    @classmethod
    def me(cls, lease_s: float) -> LockHolder:
        boot, ns = _machine()
        return cls(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex, lease_s,
                   _pid_start(os.getpid()), boot, ns, " ".join(sys.argv)[:500])

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started_at).astimezone().isoformat(
            timespec="seconds")
        return f"pid {self.pid} on host {self.host}, started {started}"

    def is_gone(self) -> bool:
        """True when this holder ran on this machine and its process no longer runs; False when
        it runs or when this machine cannot tell (another host, container or boot)."""
        if (self.host, (self.boot_id, self.pid_ns)) != (socket.gethostname(), _machine()):
            return False
        if not self.boot_id or not self.pid_ns or self.pid_start is None:
            return False
        return _pid_start(self.pid) != self.pid_start


@dataclass(frozen=True)
class LockState:
    """A lock as read: its holder (None while a creator is still writing it) and its age, the
    seconds since it was created or last renewed."""

    holder: LockHolder | None
    age_s: float


class LocalLockFile:
    """The lock as a file on a POSIX filesystem (see the module docstring for the operations)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def create(self, holder: LockHolder) -> bool:
        """Create the lock holding `holder`; False when a lock exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, holder.to_bytes())
            os.fsync(fd)
        except BaseException:
            # A lock we could not write (a full disk) must not block the next build.
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def read(self) -> LockState | None:
        """The lock as it is now, None when there is none."""
        try:
            data = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return LockState(LockHolder.from_bytes(data), max(0.0, time.time() - mtime))

    def renew(self, token: str) -> bool:
        """Touch the lock if it still holds `token`; False when it does not (lost)."""
        state = self.read()
        if state is None or state.holder is None or state.holder.token != token:
            return False
        os.utime(self.path, None)
        return True

    def replace(self, stale_token: str | None, holder: LockHolder) -> bool:
        """Take over the lock that holds `stale_token` (None: one whose holder is unreadable);
        False when it changed meanwhile (another taker won)."""
        aside = self.path.with_name(f"{LOCK_FILE}.{holder.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = LockHolder.from_bytes(aside.read_bytes())
        if (moved.token if moved else None) != stale_token:
            # Another taker replaced the stale lock between our read and our rename: put its
            # fresh lock back (unless a third one got in) and let the caller read again.
            if not self.path.exists():
                os.rename(aside, self.path)
            else:
                aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return self.create(holder)

    def delete(self, token: str) -> None:
        """Remove the lock if it still holds `token`."""
        state = self.read()
        if state is not None and state.holder is not None and state.holder.token == token:
            self.path.unlink(missing_ok=True)


class StoreLockObject:
    """The lock as an S3 object, by conditional writes (see the module docstring): create is a
    PutObject with If-None-Match, every later write a PutObject or DeleteObject with If-Match
    on the ETag just read. Each write carries a fresh beat number, so every renewal changes the
    ETag and a taker's compare-and-swap on a stale ETag fails after a renewal. The age is the
    store's: its Date header less the object's LastModified."""

    def __init__(self, url: str):
        from mfhq_contract import storage

        self.url = url
        self.path = url                                # named in messages
        self.fs = storage.filesystem(url)
        bucket, _, key = url.split("://", 1)[1].partition("/")
        self.bucket, self.key = bucket, key
        self.etag: str | None = None

    def _put(self, holder: LockHolder, **condition) -> bool:
        body = json.loads(holder.to_bytes())
        body["beat"] = uuid.uuid4().hex
        try:
            reply = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key,
                                    Body=json.dumps(body, sort_keys=True).encode(), **condition)
        except (FileExistsError, OSError) as err:
            if "pre-condition" in str(err) or "PreconditionFailed" in str(err) \
                    or isinstance(err, FileExistsError):
                return False
            from curation.build_folder.store import refused

            raise refused(self.url, err) from err     # a store that refuses writes: exit 3
        self.etag = reply.get("ETag")
        return True

    def _head(self) -> tuple[str, float] | None:
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        from email.utils import parsedate_to_datetime

        now = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        store_now = parsedate_to_datetime(now).timestamp() if now else time.time()
        return head["ETag"], max(0.0, store_now - head["LastModified"].timestamp())

    def create(self, holder: LockHolder) -> bool:
        return self._put(holder, IfNoneMatch="*")

    def _read(self) -> tuple[LockState, str] | None:
        # ETag first, then the body: a change in between makes a later If-Match on this ETag
        # fail, which is the safe way round.
        head = self._head()
        if head is None:
            return None
        etag, age = head
        try:
            data = self.fs.cat_file(self.url)
        except FileNotFoundError:
            return None
        return LockState(LockHolder.from_bytes(data), age), etag

    def read(self) -> LockState | None:
        read = self._read()
        return None if read is None else read[0]

    def renew(self, token: str) -> bool:
        read = self._read()
        if read is None or read[0].holder is None or read[0].holder.token != token:
            return False
        return self._put(read[0].holder, IfMatch=read[1])

    def replace(self, stale_token: str | None, holder: LockHolder) -> bool:
        read = self._read()
        if read is None:
            return self.create(holder)
        state, etag = read
        if (state.holder.token if state.holder else None) != stale_token:
            return False
        return self._put(holder, IfMatch=etag)

    def delete(self, token: str) -> None:
        read = self._read()
        if read is not None and read[0].holder is not None and read[0].holder.token == token:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


def lock_path(manifests_dir: Path) -> Path:
    return Path(manifests_dir) / LOCK_FILE


def lock_backend(manifests_dir: Path) -> LocalLockFile | StoreLockObject:
    """The lock of an output: an object beside its manifests on S3 (the output's own store,
    so builds on different machines see each other), else a file in the manifests folder
    (on another store, the file in this node's mirror guards this machine only)."""
    from curation.build_folder.store import store_url
    from curation.storage import S3_SCHEMES, scheme

    url = store_url(manifests_dir)
    if url is not None and scheme(url) in S3_SCHEMES:
        return StoreLockObject(f"{url}/{LOCK_FILE}")
    return LocalLockFile(lock_path(manifests_dir))


class BuildLock:
    """This process's hold on an output folder (see the module docstring)."""

    def __init__(self, backend: LocalLockFile | StoreLockObject, holder: LockHolder,
                 where: str):
        self.backend, self.holder, self.where = backend, holder, where
        self.lost: LockHolder | None = None     # set when another build took the lock over
        self.lost_seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="mfhq-build-lock",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, manifests_dir: Path, where: str | None = None,
                lease_s: float | None = None) -> BuildLock:
        """Take the lock of the output whose manifests are in `manifests_dir` (`where` names the
        output in messages); raises OutputLocked when a live build holds it."""
        backend = lock_backend(manifests_dir)
        where = where or str(Path(manifests_dir).parent)
        me = LockHolder.me(lease_seconds() if lease_s is None else lease_s)
        for _ in range(ACQUIRE_ATTEMPTS):
            if backend.create(me):
                return cls(backend, me, where)
            state = backend.read()
            if state is None:
                continue                      # released between our create and our read
            holder = state.holder
            if holder is None and state.age_s < 5.0:
                time.sleep(0.1)               # a creator is between its create and its write
                continue
            lease = holder.lease_s if holder is not None else me.lease_s
            if state.age_s > lease or (holder is not None and holder.is_gone()):
                if backend.replace(holder.token if holder else None, me):
                    return cls(backend, me, where)
                continue
            raise OutputLocked(_held_message(where, holder, state))
        raise OutputLocked(f"could not take the lock of the output {where} ({backend.path}): "
                           f"other builds kept taking it ({ACQUIRE_ATTEMPTS} tries); start one "
                           "build per output")

    def _heartbeat(self) -> None:
        period = self.holder.lease_s / 4
        while not self._stop.wait(period):
            try:
                if not self.backend.renew(self.holder.token):
                    state = self.backend.read()
                    self.lost = (state.holder if state and state.holder else self.holder)
                    return
            except OSError:
                pass        # renewing again in a moment; the lease allows for missed beats

    def check(self) -> None:
        """Raise LockLost when another build took this lock over."""
        if self.lost is not None:
            self.lost_seen = True
            other = (f"{self.lost.describe()}" if self.lost.token != self.holder.token
                     else "nobody (the lock file was removed)")
            raise LockLost(
                f"this build lost its lock of the output {self.where} to {other}: it was not "
                f"renewed for {self.holder.lease_s:.0f} s (the process was stopped or starved). "
                "It stopped so as not to write beside another build; what is finished is kept. "
                "Run one build per output; rerun the command once the other build ended.")

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        with contextlib.suppress(OSError):
            self.backend.delete(self.holder.token)

    def __enter__(self) -> BuildLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _held_message(where: str, holder: LockHolder | None, state: LockState) -> str:
    who = holder.describe() if holder is not None else "a build that is starting"
    lease = holder.lease_s if holder is not None else DEFAULT_LEASE_S
    return (f"another build is running on the output {where}: {who} (its lock was renewed "
            f"{state.age_s:.0f} s ago). Run one build per output: wait for it to finish, or "
            f"stop it and rerun this command, which resumes its work. A build that was killed "
            f"leaves the lock for at most {lease:.0f} s (at once on the same machine).")
