"""Checkpoints that survive crashes, resume bit for bit and load safely: one ``torch.save`` file of
tensors and plain values each (``weights_only=True`` loads it; format ``/2`` embeds a CRC-32, ``/1``
still loads), written to ``.tmp-<name>-<pid>``, fsynced and renamed, then ``manifest.json`` (an
index, rebuilt from the files when damaged) the same way. One writer per folder (``flock`` on
``.lock``); readers change nothing."""

from __future__ import annotations

import contextlib
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
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .checks import check_bool, check_choice, check_float, check_folder, check_int
from .distributed import broadcast, gather, is_distributed, is_main, rank
from .metrics import metric_mode
from .utils import as_device, capture_rng_state, cpu_copy, restore_rng_state

STRATEGIES = ("best", "epoch", "interval", "all", "improvement_or_final", "time")
_STRATEGY_ALIASES = {"adaptive": "improvement_or_final"}  # deprecated name -> strategy
_STRATEGY_ROLES = {"best": ["best"], "all": ["regular", "best"]}  # the others: ["regular"]
FORMAT = "stabletrain.checkpoint/2"
_FORMAT_V1 = "stabletrain.checkpoint/1"  # no embedded checksum; still read
MANIFEST = "manifest.json"
LOCK = ".lock"
_NAME = re.compile(r"epoch-(?P<epoch>[0-9]+)(?:-step-(?P<step>[0-9]+))?\.pt")  # fullmatch only
_TMP = re.compile(r"\.tmp-(?P<target>.+)-(?P<pid>[0-9]+)")  # _atomic_write's temporary files
_STALE_AFTER_S = 24 * 3600.0  # a temporary file this old is stale whoever wrote it
_ROLES = ("regular", "best", "resume")
_PLAIN_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)
_FIELDS = ("name", "seq", "epoch", "step", "batch_in_epoch", "metrics", "value", "roles")
_FIELDS += ("checksum", "crc32", "size", "time")  # of a manifest entry, in order; their types:
_TYPES = {"name": (str,), "seq": (int,), "epoch": (int,), "metrics": (dict,), "roles": (list,)}
_TYPES |= dict.fromkeys(("step", "batch_in_epoch", "checksum", "crc32", "size"), (int, type(None)))
_TYPES["value"] = (int, float)
_SEQ = itemgetter("seq")
#: Saved objects whose state differs between ranks, kept per rank in a process group.
PER_RANK = ("guard", "history")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a stabletrain checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled Python objects and was not loaded (``trusted=False``)."""


class CheckpointLockedError(CheckpointError):
    """Another process is writing to this checkpoint folder (one writer per folder)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One kept checkpoint: ``batch_in_epoch`` is ``None`` at an epoch's end; ``value`` is
    ``metrics[monitor]`` (NaN when absent); ``roles`` among ``"regular"`` (newest-k), ``"best"``
    (top-k), ``"resume"`` (mid-epoch); ``is_best``: best finite value; ``is_latest``: newest."""

    path: Path
    epoch: int
    step: int | None
    batch_in_epoch: int | None
    metrics: dict[str, Any]
    value: float
    roles: tuple[str, ...]
    is_best: bool
    is_latest: bool

    def __fspath__(self) -> str:  # torch.load(info), open(info)
        return os.fspath(self.path)


def _check_plain(value: Any, where: str) -> Any:
    """``value`` with NumPy scalars as Python ones; ``TypeError`` unless tensors/plain values."""
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PLAIN_LEAVES or kind is torch.Size:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if kind in (dict, OrderedDict):
        if bad := [key for key in value if type(key) not in (str, int, float, bool, type(None))]:
            message = f"{where}: key {bad[0]!r} of type {type(bad[0]).__name__} cannot be stored"
            raise TypeError(f"{message}; checkpoint keys must be str, int, float, bool or None")
        return kind((key, _check_plain(item, f"{where}[{key!r}]")) for key, item in value.items())
    if kind in (list, tuple):
        return kind(_check_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    plain = "tensors and bool, int, float, str, bytes, None, dict, list, tuple"
    message = f"{where} is a {kind.__module__}.{kind.__qualname__}; checkpoints hold only {plain}"
    raise TypeError(f"{message} (to load with weights_only=True): convert it in its state_dict()")


def _object_state(name: str, obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {"generator_state": obj.get_state()}
    if not callable(getattr(obj, "state_dict", None)):
        hint = "pass objects with state_dict()/load_state_dict() or a torch.Generator"
        raise TypeError(f"object {name!r} ({type(obj).__name__}) has no state_dict(); {hint}")
    return obj.state_dict()


def payload_checksum(item: Any, crc: int = 0) -> int:
    """CRC-32 of a checkpoint payload (computed at save and again at load), continuing ``crc``:
    mappings in order (keys by ``repr``), sequences in order, tensors as ``dtype``, ``shape`` and
    row-major CPU bytes, other values as type name and ``repr``."""
    if isinstance(item, torch.Tensor):
        tensor = item.detach().resolve_conj().resolve_neg().cpu().contiguous()
        crc = zlib.crc32(f"T{tensor.dtype}{tuple(tensor.shape)};".encode(), crc)
        return zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    if isinstance(item, Mapping | list | tuple):  # mappings: "M", keys "K"; sequences: "S"
        mapping = isinstance(item, Mapping)
        crc = zlib.crc32(f"{'M' if mapping else 'S'}{len(item)};".encode(), crc)
        for key, child in item.items() if mapping else enumerate(item):
            crc = zlib.crc32(f"K{key!r};".encode(), crc) if mapping else crc
            crc = payload_checksum(child, crc)
        return crc
    return zlib.crc32(f"V{type(item).__name__}:{item!r};".encode(), crc)


def _atomic_write(path: Path, write: Callable, *, fsync_file=False, fsync_dir=False) -> int:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            size = f.tell()
            if fsync_file:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync_dir and os.name == "posix":  # Windows cannot open folders; os.replace is atomic there
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return size


def _regular_file(path: Path) -> bool:
    """``path`` is a regular file itself (a symbolic link, even to a file, is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _writer_gone(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return False  # a superseded manager here may be writing; os.kill would end it on Windows
    try:
        os.kill(pid, 0)
    except OSError as error:  # PermissionError: it exists, owned by someone else
        return isinstance(error, ProcessLookupError)
    return False


class _FolderLock:
    """This process's ``flock`` on ``D/.lock``, shared by its managers of ``D``; only the newest
    (``owner``) may write. Released by :meth:`release`, when no manager holds it, or at exit."""

    _held: ClassVar[weakref.WeakValueDictionary[str, _FolderLock]] = weakref.WeakValueDictionary()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: Path) -> None:
        self.key = os.path.realpath(directory)
        self.owner: weakref.ref[CheckpointManager] | None = None  # None once released
        self.close: Callable[[], Any] = lambda: None
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
            busy = f"checkpoint folder {directory} is being written by PID {holder}; one writer"
            hint = f"per folder: read it with CheckpointManager({str(directory)!r}, read_only=True)"
            raise CheckpointLockedError(f"{busy} {hint}, or write to another folder") from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.close = weakref.finalize(self, os.close, fd)  # closing it drops the flock

    @classmethod
    def acquire(cls, directory: Path, manager: CheckpointManager) -> _FolderLock:
        with cls._guard:
            lock = cls._held.get(os.path.realpath(directory)) or cls(directory)
            cls._held[lock.key] = lock
            previous = lock.owner() if lock.owner is not None else None
            lock.owner = weakref.ref(manager)
        if previous is not None:
            try:
                previous.wait()  # its background save lands before the new owner reads
            except CheckpointError as error:
                warnings.warn(f"the previous manager's save failed: {error}", stacklevel=4)
        return lock

    def release(self) -> None:
        with self._guard:
            self.owner = None
            self.close()
            self._held.pop(self.key, None)


def _point(epoch: int, batch_in_epoch: int | None) -> tuple[int, float]:
    return epoch, math.inf if batch_in_epoch is None else batch_in_epoch


class CheckpointManager:
    """Decide when to checkpoint, write durably, keep the right files, load safely. Strategies
    (epochs from 0; ``v = metrics[monitor]``; a non-finite ``v`` is never best): ``best`` writes
    when ``v`` enters the top ``max_keep`` and keeps those; ``epoch`` every epoch; ``interval`` when
    ``(epoch + 1) % every_n_epochs == 0``; ``all`` every epoch, keeping the newest and the top
    ``max_keep``; ``improvement_or_final`` (alias ``adaptive``) when ``v`` beats the last write's by
    more than ``min_improvement`` relatively, and when ``epoch >= total_epochs - ceil(total_epochs /
    10)``; ``time`` every ``every_n_minutes``. The others keep the newest ``max_keep``. ``save(...,
    batch_in_epoch=k)`` writes a mid-epoch resume point (``fit``: every ``every_n_steps`` steps),
    kept only while latest. ``async_save`` writes from a thread (:meth:`wait`); ``durable`` fsyncs;
    a ``read_only`` manager takes no lock, changes nothing and re-reads the folder on every query;
    ``mode=None``: the direction of ``monitor``. ``CheckpointLockedError``: another process writes
    the folder. In a process group (made before the manager) :meth:`save`, :meth:`load` and
    :meth:`checkpoints` are collectives: rank 0 decides, writes and chooses the file to load;
    ``save`` returns once the file is durable; RNG and :data:`PER_RANK` states are kept per rank."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        monitor: str = "val_loss",
        mode: str | None = None,
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
        if new := _STRATEGY_ALIASES.get(strategy) if isinstance(strategy, str) else None:
            message = f"checkpoint strategy {strategy!r} is deprecated; use {new!r} (the same rule)"
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            strategy = new
        self.strategy = check_choice("strategy", strategy, STRATEGIES)
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name (str), got {type(monitor).__name__}")
        self.mode = metric_mode(monitor, mode)
        self.max_keep = check_int("max_keep", max_keep, min=1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, min=1)
        self.total_epochs = check_int("total_epochs", total_epochs, min=1, optional=True)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, min=1, optional=True)
        self.every_n_minutes = check_float(
            "every_n_minutes", every_n_minutes, min=0, low_open=True, optional=True
        )
        if strategy == "time" and every_n_minutes is None:
            raise ValueError("strategy='time' needs every_n_minutes=<minutes between writes>")
        if strategy == "improvement_or_final" and total_epochs is None:
            raise ValueError("strategy='improvement_or_final' needs total_epochs=<planned epochs>")
        for key, value, reader in (
            ("total_epochs", total_epochs, "improvement_or_final"),
            ("every_n_minutes", every_n_minutes, "time"),
        ):
            if value is not None and strategy != reader:
                raise ValueError(f"{key}={value!r} is unused: only strategy={reader!r} reads it")
        self.min_improvement = check_float("min_improvement", min_improvement, min=0)
        self.directory, self.monitor = check_folder("directory", directory), monitor
        self.read_only = check_bool("read_only", read_only)
        self.async_save = check_bool("async_save", async_save)
        self.durable = check_bool("durable", durable)
        self._clock: Callable[[], float] = time.time
        self._created = self._clock()
        self._thread = self._error = self._lock = None
        self._pool: dict[tuple, torch.Tensor] = {}  # cpu_copy's buffers, reused by each save
        self._group = is_distributed()  # rank 0 writes and decides; the other ranks follow it
        self._last: tuple[int, int | None] | None = None  # (epoch, batch_in_epoch) saved/loaded
        if not self.read_only and is_main():
            check_folder("directory", self.directory, writable=True)
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"directory {self.directory} cannot be created: {error}") from None
            self._lock = _FolderLock.acquire(self.directory, self)
        self._entries: list[dict[str, Any]] = self._open()

    def close(self) -> None:
        """Finish a background save and release the folder's writer lock (idempotent)."""
        try:
            self.wait()
        finally:
            if self._writing():
                self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writing(self) -> bool:
        """This manager may change the folder (not read-only, not closed or superseded)."""
        owner = self._lock.owner if self._lock is not None else None
        return owner is not None and owner() is self

    def _current(self) -> list[dict[str, Any]]:
        """The kept entries; a reader (or a superseded writer) re-reads the folder."""
        if not self._writing():
            self._entries = self._open()
        return self._entries

    def __repr__(self) -> str:
        rule = f"strategy={self.strategy!r}, monitor={self.monitor!r}, mode={self.mode!r}"
        kept = f"max_keep={self.max_keep}, kept={len(self._entries)}"
        return f"CheckpointManager({str(self.directory)!r}, {rule}, {kept})"

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def _open(self) -> list[dict[str, Any]]:
        """Valid entries of present files and adopted orphans; a writer also prunes and rewrites."""
        writing = self._writing()
        if not writing and not self.directory.is_dir():
            return []
        entries = [e for e in map(self._valid_entry, self._read_manifest()) if e is not None]
        present = []
        for entry in entries:
            if _regular_file(self.directory / entry["name"]):
                present.append(entry)
            elif writing:  # (a reader may race the writer's pruning: no news)
                missing = f"{entry['name']} is in the manifest but missing"
                warnings.warn(f"checkpoint {missing}; forgetting it", stacklevel=3)
        known = {e["name"] for e in present}
        for path in sorted(self.directory.iterdir()):
            tmp = _TMP.fullmatch(path.name)
            if tmp and writing and (tmp["target"] == MANIFEST or _NAME.fullmatch(tmp["target"])):
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    stale = time.time() - info.st_mtime > _STALE_AFTER_S
                    if stat.S_ISREG(info.st_mode) and (stale or _writer_gone(int(tmp["pid"]))):
                        path.unlink()
            elif not _NAME.fullmatch(path.name) or path.name in known:
                continue
            elif not _regular_file(path):
                why = "not a regular file (a symbolic link or a folder is never a checkpoint here)"
                warnings.warn(f"ignoring {path.name} in {self.directory}: {why}", stacklevel=3)
            elif (adopted := self._adopt(path)) is not None:
                present.append(adopted)
        present.sort(key=_SEQ)
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
            action = "reading the files"
            if self._writing():
                aside = path.with_name(f"{MANIFEST}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                action = f"moved it to {aside.name} and rebuilt the index from the checkpoint files"
            warnings.warn(f"{path} is unusable ({error}); {action}", stacklevel=4)
            return []

    def _valid_entry(self, raw: Any) -> dict[str, Any] | None:
        """``raw`` as an entry naming a plain ``epoch-NNNN.pt`` of this folder, else ``None``."""
        entry = {"metrics": {}, "value": math.nan, **raw} if isinstance(raw, dict) else {}
        name, roles = entry.get("name"), entry.get("roles")
        wrong = [key for key, types in _TYPES.items() if type(entry.get(key)) not in types]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problem = "its name is not a checkpoint file name of this folder (epoch-NNNN.pt)"
        elif wrong:
            problem = f"its {', '.join(wrong)} missing or of the wrong type"
        elif not all(role in _ROLES for role in roles):
            problem = f"its roles are not drawn from {_ROLES}"
        else:
            when = float(entry["time"]) if type(entry.get("time")) in (int, float) else 0.0
            fixed = {"value": float(entry["value"]), "roles": list(roles), "time": when}
            return {key: entry.get(key) for key in _FIELDS} | fixed
        shown = repr(name) if isinstance(name, str) else repr(raw)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        message = f"ignoring manifest entry {shown} in {self.manifest_path}: {problem}"
        warnings.warn(message, stacklevel=5)
        return None

    def _adopt(self, path: Path) -> dict[str, Any] | None:
        try:
            payload = self._read(path, None, "cpu", trusted=False)
            size = path.stat().st_size
        except Exception as error:  # any failure means "do not adopt"
            warnings.warn(f"ignoring unreadable checkpoint {path.name}: {error}", stacklevel=4)
            return None
        metrics = dict(payload.get("metrics") or {})
        roles = _STRATEGY_ROLES.get(self.strategy, ["regular"])
        legacy = payload["format"] == _FORMAT_V1
        return self._valid_entry(
            payload
            | {"name": path.name, "metrics": metrics, "value": self._value(metrics, required=False)}
            | {"roles": ["resume"] if payload.get("batch_in_epoch") is not None else roles}
            | {"crc32": zlib.crc32(path.read_bytes()) if legacy else None, "size": size}
        )

    def _write_manifest(self, entries: list[dict[str, Any]]) -> None:
        doc = {"format": FORMAT, "strategy": self.strategy, "monitor": self.monitor}
        doc |= {"mode": self.mode, "max_keep": self.max_keep, "files": entries}
        text = json.dumps(doc, indent=1).encode()
        # Not fsynced (rebuilt from the files if lost); the folder fsync makes both renames durable
        _atomic_write(self.manifest_path, lambda f: f.write(text), fsync_dir=self.durable)

    def _value(self, metrics: Mapping[str, Any], *, required: bool) -> float:
        if required and self.monitor not in metrics:
            ranks = f"strategy={self.strategy!r} ranks checkpoints by monitor={self.monitor!r}"
            raise ValueError(f"{ranks}, not among the metrics given to save(): {sorted(metrics)}")
        value = metrics.get(self.monitor, math.nan)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metrics[{self.monitor!r}] must be a number, got {value!r}") from None

    def _rank(self, entry: Mapping[str, Any]) -> tuple[float, int]:
        return (entry["value"] if self.mode == "min" else -entry["value"], entry["seq"])

    def _top(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        candidates = [e for e in entries if "best" in e["roles"] and math.isfinite(e["value"])]
        return sorted(candidates, key=self._rank)[: self.max_keep]

    def _plan_roles(self, epoch: int, value: float, seq: int) -> list[str] | None:
        if self.strategy in _STRATEGY_ROLES:
            new = {"value": value, "seq": seq, "roles": ["best"]}
            regular = ["regular"] if self.strategy == "all" else []
            return regular + (["best"] if new in self._top([*self._entries, new]) else []) or None
        last = max((e for e in self._entries if "resume" not in e["roles"]), key=_SEQ, default=None)
        if self.strategy == "improvement_or_final":  # relative gain over the last write's value
            ref = last["value"] if last else math.nan
            gain = (ref - value if self.mode == "min" else value - ref) / (abs(ref) or 1.0)
            threshold = self.min_improvement if ref else 0
            improved = math.isfinite(value) and (not math.isfinite(ref) or gain > threshold)
            write = improved or epoch >= self.total_epochs - math.ceil(self.total_epochs / 10)
        elif self.strategy == "time":
            since = last["time"] if last is not None else self._created
            write = self._clock() - since >= 60.0 * self.every_n_minutes
        else:
            write = self.strategy == "epoch" or (epoch + 1) % self.every_n_epochs == 0
        return ["regular"] if write else None

    def _retain(self, entries: list[dict[str, Any]]) -> tuple[list, list]:
        latest = max(entries, key=_SEQ)["name"]
        regular = sorted((e for e in entries if "regular" in e["roles"]), key=_SEQ)
        keep = {"regular": {e["name"] for e in regular[-self.max_keep :]}, "resume": {latest}}
        keep["best"] = {e["name"] for e in self._top(entries)}
        trimmed = [{**e, "roles": [r for r in e["roles"] if e["name"] in keep[r]]} for e in entries]
        kept = [e for e in trimmed if e["roles"] or e["name"] == latest]
        return kept, [e for e in trimmed if not (e["roles"] or e["name"] == latest)]

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
        """Checkpoint ``objects`` (with ``state_dict()``, or ``torch.Generator``) after ``epoch`` if
        the strategy says so, or, with ``batch_in_epoch`` (batches of ``epoch`` done), as a
        mid-epoch resume point; ``step`` and ``extra`` (plain values) come back from :meth:`load`.
        Returns the path (complete after :meth:`wait`) or ``None`` if skipped; refuses a point
        before this manager's last save or :meth:`load` (epoch 0 starts a new run)."""
        epoch = check_int("epoch", epoch, min=0)
        step = check_int("step", step, min=0, optional=True)
        batch_in_epoch = check_int("batch_in_epoch", batch_in_epoch, min=0, optional=True)
        if not isinstance(metrics, Mapping | None):
            got = f"{type(metrics).__name__} {metrics!r}"[:200]
            raise TypeError(f"metrics must be a mapping of names to values, or None; got {got}")
        if epoch and self._last and _point(epoch, batch_in_epoch) < _point(*self._last):
            at = f"epoch={epoch}, batch_in_epoch={batch_in_epoch}"
            back = f"save({at}) is behind this manager's last save or load {self._last}"
            raise ValueError(f"{back}: load() a checkpoint to go back (epoch 0 starts a new run)")
        objects = {key: obj for key, obj in objects.items() if obj is not None}
        args = (epoch, metrics, step, batch_in_epoch, extra, objects)
        if not self._group:
            path = self._save(*args)
        else:  # every rank's RNG and PER_RANK states go to rank 0, which saves; its outcome to all
            mine = {key: _object_state(key, obj) for key, obj in objects.items() if key in PER_RANK}
            ranks = gather({"rng": capture_rng_state(), "objects": mine})
            path = error = None
            if is_main():
                try:
                    path = self._save(*args, per_rank=ranks)
                    self.wait()  # durable before any rank goes on
                except Exception as failure:
                    error = failure
            failed = None if error is None else f"{type(error).__name__}: {error}"
            path, failed = broadcast((path, failed))
            if failed is not None:  # rank 0 raises its own error, the others say it failed
                raise error or CheckpointError(f"rank 0 could not save the checkpoint: {failed}")
        self._last = (epoch, batch_in_epoch)
        return path

    def _save(self, epoch, metrics, step, batch_in_epoch, extra, objects, per_rank=None) -> Any:
        if not self._writing():  # a read_only manager never writes
            why = "opened read_only" if self.read_only else "closed, or a newer manager took over"
            raise CheckpointError(f"this manager of {self.directory} cannot save: it was {why}")
        self.wait()
        plain = {}  # the metrics that are (or are scalar tensors of) plain values
        for key, value in (metrics or {}).items():
            if isinstance(value, np.generic) or (torch.is_tensor(value) and value.numel() == 1):
                value = value.item()
            if isinstance(value, bool | int | float | str | None):
                plain[str(key)] = value
        if self.monitor in plain:  # a str or a bool is no value to rank checkpoints by
            check_float(f"metrics[{self.monitor!r}]", plain[self.monitor], finite=False)
        seq = max((e["seq"] for e in self._entries), default=-1) + 1
        if batch_in_epoch is None:
            required = self.strategy in ("best", "all", "improvement_or_final")
            value = self._value(plain, required=required)
            if (roles := self._plan_roles(epoch, value, seq)) is None:
                return None
            name = f"epoch-{epoch:04d}.pt"
        else:
            value, roles = math.nan, ["resume"]
            name = f"epoch-{epoch:04d}-step-{int(step or 0):07d}.pt"
        states = {key: _object_state(key, obj) for key, obj in objects.items()}
        payload = {"format": FORMAT, "seq": seq, "epoch": epoch, "step": step}
        payload |= {"batch_in_epoch": batch_in_epoch, "metrics": plain}
        payload |= {"extra": _check_plain(dict(extra or {}), "extra"), "time": self._clock()}
        payload["torch_version"] = str(torch.__version__)
        payload["objects"] = {key: _check_plain(state, key) for key, state in states.items()}
        payload["rng"] = capture_rng_state()
        if per_rank is not None:
            payload["per_rank"] = [_check_plain(s, f"rank {r}") for r, s in enumerate(per_rank)]
        entry = payload | {"name": name, "value": value, "roles": roles}
        entry = {key: entry.get(key) for key in _FIELDS}
        kept, dropped = self._retain([*(e for e in self._entries if e["name"] != name), entry])
        path = self.directory / name
        if self.async_save:
            args = (path, cpu_copy(payload, self._pool), kept, dropped)
            self._thread = threading.Thread(target=self._write_in_background, args=args)
            self._thread.start()
        else:
            self._write(path, payload, kept, dropped)
        self._entries = kept
        return path

    def _write(self, path: Path, payload: dict, kept: list, dropped: list) -> None:
        checksum = payload_checksum(payload)  # off the loop's thread under async_save
        payload = {**payload, "checksum": checksum}
        size = _atomic_write(path, lambda f: torch.save(payload, f), fsync_file=self.durable)
        next(e for e in kept if e["name"] == path.name).update(checksum=checksum, size=size)
        self._write_manifest(kept)
        for entry in dropped:  # only this manager's regular files, nothing else, ever
            doomed = self.directory / entry["name"]
            if doomed.name != path.name and _NAME.fullmatch(doomed.name) and _regular_file(doomed):
                doomed.unlink(missing_ok=True)

    def _write_in_background(self, path: Path, payload: dict, kept: list, dropped: list) -> None:
        try:
            self._write(path, payload, kept, dropped)
        except BaseException as error:  # re-raised by wait()
            self._error = error

    def wait(self) -> None:
        """Block until a background save is done; ``CheckpointError`` if it failed (manifest re-read)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            self._entries = self._open()
            raise CheckpointError(f"background checkpoint save failed: {error}") from error

    def _best(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        return min((e for e in entries if math.isfinite(e["value"])), key=self._rank, default=None)

    @property
    def best_path(self) -> Path | None:
        """The kept checkpoint with the best finite ``monitor`` value (``None`` if none)."""
        return next((info.path for info in self.checkpoints() if info.is_best), None)

    @property
    def latest_path(self) -> Path | None:
        """The most recently written checkpoint (``None`` before the first write)."""
        return next((info.path for info in self.checkpoints() if info.is_latest), None)

    def checkpoints(self) -> list[CheckpointInfo]:
        """The kept checkpoints, oldest first (in a process group: rank 0's list)."""
        entries = sorted(self._current() if is_main() else [], key=_SEQ)
        entries = broadcast(entries) if self._group else entries
        best, latest = self._best(entries), entries[-1] if entries else None
        return [
            CheckpointInfo(
                *(self.directory / e["name"], e["epoch"], e["step"], e["batch_in_epoch"]),
                *(dict(e["metrics"]), e["value"], tuple(e["roles"]), e is best, e is latest),
            )
            for e in entries
        ]

    def _read(self, path: Path, entry: dict | None, map_location: Any, trusted: bool) -> dict:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist") from None
        recorded, crc32 = (entry or {}).get("size"), (entry or {}).get("crc32")  # crc32: format 1
        if recorded is not None and size != recorded:
            problem = f"is truncated or corrupt: {size} bytes, the manifest records {recorded}"
            raise CheckpointError(f"checkpoint {path} {problem}")
        if crc32 is not None and zlib.crc32(path.read_bytes()) != crc32:
            problem = "is corrupt: its CRC-32 does not match the manifest"
            raise CheckpointError(f"checkpoint {path} {problem}")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=not trusted)
        except Exception as error:  # zip/pickle errors of damaged files vary
            text, unpickling = str(error), isinstance(error, pickle.UnpicklingError)
            with open(path, "rb") as f:
                zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes zip files
            if size and not zipped:
                not_one = f"{path} is not a checkpoint (not a zip file that torch.save wrote)"
                raise CheckpointError(not_one) from error
            if unpickling and ("weights_only" in text or "Weights only" in text):
                found = re.search(r"GLOBAL ([\w.]+)", text)
                detail = f"it references {found.group(1)!r}" if found else "not only tensors"
                refused = f"refused to load {path}: it contains pickled Python objects ({detail})"
                risk = "Unpickling runs whatever code the file names, so a checkpoint from the "
                risk += "internet can take over your machine."
                trust = "Load it with trusted=True only if you trust its source."
                raise UnsafeCheckpointError(f"{refused}. {risk} {trust}") from error
            text = text if unpickling else f"{type(error).__name__}: {text}"
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {text}") from error
        if not isinstance(payload, Mapping) or payload.get("format") not in (FORMAT, _FORMAT_V1):
            raise CheckpointError(f"{path} is not a stabletrain checkpoint ({FORMAT})")
        payload = dict(payload)
        if payload["format"] == FORMAT:
            stored = payload.pop("checksum", None)
            if stored != payload_checksum(payload):
                problem = "is corrupt: the checksum stored in the file does not match its contents"
                raise CheckpointError(f"checkpoint {path} {problem} (a damaged tensor or value)")
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
        """Restore ``objects`` (by their saved names) and the RNG states from ``which``
        (``"latest"``, ``"best"`` or a path; ``"latest"`` falls back, with a warning, to the newest
        intact file); ``trusted=True`` allows pickled objects, which can run any code. Returns
        ``{"epoch", "step", "batch_in_epoch", "metrics", "extra", "path"}``. ``CheckpointError``: no
        checkpoint, a damaged file, a missing object or a state that does not fit its object."""
        if isinstance(map_location, str | torch.device):
            device = as_device("map_location", map_location)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"map_location={map_location!r}: CUDA is not available here")
        self.wait()
        path = payload = error = None
        if not self._group or is_main():  # in a process group rank 0 chooses for every rank
            try:
                path, payload = self._select(which, map_location, trusted)
            except (CheckpointError, TypeError) as failure:
                error = failure
        path, error = broadcast((path, error)) if self._group else (path, error)
        if error is not None:
            raise error
        if payload is None:  # a rank other than 0 reads the file rank 0 chose
            payload = self._read(path, None, map_location, trusted)
        stored = payload.get("objects", {})
        if payload.get("per_rank") is not None:  # this rank's own states
            own = payload["per_rank"][rank()] if rank() < len(payload["per_rank"]) else {}
            stored = {**stored, **own.get("objects", {})}
            payload = {**payload, "rng": own.get("rng", payload.get("rng"))}
        objects = {name: obj for name, obj in objects.items() if obj is not None}
        if missing := [name for name in objects if name not in stored]:
            holds = f"holds no state for {missing}; it holds {sorted(stored)}"
            raise CheckpointError(f"checkpoint {path} {holds}")
        for name, obj in objects.items():
            state, generator = stored[name], isinstance(obj, torch.Generator)
            if generator and not (isinstance(state, Mapping) and "generator_state" in state):
                raise CheckpointError(f"object {name!r} in the checkpoint is not a generator state")
            if not generator and not callable(getattr(obj, "load_state_dict", None)):
                raise TypeError(f"object {name!r} ({type(obj).__name__}) has no load_state_dict()")
            restore = obj.set_state if generator else obj.load_state_dict
            try:
                restore(state["generator_state"] if generator else state)
            except RuntimeError as error:  # torch's size mismatches, missing or unexpected keys
                fits = f"its {name!r} state does not fit the {type(obj).__name__} given"
                raise CheckpointError(f"checkpoint {path}: {fits}: {error}") from error
        if restore_rng and payload.get("rng") is not None:
            restore_rng_state(payload["rng"])
        info = {key: payload.get(key) for key in ("epoch", "step", "batch_in_epoch")}
        if isinstance(info["epoch"], int):  # a resume or a rewind: saves go on from here
            self._last = (info["epoch"], info["batch_in_epoch"])
        extras = {key: dict(payload.get(key) or {}) for key in ("metrics", "extra")}
        return info | extras | {"path": path}

    def _select(self, which: Any, map_location: Any, trusted: bool) -> tuple[Path, dict]:
        if which in ("latest", "best"):
            entries = sorted(self._current(), key=_SEQ, reverse=True)
            if not entries:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            if which == "best" and (entries := [self._best(entries)]) == [None]:
                finite = f"has a finite {self.monitor!r}"
                raise CheckpointError(f"no checkpoint in {self.directory} {finite}")
            candidates = [(self.directory / e["name"], e) for e in entries]
        elif isinstance(which, str | os.PathLike):
            path = Path(which)
            if not path.exists() and (self.directory / path).exists():
                path = self.directory / path
            own = path.resolve().parent == self.directory.resolve()
            entry = {e["name"]: e for e in self._current()}.get(path.name)
            candidates = [(path, entry if own else None)]
        else:
            raise TypeError(f"which must be 'latest', 'best' or a path, got {type(which).__name__}")
        failures = []
        for path, entry in candidates:
            try:
                payload = self._read(path, entry, map_location, trusted)
                break
            except CheckpointError as error:
                if which != "latest" or isinstance(error, UnsafeCheckpointError):
                    raise
                failures.append(str(error))
        else:
            failed = "; ".join(failures)
            raise CheckpointError(f"no intact checkpoint in {self.directory}: {failed}")
        if failures:
            fell = f"could not be read ({'; '.join(failures)}); fell back to {path.name}"
            warnings.warn(f"{len(failures)} newer checkpoint(s) {fell}", stacklevel=3)
        return path, payload
