"""Checkpoints that survive crashes, resume bit for bit and load safely.

:class:`CheckpointManager` decides *when* to write a checkpoint (a strategy),
*how* to write it (durably and atomically, optionally in the background),
*which* files to keep (the newest ``max_keep`` and/or the top ``max_keep`` by a
monitored metric) and *how* to read one back (checksum-verified, with
``weights_only=True`` unless the caller says the file is trusted).

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
values::

    {"format": "stabletrain.checkpoint/2", "seq", "epoch", "step", "batch_in_epoch",
     "metrics", "extra", "time", "torch_version",
     "objects": {name: obj.state_dict() | generator.get_state()},
     "rng": {"python", "numpy", "torch", "cuda"},
     "checksum": CRC-32 of everything above}

so ``torch.load(path, weights_only=True)`` reads it without running any pickled
code.

**Integrity lives in the file.** ``checksum`` is a CRC-32 over the payload's
structure, every plain value and every tensor's dtype, shape and bytes (see
:func:`payload_checksum`). :meth:`~CheckpointManager.load` recomputes it on
what ``torch.load`` returned, so a flipped bit in a weight is caught whether
or not ``manifest.json`` exists. (``torch.load`` itself does not verify the
zip records' CRCs.) Files of the previous format (``stabletrain.checkpoint/1``,
no embedded checksum) still load, checked against the manifest's file CRC-32
when the manifest has one.

Writing is crash-safe. For a checkpoint ``P`` in directory ``D``:

1. write ``D/.tmp-P-<pid>`` (the payload's checksum is inside it);
2. ``flush`` and ``os.fsync`` the file, ``os.replace`` it onto ``P``;
3. rewrite ``D/manifest.json`` through a temporary file and ``os.replace`` too
   (checksum, size, epoch, metrics and role of every kept file);
4. ``fsync(D)``, which makes both renames durable;
5. only then delete the files that fell out of the kept set.

A process killed at any point leaves either the old or the new ``P`` (never a
half-written one under a checkpoint's name) and a manifest that describes
intact files; leftovers (temporary files, files written but not yet in the
manifest) are cleaned up or adopted when the next manager opens ``D``. The
manifest is only an index: every checkpoint also carries its own sequence
number, epoch and metrics, so a lost, unreadable or malformed manifest is set
aside and rebuilt from the files.

**A folder from elsewhere cannot hurt you.** Manifest entries are trusted only
if they are plain file names of this manager's own pattern (``epoch-NNNN.pt``,
``epoch-NNNN-step-NNNNNNN.pt``) naming a regular file inside ``D`` (no path
separators, no ``..``, not absolute, not a symbolic link); anything else is
ignored with a warning. The manager deletes only such files, and only
temporary files of its own naming whose writer process is dead (or that are a
day old).

**One writer per folder.** A writing manager holds an advisory lock on
``D/.lock`` (``fcntl.flock``; released when the process ends, even by
SIGKILL). A second writer in another process is refused with
:class:`CheckpointLockedError`; within one process, a newer manager on the same
folder takes over and the older one can no longer save. Readers
(``read_only=True``) take no lock, create, rename and delete nothing, and
re-read the folder on every query, so a notebook can watch a training run.

Strategies (epochs count from 0; ``v`` is ``metrics[monitor]``; a NaN or
infinite ``v`` is never "best"):

========================  ====================================================
``best``                  write when ``v`` enters the current top ``max_keep``;
                          keep those.
``epoch``                 write every epoch; keep the newest ``max_keep``.
``interval``              write when ``(epoch + 1) % every_n_epochs == 0``; keep
                          the newest.
``all``                   write every epoch; keep the newest ``max_keep`` *and*
                          the top ``max_keep`` by ``v`` (a file may be both).
``improvement_or_final``  write when ``v`` improved on the value at the last
                          write by more than ``min_improvement`` relatively
                          (``(v_last - v) / |v_last|`` for ``mode="min"``), and
                          every epoch of the last 10% of ``total_epochs``
                          (``epoch >= total_epochs - ceil(total_epochs / 10)``);
                          keep the newest. (Formerly ``adaptive``: that name
                          still works, with a ``DeprecationWarning``.)
``time``                  write when at least ``every_n_minutes`` passed since
                          the last write (or since the manager was created);
                          keep the newest.
========================  ====================================================

With ``every_n_steps`` set, :func:`stabletrain.training.fit` also saves a
*resume point* every ``every_n_steps`` optimizer steps inside an epoch
(``save(..., batch_in_epoch=k)``): only the newest one is kept, and only while
it is the latest file; it does not count towards ``max_keep``.

Example:
    >>> import tempfile, torch
    >>> from stabletrain.checkpoint import CheckpointManager
    >>> model = torch.nn.Linear(2, 1)
    >>> manager = CheckpointManager(tempfile.mkdtemp(), strategy="epoch", max_keep=2)
    >>> for epoch in range(3):
    ...     _ = manager.save(epoch, {"val_loss": 1.0 / (epoch + 1)}, model=model)
    >>> [info.epoch for info in manager.checkpoints()]
    [1, 2]
    >>> manager.load("latest", model=model)["epoch"]
    2
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import stat
import threading
import time
import warnings
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .utils import capture_rng_state, cpu_copy, restore_rng_state

__all__ = [
    "STRATEGIES",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointLockedError",
    "CheckpointManager",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "payload_checksum",
    "restore_rng_state",
]

STRATEGIES = ("best", "epoch", "interval", "all", "improvement_or_final", "time")
_STRATEGY_ALIASES = {"adaptive": "improvement_or_final"}  # deprecated name -> strategy
FORMAT = "stabletrain.checkpoint/2"
_FORMAT_V1 = "stabletrain.checkpoint/1"  # no embedded checksum; still read
MANIFEST = "manifest.json"
LOCK = ".lock"
_NAME = re.compile(r"epoch-(?P<epoch>[0-9]+)(?:-step-(?P<step>[0-9]+))?\.pt")  # fullmatch only
_TMP_PREFIX = ".tmp-"
_TMP = re.compile(r"\.tmp-(?P<target>.+)-(?P<pid>[0-9]+)")  # _atomic_write's temporary files
_STALE_AFTER_S = 24 * 3600.0  # a temporary file this old is stale whoever wrote it
_ROLES = ("regular", "best", "resume")
_PLAIN_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a stabletrain checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled Python objects and was not loaded (``trusted=False``)."""


