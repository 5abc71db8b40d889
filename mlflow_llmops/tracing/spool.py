"""A durable local spool of finished traces: the OpenTelemetry Collector's persistent queue,
inside the SDK.

When the tracking store is down, when the memory queue is full, and at the shutdown
deadline, traces are written here instead of being lost; they are replayed in order, by
this process once the store answers, or by the next process that starts on the same
directory, and each file is removed once its traces are in the store.

Layout: ``<directory>/<store key>/proc-<pid>-<random>/<seq>.json``. Each process owns one
``proc-`` directory, held with an exclusive ``flock`` on its ``lock`` file for its whole
life; a directory whose lock is free belongs to a process that ended (exit, crash,
SIGKILL) and is adopted by the next spool opened on the same store key.

Crash safety: a batch is written to ``<seq>.tmp``, flushed, ``fsync``-ed, then renamed to
``<seq>.json`` and the directory ``fsync``-ed, so a reader sees whole files or none; a
``.tmp`` left by a crash is deleted on adoption. ``fsync: false`` keeps the rename (safe
against a process crash or SIGKILL: the data is in the kernel's page cache) but skips both
``fsync`` calls (a power loss or kernel crash may lose the last files).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_logger = logging.getLogger("mlflow_llmops.tracing")
_FORMAT = 1


def store_key(tracking_uri: str, experiment_name: str) -> str:
    """A directory name for one (store, experiment): spools are never replayed elsewhere."""
    digest = hashlib.sha256(f"{tracking_uri}\n{experiment_name}".encode()).hexdigest()[:16]
    return f"store-{digest}"


def encode_trace(trace: Any) -> dict[str, Any]:
    """A JSON-ready record of an MLflow ``Trace``, with its spans' OTel resource (MLflow's
    ``Trace.to_dict`` drops it, and ``log_spans`` turns it into trace tags)."""
    resource: dict[str, Any] = {}
    for span in trace.data.spans:
        r = getattr(getattr(span, "_span", None), "resource", None)
        if r is not None and r.attributes:
            resource = dict(r.attributes)
            break
    return {"trace": trace.to_dict(), "resource": resource}


def decode_trace(record: dict[str, Any]) -> Any:
    from mlflow.entities import Trace
    from opentelemetry.sdk.resources import Resource

    trace = Trace.from_dict(record["trace"])
    attrs = record.get("resource") or {}
    if attrs:
        resource = Resource(attrs)
        for span in trace.data.spans:
            span._span._resource = resource
    return trace


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    traces: int
    size: int
    own: bool  # written by this process (counted in its ``spooled`` stat)


class Spool:
    """Bounded on-disk FIFO of trace batches, one file per batch; thread-safe."""

    def __init__(
        self, directory: str | os.PathLike[str], key: str, *, max_bytes: int, fsync: bool = True
    ) -> None:
        self.root = Path(directory) / key
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir = self.root / f"proc-{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir(parents=True)  # parents: a sibling may have just removed the root
        self._lock_fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._seq = 0
        self._files: list[SpoolFile] = []
        self._bytes = 0
        self._adopted_locks: dict[Path, int] = {}
        self._closed = False
        self.adopt()

    # -- adoption of spools left by ended processes ------------------------------
    def adopt(self) -> int:
        """Take over the files of ``proc-`` directories whose owner ended; return how many
        traces they hold. Older directories first, then by sequence number."""
        found = 0
        dirs = []
        for d in self.root.glob("proc-*"):
            if d == self.dir or d in self._adopted_locks or not d.is_dir():
                continue
            try:
                fd = os.open(d / "lock", os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its process is alive
                os.close(fd)
                continue
            dirs.append((d.stat().st_mtime, d, fd))
        adopted: list[SpoolFile] = []
        for _, d, fd in sorted(dirs, key=lambda x: (x[0], x[1].name)):
            self._adopted_locks[d] = fd
            for tmp in d.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            for f in sorted(d.glob("*.json")):
                try:
                    n = int(f.name.split("-", 1)[1].split(".", 1)[0])
                    size = f.stat().st_size
                except (IndexError, ValueError, OSError):
                    _logger.warning("spool: ignoring unexpected file %s", f)
                    continue
                adopted.append(SpoolFile(f, n, size, own=False))
                found += n
            if not any(d.glob("*.json")):
                self._remove_dir(d)
        if adopted:
            with self._lock:
                self._files[:0] = adopted  # before anything this process spooled
                self._bytes += sum(f.size for f in adopted)
            _logger.warning(
                "mlflow-llmops tracing: spool %s holds %d traces left by an ended process; "
                "replaying them once the tracking store answers",
                self.root,
                found,
            )
        return found

    def _remove_dir(self, d: Path) -> None:
        fd = self._adopted_locks.pop(d, None)
        with contextlib.suppress(OSError):
            for f in d.iterdir():
                f.unlink(missing_ok=True)
            d.rmdir()
        if fd is not None:
            os.close(fd)

    # -- writing -------------------------------------------------------------------
    def put(self, traces: list[Any]) -> bool:
        """Write one batch of MLflow ``Trace`` objects durably; False when the spool is full
        (nothing written) or closed."""
        body = json.dumps(
            {"v": _FORMAT, "traces": [encode_trace(t) for t in traces]}, cls=_encoder()
        ).encode()
        with self._lock:
            if self._closed or self._bytes + len(body) > self.max_bytes:
                return False
            self._seq += 1
            name = f"{self._seq:012d}-{len(traces)}"
            tmp = self.dir / f"{name}.tmp"
            final = self.dir / f"{name}.json"
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(self.dir)
            self._files.append(SpoolFile(final, len(traces), len(body), own=True))
            self._bytes += len(body)
            return True

    # -- reading -------------------------------------------------------------------
    def head(self) -> SpoolFile | None:
        with self._lock:
            return self._files[0] if self._files else None

    def read(self, f: SpoolFile) -> list[Any]:
        data = json.loads(f.path.read_bytes())
        if data.get("v") != _FORMAT:
            raise ValueError(f"spool file {f.path} has format {data.get('v')!r}")
        return [decode_trace(r) for r in data["traces"]]

    def remove(self, f: SpoolFile) -> None:
        """Forget ``f`` once its traces are in the store."""
        with self._lock:
            if self._files and self._files[0] == f:
                self._files.pop(0)
            elif f in self._files:
                self._files.remove(f)
            else:
                return
            self._bytes -= f.size
            f.path.unlink(missing_ok=True)
            if f.path.parent != self.dir and not any(f.path.parent.glob("*.json")):
                self._remove_dir(f.path.parent)

    def quarantine(self, f: SpoolFile, reason: str) -> None:
        """Move an unreadable file aside (kept for inspection, never replayed again)."""
        with self._lock:
            if f in self._files:
                self._files.remove(f)
                self._bytes -= f.size
        bad = self.root / "bad"
        bad.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(f.path, bad / f"{f.path.parent.name}-{f.path.name}")
        _logger.error("spool: file %s could not be replayed (%s); moved to %s", f.path, reason, bad)

    def pending(self) -> int:
        """Traces in the spool (own and adopted)."""
        with self._lock:
            return sum(f.traces for f in self._files)

    def files(self) -> Iterator[SpoolFile]:
        with self._lock:
            return iter(list(self._files))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Release the directory lock: what is left is adopted by the next process. An
        empty directory is removed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            own_left = any(f.own for f in self._files)
            if not own_left:
                with contextlib.suppress(OSError):
                    for f in self.dir.iterdir():
                        f.unlink(missing_ok=True)
                    self.dir.rmdir()
            os.close(self._lock_fd)
            for d, fd in list(self._adopted_locks.items()):
                if not any(d.glob("*.json")):
                    self._remove_dir(d)
                else:
                    os.close(fd)
                    self._adopted_locks.pop(d, None)
            with contextlib.suppress(OSError):  # only when no process left anything
                self.root.rmdir()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encoder() -> type[json.JSONEncoder]:
    from mlflow.tracing.utils import TraceJSONEncoder

    return TraceJSONEncoder


def open_spool(config: Any, tracking_uri: str, experiment_name: str) -> Spool | None:
    """The process's spool per the ``tracing.spool`` config; None when off or when the
    directory cannot be used (logged: traces then wait in memory only)."""
    if not config.enabled:
        return None
    try:
        return Spool(
            config.directory,
            store_key(tracking_uri, experiment_name),
            max_bytes=config.max_bytes,
            fsync=config.fsync,
        )
    except OSError as e:
        _logger.warning(
            "mlflow-llmops tracing: spool directory %s unusable (%s); spool off: traces wait "
            "in memory only. Set tracing.spool.directory to a writable directory.",
            config.directory,
            e,
        )
        return None