class CheckpointLockedError(CheckpointError):
    """Another process is writing to this checkpoint folder (one writer per folder)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One kept checkpoint, as recorded in the manifest.

    Attributes:
        path: the file.
        epoch: epoch it was saved after (or during, for a resume point).
        step: optimizer steps done when it was saved.
        batch_in_epoch: batches of ``epoch`` already trained for a mid-epoch
            resume point, ``None`` for an end-of-epoch checkpoint.
        metrics: the metrics given to :meth:`CheckpointManager.save`.
        value: ``metrics[monitor]`` (NaN when absent).
        roles: ``"regular"`` (newest-k), ``"best"`` (top-k), ``"resume"`` (mid-epoch).
        is_best: the kept file with the best finite ``value``.
        is_latest: the most recently written file.
    """

    path: Path
    epoch: int
    step: int | None
    batch_in_epoch: int | None
    metrics: dict[str, Any]
    value: float
    roles: tuple[str, ...]
    is_best: bool
    is_latest: bool


# --------------------------------------------------------------------------- plain values


def _check_plain(value: Any, where: str) -> Any:
    """Return ``value`` with NumPy scalars turned into Python ones; raise on anything else.

    Allowed: tensors, ``bool``/``int``/``float``/``complex``/``str``/``bytes``/``None``,
    ``torch.dtype``/``torch.device``/``torch.Size``, and ``dict``/``OrderedDict``/
    ``list``/``tuple`` of those (exactly these types, so no pickled classes sneak in).
    """
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PLAIN_LEAVES or kind is torch.Size:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if kind in (dict, OrderedDict):
        out = kind()
        for key, item in value.items():
            if type(key) not in (str, int, float, bool, type(None)):
                raise TypeError(
                    f"{where}: key {key!r} of type {type(key).__name__} cannot be stored; "
                    "checkpoint keys must be str, int, float, bool or None"
                )
            out[key] = _check_plain(item, f"{where}[{key!r}]")
        return out
    if kind in (list, tuple):
        return kind(_check_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; checkpoints hold only tensors "
        "and plain Python values (bool, int, float, str, bytes, None, dict, list, tuple) "
        "so that they load with torch.load(weights_only=True). Convert it in the object's "
        "state_dict()."
    )


def _object_state(name: str, obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {"generator_state": obj.get_state()}
    if not callable(getattr(obj, "state_dict", None)):
        raise TypeError(
            f"object {name!r} ({type(obj).__name__}) has no state_dict(); pass objects with "
            "state_dict()/load_state_dict() or a torch.Generator"
        )
    return obj.state_dict()


def _restore_object(name: str, obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        if not isinstance(state, Mapping) or "generator_state" not in state:
            raise CheckpointError(f"object {name!r} in the checkpoint is not a generator state")
        obj.set_state(state["generator_state"])
    elif callable(getattr(obj, "load_state_dict", None)):
        obj.load_state_dict(state)
    else:
        raise TypeError(f"object {name!r} ({type(obj).__name__}) has no load_state_dict()")


# --------------------------------------------------------------------------- durable I/O


def payload_checksum(value: Any) -> int:
    """CRC-32 of a checkpoint payload: its structure, plain values and tensor bytes.

    The walk visits mappings in their order (keys by ``repr``), sequences in
    order, each tensor as ``dtype``, ``shape`` and its bytes in row-major order,
    and every other value as its type name and ``repr``. It is computed on what
    :meth:`CheckpointManager.save` hands to ``torch.save`` and again on what
    ``torch.load`` returns, so it checks the round trip, not the file's bytes:
    a flipped bit in a tensor, a changed number or a damaged structure all
    change it. Tensors on an accelerator are copied to the CPU to be hashed.
    """
    crc = 0

    def add(text: str) -> None:
        nonlocal crc
        crc = zlib.crc32(text.encode(), crc)

    def visit(item: Any) -> None:
        nonlocal crc
        if isinstance(item, torch.Tensor):
            tensor = item.detach().resolve_conj().resolve_neg()
            add(f"T{tensor.dtype}{tuple(tensor.shape)};")
            if tensor.numel():
                flat = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
                crc = zlib.crc32(flat.numpy(), crc)
        elif isinstance(item, Mapping):
            add(f"M{len(item)};")
            for key, child in item.items():
                add(f"K{key!r};")
                visit(child)
        elif isinstance(item, list | tuple):
            add(f"S{len(item)};")
            for child in item:
                visit(child)
        else:
            add(f"V{type(item).__name__}:{item!r};")

    visit(value)
    return crc


class _CountingWriter:
    """A write-only file wrapper that counts the bytes ``torch.save`` hands over."""

    def __init__(self, file: io.BufferedWriter) -> None:
        self._file = file
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        written = self._file.write(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self._file.flush()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; os.replace is atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(
    path: Path, write: Callable[[Any], None], *, fsync_file: bool, fsync_dir: bool
) -> int:
    """Write ``path`` through a temporary file in the same folder; return its size."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer = _CountingWriter(f)
            write(writer)
            f.flush()
            if fsync_file:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync_dir:
        _fsync_dir(path.parent)
    return writer.size


def _file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    """CRC-32 of a file, read through one reused buffer (no per-chunk allocation)."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _regular_file(path: Path) -> bool:
    """``path`` is a regular file itself (a symbolic link, even to a file, is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (unknown counts as alive)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows; rely on age
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. PermissionError: it exists, owned by someone else
    return True


class _FolderLock:
    """This process's exclusive ``flock`` on ``D/.lock``, shared by its managers of ``D``.

    The newest manager of the folder in this process is its ``owner`` and the
    only one allowed to write; the lock is released when the last manager
    holding it is gone, when :meth:`CheckpointManager.close` is called, or when
    the process ends.
    """

    _held: ClassVar[dict[str, weakref.ref[_FolderLock]]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: Path) -> None:
        self.key = os.path.realpath(directory)
        self.fd: int | None = None
        self.released = False
        self.owner: weakref.ref[CheckpointManager] | None = None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer per folder is up to the user
            return
        path = directory / LOCK
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as error:
            raise CheckpointError(f"cannot open the lock file {path}: {error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointLockedError(
                f"checkpoint folder {directory} is being written by another process "
                f"(PID {holder}); one writer per folder. To read it while it trains, open "
                f"CheckpointManager({str(directory)!r}, read_only=True); to write, use "
                "another folder or stop the other run."
            ) from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    @classmethod
    def acquire(cls, directory: Path, manager: CheckpointManager) -> _FolderLock:
        """The folder's lock for ``manager``, taken over from an older manager of this process."""
        with cls._guard:
            key = os.path.realpath(directory)
            ref = cls._held.get(key)
            lock = ref() if ref is not None else None
            if lock is None or lock.released:
                lock = cls(directory)
                cls._held[key] = weakref.ref(lock)
            previous = lock.owner() if lock.owner is not None else None
            lock.owner = weakref.ref(manager)
        if previous is not None and previous is not manager:
            try:
                previous.wait()  # its background save lands before the new owner reads
            except CheckpointError as error:
                warnings.warn(f"the previous manager's save failed: {error}", stacklevel=4)
        return lock

    def owned_by(self, manager: CheckpointManager) -> bool:
        return not self.released and self.owner is not None and self.owner() is manager

    def release(self) -> None:
        with self._guard:
            if self.released:
                return
            self.released = True
            if self.fd is not None:
                os.close(self.fd)  # closing the descriptor drops the flock
                self.fd = None
            if self._held.get(self.key) is not None and self._held[self.key]() is self:
                del self._held[self.key]

    def __del__(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str) or value is None:
            out[str(key)] = value
    return out


# --------------------------------------------------------------------------- the manager


class CheckpointManager:
    """Decide when to checkpoint, write durably, keep the right files, load safely.

    Args:
        directory: folder of the checkpoints and their ``manifest.json`` (created).
            One manager (one training process) per folder.
        monitor: metric deciding "best" (a key of the ``metrics`` given to :meth:`save`).
        mode: ``"min"`` (lower is better) or ``"max"``.
        strategy: one of :data:`STRATEGIES` (see the module docs).
        max_keep: files kept per set (newest and/or best), ``>= 1``.
        every_n_epochs: period of the ``interval`` strategy.
        every_n_minutes: period of the ``time`` strategy (required for it).
        total_epochs: planned epochs (required by ``improvement_or_final``).
        min_improvement: relative improvement that triggers an ``improvement_or_final``
            write.
        every_n_steps: save a mid-epoch resume point every this many optimizer
            steps (used by :func:`~stabletrain.training.fit`), ``None`` for none.
        async_save: copy the state to CPU and write it in a background thread;
            the caller waits only for the copy. :meth:`wait` joins the writer.
        durable: ``fsync`` files and folder (turn off only for throwaway runs).
        read_only: open the folder only to read it (:meth:`checkpoints`,
            :meth:`load`, ``latest_path``, ``best_path``): no lock, nothing created,
            renamed or deleted, the folder re-read on every query. Use it to look at
            a folder another process is writing.

    Raises:
        CheckpointLockedError: another process holds the folder's writer lock.
        ValueError: an unknown ``strategy`` or ``mode``, a non-positive
            ``max_keep``/``every_n_epochs``/``every_n_minutes``/``every_n_steps``,
            ``strategy="time"`` without ``every_n_minutes`` or
            ``strategy="improvement_or_final"`` without ``total_epochs``, or a ``directory``
            that exists and is not a folder.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        strategy: str = "best",
        max_keep: int = 3,
        every_n_epochs: int = 1,
        every_n_minutes: float | None = None,
        total_epochs: int | None = None,
        min_improvement: float = 0.01,
        every_n_steps: int | None = None,
        async_save: bool = False,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        if strategy in _STRATEGY_ALIASES:
            warnings.warn(
                f"checkpoint strategy {strategy!r} is deprecated; use "
                f"{_STRATEGY_ALIASES[strategy]!r} (the same rule)",
                DeprecationWarning,
                stacklevel=2,
            )
            strategy = _STRATEGY_ALIASES[strategy]
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        for name, value in (
            ("max_keep", max_keep),
            ("every_n_epochs", every_n_epochs),
            ("total_epochs", total_epochs),
            ("every_n_steps", every_n_steps),
        ):
            if value is None and name in ("total_epochs", "every_n_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if every_n_minutes is not None and not (
            isinstance(every_n_minutes, int | float) and every_n_minutes > 0
        ):
            raise ValueError(f"every_n_minutes must be > 0 or None, got {every_n_minutes!r}")
        if strategy == "time" and every_n_minutes is None:
            raise ValueError("strategy='time' needs every_n_minutes=<minutes between writes>")
        if strategy == "improvement_or_final" and total_epochs is None:
            raise ValueError("strategy='improvement_or_final' needs total_epochs=<planned epochs>")
        if not (isinstance(min_improvement, int | float) and min_improvement >= 0):
            raise ValueError(f"min_improvement must be >= 0, got {min_improvement!r}")
        self.directory = Path(directory)
        self.monitor = monitor
        self.mode = mode
        self.strategy = strategy
        self.max_keep = max_keep
        self.every_n_epochs = every_n_epochs
        self.every_n_minutes = every_n_minutes
        self.total_epochs = total_epochs
        self.min_improvement = float(min_improvement)
        self.every_n_steps = every_n_steps
        self.async_save = async_save
        self.durable = durable
        self.read_only = bool(read_only)
        self._clock: Callable[[], float] = time.time
        self._created = self._clock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pool: dict[tuple, torch.Tensor] = {}
        self._lock: _FolderLock | None = None
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"directory must be a folder, but {self.directory} is a file")
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = _FolderLock.acquire(self.directory, self)
        self._entries: list[dict[str, Any]] = self._open()

    def close(self) -> None:
        """Finish a background save and release the folder's writer lock (idempotent)."""
        try:
            self.wait()
        finally:
            if self._lock is not None and self._lock.owned_by(self):
                self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self.read_only:
            raise CheckpointError(f"this manager of {self.directory} was opened read_only")
        assert self._lock is not None
        if not self._lock.owned_by(self):
            raise CheckpointError(
                f"this manager of {self.directory} can no longer save: it was closed, or a "
                "newer CheckpointManager of the same folder took over (one writer per folder)"
            )

    def _writing(self) -> bool:
        """This manager may change the folder (not read-only, not closed or superseded)."""
        return not self.read_only and self._lock is not None and self._lock.owned_by(self)

    def _current(self) -> list[dict[str, Any]]:
        """The kept entries; a reader (or a superseded writer) re-reads the folder."""
        if not self._writing():
            self._entries = self._open()
        return self._entries

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({str(self.directory)!r}, strategy={self.strategy!r}, "
            f"monitor={self.monitor!r}, mode={self.mode!r}, max_keep={self.max_keep}, "
            f"kept={len(self._entries)})"
        )

    # ------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def _open(self) -> list[dict[str, Any]]:
        """Read the manifest, validate its entries, adopt complete orphans.

        A writer also removes stale temporary files, sets an unusable manifest
        aside and rewrites the manifest if it changed; a reader changes nothing.
        """
        writing = self._writing()
        if not writing and not self.directory.is_dir():
            return []
        if writing:
            self._remove_stale_temporaries()
        entries = []
        for entry in self._read_manifest():
            valid = self._valid_entry(entry)
            if valid is not None:
                entries.append(valid)
        present = []
        for entry in entries:
            if _regular_file(self.directory / entry["name"]):
                present.append(entry)
            elif writing:  # a reader may race the writer's pruning: no news
                warnings.warn(
                    f"checkpoint {entry['name']} is in the manifest but missing; forgetting it",
                    stacklevel=3,
                )
        known = {e["name"] for e in present}
        for path in sorted(self.directory.iterdir()):
            if _NAME.fullmatch(path.name) and path.name not in known:
                if not _regular_file(path):
                    warnings.warn(
                        f"ignoring {path.name} in {self.directory}: not a regular file "
                        "(a symbolic link or a folder is never a checkpoint here)",
                        stacklevel=3,
                    )
                    continue
                adopted = self._adopt(path)
                if adopted is not None:
                    present.append(adopted)
        present.sort(key=lambda e: e["seq"])
        if present != entries and writing:
            self._write_manifest(present)
        return present

    def _read_manifest(self) -> list[Any]:
        """The manifest's ``files`` list; an unusable manifest is set aside (writer) and ``[]``."""
        path = self.manifest_path
        if not os.path.lexists(path):
            return []
        try:
            if not _regular_file(path):
                raise ValueError("it is not a regular file")
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("files"), list):
                raise ValueError("it is not a JSON object with a 'files' list")
            return data["files"]
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeError are ValueErrors
            if not self._writing():
                warnings.warn(f"{path} is unusable ({error}); reading the files", stacklevel=4)
                return []
            aside = path.with_name(f"{MANIFEST}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            warnings.warn(
                f"{path} is unusable ({error}); moved it to {aside.name} and rebuilt the "
                "index from the checkpoint files",
                stacklevel=4,
            )
            return []

    def _valid_entry(self, entry: Any) -> dict[str, Any] | None:
        """``entry`` if it is a well-formed record of one of this manager's files, else ``None``.

        The name must be a plain file name of the manager's own pattern, so an entry
        can never point outside the folder (``../x``, ``/etc/x``, ``a/b``).
        """

        def integer(v: Any, optional: bool = False) -> bool:
            return (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool))

        name = entry.get("name") if isinstance(entry, dict) else None
        problem = None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problem = "its name is not a checkpoint file name of this folder (epoch-NNNN.pt)"
        elif not (integer(entry.get("seq")) and integer(entry.get("epoch"))):
            problem = "it has no integer 'seq' and 'epoch'"
        elif not (
            integer(entry.get("step"), True)
            and integer(entry.get("batch_in_epoch"), True)
            and integer(entry.get("size"), True)
            and integer(entry.get("checksum"), True)
            and integer(entry.get("crc32"), True)
        ):
            problem = "its step, batch_in_epoch, size or checksum is not an integer"
        elif not isinstance(entry.get("metrics", {}), dict) or not isinstance(
            entry.get("value", math.nan), int | float
        ):
            problem = "its metrics or value have the wrong type"
        elif not isinstance(entry.get("roles"), list) or not set(entry["roles"]) <= set(_ROLES):
            problem = f"its roles are not a list drawn from {_ROLES}"
        if problem is not None:
            shown = repr(name) if isinstance(name, str) else repr(entry)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            warnings.warn(
                f"ignoring manifest entry {shown} in {self.manifest_path}: {problem}",
                stacklevel=5,
            )
            return None
        return {
            "name": name,
            "seq": entry["seq"],
            "epoch": entry["epoch"],
            "step": entry.get("step"),
            "batch_in_epoch": entry.get("batch_in_epoch"),
            "metrics": dict(entry.get("metrics", {})),
            "value": float(entry.get("value", math.nan)),
            "roles": list(entry["roles"]),
            "checksum": entry.get("checksum"),
            "crc32": entry.get("crc32"),  # format 1 files: CRC-32 of the file's bytes
            "size": entry.get("size"),
            "time": float(entry["time"]) if isinstance(entry.get("time"), int | float) else 0.0,
        }

    def _remove_stale_temporaries(self) -> None:
        """Delete ``.tmp-<file>-<pid>`` files of this manager's naming whose writer is gone."""
        now = time.time()
        for path in self.directory.iterdir():
            match = _TMP.fullmatch(path.name)
            if match is None or not _regular_file(path):
                continue
            if match["target"] != MANIFEST and not _NAME.fullmatch(match["target"]):
                continue
            pid = int(match["pid"])
            try:
                age = now - os.lstat(path).st_mtime
            except OSError:
                continue
            own = pid == os.getpid()  # a superseded manager of this process may be writing it
            if age > _STALE_AFTER_S or (not own and not _pid_alive(pid)):
                path.unlink(missing_ok=True)

    def _remove(self, name: str) -> None:
        """Delete one of this manager's checkpoint files (nothing else, ever)."""
        path = self.directory / name
        if _NAME.fullmatch(name) and _regular_file(path):
            path.unlink(missing_ok=True)

    def _adopt(self, path: Path) -> dict[str, Any] | None:
        """Describe a complete checkpoint file that the manifest does not know.

        This happens when a process died after a file was renamed into place but
        before the manifest was rewritten, or between the manifest and a deletion,
        or when the manifest was lost. The file is read and its checksum verified;
        a damaged file is left where it is, with a warning, and not adopted.
        """
        try:
            payload = self._read(path, None, "cpu", trusted=False)
            size = path.stat().st_size
        except Exception as error:  # any failure means "do not adopt"
            warnings.warn(f"ignoring unreadable checkpoint {path.name}: {error}", stacklevel=4)
            return None
        batch = payload.get("batch_in_epoch")
        roles = {
            "best": ["best"],
            "all": ["regular", "best"],
        }.get(self.strategy, ["regular"])
        metrics = dict(payload.get("metrics") or {})
        legacy = payload["format"] == _FORMAT_V1
        return {
            "name": path.name,
            "seq": int(payload["seq"]),
            "epoch": int(payload["epoch"]),
            "step": payload.get("step"),
            "batch_in_epoch": batch,
            "metrics": metrics,
            "value": self._value(metrics, required=False),
            "roles": ["resume"] if batch is not None else roles,
            "checksum": None if legacy else payload["checksum"],
            "crc32": _file_crc32(path) if legacy else None,
            "size": size,
            "time": float(payload.get("time", 0.0)),
        }

    def _write_manifest(self, entries: list[dict[str, Any]]) -> None:
        doc = {
            "format": FORMAT,
            "strategy": self.strategy,
            "monitor": self.monitor,
            "mode": self.mode,
            "max_keep": self.max_keep,
            "files": entries,
        }
        text = json.dumps(doc, indent=1).encode()
        # The manifest's own bytes are not fsynced: it is atomic (old or new) and, if a power
        # cut loses it, rebuilt from the checkpoint files (each carries its seq, epoch and
        # metrics). The folder fsync makes both renames (checkpoint, manifest) durable.
        _atomic_write(
            self.manifest_path, lambda f: f.write(text), fsync_file=False, fsync_dir=self.durable
        )

    # ------------------------------------------------------------------ ranking

    def _value(self, metrics: Mapping[str, Any] | None, *, required: bool) -> float:
        if metrics is None or self.monitor not in metrics:
            if required:
                keys = sorted(metrics or {})
                raise ValueError(
                    f"strategy={self.strategy!r} ranks checkpoints by monitor={self.monitor!r}, "
                    f"which is not among the metrics given to save(): {keys}"
                )
            return math.nan
        value = metrics[self.monitor]
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metrics[{self.monitor!r}] must be a number, got {value!r}") from None

    def _rank(self, entry: Mapping[str, Any]) -> tuple[float, int]:
        value = entry["value"]
        return (value if self.mode == "min" else -value, entry["seq"])

    def _top(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        candidates = [e for e in entries if "best" in e["roles"] and _finite(e["value"])]
        return sorted(candidates, key=self._rank)[: self.max_keep]

    def _enters_top(self, value: float, seq: int) -> bool:
        if not _finite(value):
            return False
        top = self._top(self._entries)
        if len(top) < self.max_keep:
            return True
        return self._rank({"value": value, "seq": seq}) < self._rank(top[-1])

    def _last_write(self) -> dict[str, Any] | None:
        regular = [e for e in self._entries if "resume" not in e["roles"]]
        return max(regular, key=lambda e: e["seq"]) if regular else None

    def _improved(self, value: float, reference: float) -> bool:
        if not _finite(value):
            return False
        if not _finite(reference):
            return True
        gain = reference - value if self.mode == "min" else value - reference
        if reference == 0:
            return gain > 0
        return gain / abs(reference) > self.min_improvement

    def _plan_roles(self, epoch: int, value: float, seq: int) -> list[str] | None:
        """Roles of a new end-of-epoch checkpoint, or ``None`` if the strategy skips it."""
        strategy = self.strategy
        if strategy == "best":
            return ["best"] if self._enters_top(value, seq) else None
        if strategy == "epoch":
            return ["regular"]
        if strategy == "interval":
            return ["regular"] if (epoch + 1) % self.every_n_epochs == 0 else None
        if strategy == "all":
            return ["regular", "best"] if self._enters_top(value, seq) else ["regular"]
        last = self._last_write()
        if strategy == "improvement_or_final":
            assert self.total_epochs is not None
            final_stretch = epoch >= self.total_epochs - math.ceil(self.total_epochs / 10)
            reference = last["value"] if last is not None else math.nan
            return ["regular"] if final_stretch or self._improved(value, reference) else None
        # time
        since = last["time"] if last is not None else self._created
        assert self.every_n_minutes is not None
        return ["regular"] if self._clock() - since >= 60.0 * self.every_n_minutes else None

    def _retain(self, entries: list[dict[str, Any]]) -> tuple[list, list]:
        """Split ``entries`` into (kept, dropped) and trim each kept file's roles."""
        latest = max(entries, key=lambda e: e["seq"])["name"]
        regular = sorted((e for e in entries if "regular" in e["roles"]), key=lambda e: e["seq"])
        newest = {e["name"] for e in regular[-self.max_keep :]}
        top = {e["name"] for e in self._top(entries)}
        kept, dropped = [], []
        for entry in entries:
            roles = [
                r
                for r in entry["roles"]
                if (r == "regular" and entry["name"] in newest)
                or (r == "best" and entry["name"] in top)
                or (r == "resume" and entry["name"] == latest)
            ]
            if roles or entry["name"] == latest:
                kept.append({**entry, "roles": roles})
            else:
                dropped.append(entry)
        return kept, dropped

    # ------------------------------------------------------------------ save

    def save(
        self,
        epoch: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        step: int | None = None,
        batch_in_epoch: int | None = None,
        extra: Mapping[str, Any] | None = None,
        **objects: Any,
    ) -> Path | None:
        """Checkpoint ``objects`` after ``epoch`` if the strategy says so.

        Args:
            epoch: the epoch just finished (from 0), or the current one for a
                mid-epoch resume point.
            metrics: that epoch's metrics (``monitor`` must be among them for the
                ``best``, ``all`` and ``improvement_or_final`` strategies).
            step: optimizer steps done so far (returned by :meth:`load`).
            batch_in_epoch: for a mid-epoch resume point, how many batches of
                ``epoch`` are done; always written, whatever the strategy.
            extra: more plain values to store and return from :meth:`load`
                (for example the data order's generator state at the epoch start).
            **objects: things with ``state_dict()`` (model, optimizer, scheduler,
                scaler, guard, early stopping, ...) or ``torch.Generator`` objects.

        Returns:
            The checkpoint's path, or ``None`` when the strategy skipped this epoch.
            With ``async_save`` the file is complete only after :meth:`wait`.

        Raises:
            TypeError: an object without ``state_dict()`` or whose state holds
                something other than tensors and plain Python values.
            ValueError: a negative ``epoch`` or a missing ``monitor`` metric.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if batch_in_epoch is not None and (
            isinstance(batch_in_epoch, bool) or not isinstance(batch_in_epoch, int)
        ):
            raise ValueError(f"batch_in_epoch must be an int or None, got {batch_in_epoch!r}")
        self._check_writable()
        self.wait()
        metrics = _plain_metrics(metrics)
        seq = max((e["seq"] for e in self._entries), default=-1) + 1
        if batch_in_epoch is None:
            required = self.strategy in ("best", "all", "improvement_or_final")
            value = self._value(metrics, required=required)
            roles = self._plan_roles(epoch, value, seq)
            if roles is None:
                return None
            name = f"epoch-{epoch:04d}.pt"
        else:
            value = math.nan
            roles = ["resume"]
            name = f"epoch-{epoch:04d}-step-{int(step or 0):07d}.pt"
        payload = {
            "format": FORMAT,
            "seq": seq,
            "epoch": epoch,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "metrics": metrics,
            "extra": _check_plain(dict(extra or {}), "extra"),
            "time": self._clock(),
            "torch_version": str(torch.__version__),
            "objects": {
                name_: _check_plain(_object_state(name_, obj), name_)
                for name_, obj in objects.items()
                if obj is not None
            },
            "rng": capture_rng_state(),
        }
        entry = {
            "name": name,
            "seq": seq,
            "epoch": epoch,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "metrics": metrics,
            "value": value,
            "roles": roles,
            "checksum": None,
            "crc32": None,
            "size": None,
            "time": payload["time"],
        }
        others = [e for e in self._entries if e["name"] != name]
        kept, dropped = self._retain([*others, entry])
        path = self.directory / name
        if self.async_save:
            payload = cpu_copy(payload, self._pool)
            self._entries = kept
            self._thread = threading.Thread(
                target=self._write_in_background,
                args=(path, payload, kept, dropped),
                name=f"checkpoint-{name}",
            )
            self._thread.start()
        else:
            self._write(path, payload, kept, dropped)
            self._entries = kept
        return path

    def _write(self, path: Path, payload: dict, kept: list, dropped: list) -> None:
        checksum = payload_checksum(payload)  # off the loop's thread under async_save
        payload = {**payload, "checksum": checksum}
        size = _atomic_write(
            path, lambda f: torch.save(payload, f), fsync_file=self.durable, fsync_dir=False
        )
        for entry in kept:
            if entry["name"] == path.name:
                entry["checksum"], entry["size"] = checksum, size
        self._write_manifest(kept)
        for entry in dropped:
            if entry["name"] != path.name:
                self._remove(entry["name"])

    def _write_in_background(self, path: Path, payload: dict, kept: list, dropped: list) -> None:
        try:
            self._write(path, payload, kept, dropped)
        except BaseException as error:  # re-raised by wait()
            self._error = error

    def wait(self) -> None:
        """Block until a background save has finished; re-raise its error if it failed.

        Raises:
            CheckpointError: the background write failed (the manager then
                re-reads the manifest, so it describes only files on disk).
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            self._entries = self._open()
            raise CheckpointError(f"background checkpoint save failed: {error}") from error

    # ------------------------------------------------------------------ queries

    def _best_entry(self, entries: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        finite = [e for e in (entries or self._current()) if _finite(e["value"])]
        return min(finite, key=self._rank) if finite else None

    def _latest_entry(self, entries: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        entries = entries or self._current()
        return max(entries, key=lambda e: e["seq"]) if entries else None

    @property
    def best_path(self) -> Path | None:
        """The kept checkpoint with the best finite ``monitor`` value (``None`` if none)."""
        entry = self._best_entry()
        return self.directory / entry["name"] if entry else None

    @property
    def latest_path(self) -> Path | None:
        """The most recently written checkpoint (``None`` before the first write)."""
        entry = self._latest_entry()
        return self.directory / entry["name"] if entry else None

    def checkpoints(self) -> list[CheckpointInfo]:
        """The kept checkpoints, oldest first."""
        entries = self._current()
        best, latest = self._best_entry(entries), self._latest_entry(entries)
        return [
            CheckpointInfo(
                path=self.directory / e["name"],
                epoch=e["epoch"],
                step=e["step"],
                batch_in_epoch=e["batch_in_epoch"],
                metrics=dict(e["metrics"]),
                value=e["value"],
                roles=tuple(e["roles"]),
                is_best=best is not None and e["name"] == best["name"],
                is_latest=latest is not None and e["name"] == latest["name"],
            )
            for e in sorted(entries, key=lambda e: e["seq"])
        ]

    # ------------------------------------------------------------------ load

    def _read(
        self, path: Path, entry: Mapping[str, Any] | None, map_location: Any, trusted: bool
    ) -> dict[str, Any]:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist") from None
        if entry is not None and entry.get("size") is not None and size != entry["size"]:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt: {size} bytes, "
                f"the manifest records {entry['size']}"
            )
        if entry is not None and entry.get("crc32") is not None:  # a format-1 file
            if _file_crc32(path) != entry["crc32"]:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: its CRC-32 does not match the manifest"
                )
        try:
            payload = torch.load(path, map_location=map_location, weights_only=not trusted)
        except pickle.UnpicklingError as error:
            if "weights_only" in str(error) or "Weights only" in str(error):
                found = re.search(r"GLOBAL ([\w.]+)", str(error))
                detail = f"it references {found.group(1)!r}" if found else "not only tensors"
                raise UnsafeCheckpointError(
                    f"refused to load {path}: it contains pickled Python objects "
                    f"({detail}). Unpickling runs "
                    "whatever code the file names, so a checkpoint from the internet can take "
                    "over your machine. Load it with trusted=True only if you trust its source."
                ) from error
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {error}") from error
        except Exception as error:  # zip/pickle errors of damaged files vary
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(payload, Mapping) or payload.get("format") not in (FORMAT, _FORMAT_V1):
            raise CheckpointError(f"{path} is not a stabletrain checkpoint ({FORMAT})")
        payload = dict(payload)
        if payload["format"] == FORMAT:
            stored = payload.pop("checksum", None)
            if stored != payload_checksum(payload):
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: the checksum stored in the file does not "
                    "match its contents (a damaged tensor or value)"
                )
            payload["checksum"] = stored
        return payload

    def load(
        self,
        which: str | os.PathLike = "latest",
        *,
        map_location: Any = None,
        trusted: bool = False,
        restore_rng: bool = True,
        **objects: Any,
    ) -> dict[str, Any]:
        """Restore ``objects`` (and the RNG states) from a checkpoint; return its metadata.

        Args:
            which: ``"latest"``, ``"best"`` or a path to a checkpoint file.
            map_location: as for ``torch.load`` (e.g. ``"cpu"`` for a GPU checkpoint).
            trusted: allow pickled Python objects (``weights_only=False``). Only for
                files whose origin you trust: unpickling can run arbitrary code.
            restore_rng: also restore the Python, NumPy, torch and CUDA RNG states.
            **objects: the objects to restore, by the names they were saved under.

        Returns:
            ``{"epoch", "step", "batch_in_epoch", "metrics", "extra", "path"}``.

        Raises:
            CheckpointError: no checkpoint, a truncated or corrupt file (named), or
                an object missing from the file. ``"latest"`` first falls back,
                with a warning, to the newest intact checkpoint.
            UnsafeCheckpointError: the file holds pickled objects and ``trusted`` is false.
            TypeError: ``which`` is not a string or path.
        """
        self.wait()
        candidates: list[tuple[Path, Mapping[str, Any] | None]]
        if which in ("latest", "best"):
            if not self._current():
                raise CheckpointError(f"no checkpoint in {self.directory}")
            if which == "best":
                best = self._best_entry()
                if best is None:
                    raise CheckpointError(
                        f"no checkpoint in {self.directory} has a finite {self.monitor!r}"
                    )
                chosen = [best]
            else:
                chosen = sorted(self._entries, key=lambda e: -e["seq"])
            candidates = [(self.directory / e["name"], e) for e in chosen]
        elif isinstance(which, str | os.PathLike):
            path = Path(which)
            if not path.exists() and (self.directory / path).exists():
                path = self.directory / path
            own = path.resolve().parent == self.directory.resolve()
            by_name = {e["name"]: e for e in self._current()}
            candidates = [(path, by_name.get(path.name) if own else None)]
        else:
            raise TypeError(f"which must be 'latest', 'best' or a path, got {type(which).__name__}")
        failures = []
        for path, entry in candidates:
            try:
                payload = self._read(path, entry, map_location, trusted)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as error:
                if which != "latest":
                    raise
                failures.append(str(error))
                continue
            if failures:
                warnings.warn(
                    f"{len(failures)} newer checkpoint(s) could not be read "
                    f"({'; '.join(failures)}); fell back to {path.name}",
                    stacklevel=2,
                )
            return self._restore(path, payload, objects, restore_rng)
        raise CheckpointError(f"no intact checkpoint in {self.directory}: {'; '.join(failures)}")

    @staticmethod
    def _restore(
        path: Path, payload: Mapping[str, Any], objects: Mapping[str, Any], restore_rng: bool
    ) -> dict[str, Any]:
        stored = payload.get("objects", {})
        missing = [name for name, obj in objects.items() if obj is not None and name not in stored]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} holds no state for {missing}; it holds {sorted(stored)}"
            )
        for name, obj in objects.items():
            if obj is not None:
                _restore_object(name, obj, stored[name])
        if restore_rng and "rng" in payload:
            restore_rng_state(payload["rng"])
        return {
            "epoch": payload["epoch"],
            "step": payload.get("step"),
            "batch_in_epoch": payload.get("batch_in_epoch"),
            "metrics": dict(payload.get("metrics") or {}),
            "extra": dict(payload.get("extra") or {}),
            "path": path,
        }
