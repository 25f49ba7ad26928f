"""``polybundle.CheckpointManager``: numbered training checkpoints in one directory.

Each checkpoint is an ordinary format-2 bundle (weights, optimizer state,
params, RNG state) named ``checkpoint-<step>.bundle``. The index
``checkpoints.json`` lists the retained checkpoints in save order and the
metrics of every step ever saved (``history``). A save writes the bundle
atomically, then the index atomically, and only then deletes the checkpoints
that fall out of retention, so a crash at any moment leaves an index that
names only complete, committed bundles. One process writes a directory at a
time (a lock file enforces it where the OS supports ``fcntl``).

The index is not trusted: every record's ``file`` must be a plain
``checkpoint-<step>.bundle`` name inside the directory, and steps, metrics and
dates must have their types. A damaged index (invalid JSON, too deep, a record
pointing elsewhere, wrong types) is replaced by a scan of the directory's
bundles that pass :func:`polybundle.verify`, with a :class:`DamagedIndexWarning`;
the next save writes a good index again. Readers never fail because a
concurrent writer pruned the checkpoint they were about to open: they read the
index again and retry.

Example (the last two checkpoints and the best one are kept):
    >>> opt = torch.optim.Adam(net.parameters())
    >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
    >>> for step, val_loss in [(100, 0.31), (200, 0.21), (300, 0.27), (400, 0.29)]:
    ...     net(torch.ones(1, 4)).sum().backward()
    ...     opt.step()
    ...     _ = manager.save(step, {"net": net}, optimizers={"net": opt},
    ...                      metrics={"val_loss": val_loss})
    >>> [checkpoint.step for checkpoint in manager.checkpoints()]
    [200, 300, 400]
    >>> bundle = manager.restore(into={"net": net})  # the latest, step 400
    >>> fresh = torch.optim.Adam(net.parameters())
    >>> bundle.restore_optimizer("net", fresh)
    >>> fresh.state_dict()["state"][0]["step"]
    tensor(4.)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import stat
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from polybundle.api.async_writer import BackgroundWriter
from polybundle.api.bundle import Bundle
from polybundle.api.loading import load
from polybundle.api.saving import HostCopies, PreparedSave, prepare_save, write_prepared
from polybundle.api.verify import verify
from polybundle.errors import CheckpointError, FormatError, PolybundleError
from polybundle.format import digests
from polybundle.format.jsondoc import load_json
from polybundle.format.storage import is_url, locate
from polybundle.format.writer import atomic_write_bytes, file_mode, write_error

INDEX_NAME = "checkpoints.json"
"""The index file inside a checkpoint directory."""
INDEX_FORMAT = "polybundle-checkpoints"
_PREFIX = "checkpoint-"
_SUFFIX = ".bundle"
_LOCK_NAME = ".checkpoints.lock"
_FILE = re.compile(r"^checkpoint-(?P<step>[0-9]{1,19})\.bundle$")
_READ_ATTEMPTS = 20
"""How often a reader re-reads the index when the checkpoint it named has just been pruned."""
_MAX_TEXT = 200  # longest date string an index record may hold
MAX_INDEX_BYTES = 256 * 1024 * 1024
"""Largest index read (about two million saved steps); a larger one counts as damaged."""
_HELD_LOCKS: set[IO[bytes]] = set()
"""Writer locks this process holds now (an asynchronous save holds one while it writes)."""


def _release_inherited_locks() -> None:
    """In a forked child, close the lock files inherited from the parent.

    An ``flock`` lock belongs to the open file, which a fork shares: a child
    forked while a background save holds the lock (a ``DataLoader`` worker)
    would otherwise keep the directory locked after the parent's save ends.
    Closing the child's copy leaves the parent's lock as it is.
    """
    for lock in list(_HELD_LOCKS):
        lock.close()
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_inherited_locks)


class DamagedIndexWarning(UserWarning):
    """The checkpoint index is damaged; the directory's verified bundles are used instead.

    Example:
        >>> issubclass(DamagedIndexWarning, UserWarning)
        True
    """


@dataclass(frozen=True)
class Checkpoint:
    """One retained checkpoint: its step, bundle path, metrics and save time.

    Example:
        >>> manager = CheckpointManager("ckpt")
        >>> manager.save(100, {"net": net}, metrics={"loss": 0.5})
        Checkpoint(step=100, path=PosixPath('ckpt/checkpoint-0000000100.bundle'),
                   metrics={'loss': 0.5}, created='...')
    """

    step: int
    path: Path
    metrics: dict[str, Any]
    created: str


def write_json_atomically(path: Path, document: Any, *, mode: int | None = None) -> None:
    """Write ``document`` as JSON to ``path`` so readers see the old file or the new one.

    The file gets ``0o666`` less the umask, or ``mode`` when given.

    An OS error (full disk, read-only folder) raises a
    :class:`~polybundle.errors.WriteError` and leaves no temporary file.

    Example:
        >>> write_json_atomically(Path("index.json"), {"steps": []})
        >>> json.loads(Path("index.json").read_text())
        {'steps': []}
    """
    data = json.dumps(document, indent=1, allow_nan=False).encode("utf-8")
    atomic_write_bytes(path, data, mode=mode)


def _finite(value: int | float) -> bool:
    """Return True when ``value`` is a finite float, or an int a float can hold.

    Example:
        >>> _finite(0.5), _finite(float("nan")), _finite(10**400)
        (True, False, False)
    """
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float range (10**400)
        return False


def _empty_index() -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "version": 1, "checkpoints": [], "history": []}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _record_problem(record: Any, *, with_file: bool) -> str | None:
    """Return what is wrong with one index record, or None when it is well formed.

    Example:
        >>> _record_problem({"step": 1, "file": "../x", "metrics": {}, "created": ""},
        ...                 with_file=True)
        "its file '../x' is not a plain checkpoint-<step>.bundle name inside the directory"
    """
    if not isinstance(record, dict):
        return f"a record is a {type(record).__name__}, not an object"
    keys = {"step", "metrics", "created"} | ({"file"} if with_file else set())
    if set(record) != keys:
        return f"a record has the keys {_short(sorted(record))}; expected {sorted(keys)}"
    step, metrics, created = record["step"], record["metrics"], record["created"]
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 10**19:
        return f"a record's step is {_short(step)}; expected an int >= 0"
    if with_file and (not isinstance(record["file"], str) or not _FILE.match(record["file"])):
        return (f"its file {_short(record['file'])} is not a plain checkpoint-<step>.bundle "
                "name inside the directory")
    if not isinstance(created, str) or len(created) > _MAX_TEXT:
        return f"step {step}'s created is {_short(created)}; expected a date string"
    if not isinstance(metrics, dict):
        return f"step {step}'s metrics is {_short(metrics)}; expected an object"
    for name, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not _finite(value):
            return f"step {step}'s metric {_short(name)} is {_short(value)}; expected a number"
    return None


def index_problem(document: Any) -> str | None:
    """Return what is wrong with a parsed checkpoint index, or None when it is valid.

    Example:
        >>> index_problem({"format": INDEX_FORMAT, "version": 1, "checkpoints": [],
        ...                "history": []}) is None
        True
        >>> index_problem({"format": INDEX_FORMAT, "checkpoints": {}, "history": []})
        "expected format 'polybundle-checkpoints' with checkpoints and history lists"
    """
    valid = (
        isinstance(document, dict)
        and document.get("format") == INDEX_FORMAT
        and isinstance(document.get("checkpoints"), list)
        and isinstance(document.get("history"), list)
    )
    if not valid:
        return f"expected format {INDEX_FORMAT!r} with checkpoints and history lists"
    for records, with_file in ((document["checkpoints"], True), (document["history"], False)):
        for record in records:
            problem = _record_problem(record, with_file=with_file)
            if problem is not None:
                return problem
        steps = [record["step"] for record in records]
        if len(set(steps)) != len(steps):
            return "a step is listed twice"
    return None


def parse_index(data: bytes) -> tuple[dict[str, Any], str | None]:
    """Return ``(index, None)`` from the bytes of ``checkpoints.json``, or ``(empty index,
    what is wrong)`` when they are not a valid index.

    Example:
        >>> parse_index(json.dumps(_empty_index()).encode())[1] is None
        True
        >>> parse_index(b"[]")[1]
        "expected format 'polybundle-checkpoints' with checkpoints and history lists"
    """
    try:
        document = load_json(data, where=INDEX_NAME)
    except FormatError as exc:
        return _empty_index(), str(exc)
    problem = index_problem(document)
    return (document, None) if problem is None else (_empty_index(), problem)


def _check_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"metrics is a {type(metrics).__name__}; expected a dict.")
    for name, value in metrics.items():
        plain = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(name, str) or not plain or not _finite(value):
            raise CheckpointError(
                f"metric {name!r} is {value!r}; expected a str name and a finite int or float "
                "(call float() on tensors)."
            )
    return dict(metrics)


def _check_keep_best(keep_best: Any) -> tuple[str, str, int] | None:
    if keep_best is None:
        return None
    if isinstance(keep_best, (tuple, list)) and len(keep_best) in (2, 3):
        metric, mode, *rest = keep_best
        count = rest[0] if rest else 1
        if isinstance(metric, str) and mode in ("min", "max") and isinstance(count, int) \
                and count >= 1:
            return metric, mode, count
    raise CheckpointError(
        f"keep_best is {keep_best!r}; expected (metric, 'min' or 'max') or "
        "(metric, mode, how many), e.g. ('val_loss', 'min')."
    )


class CheckpointManager:
    """Save, retain, list and restore checkpoints of a training run.

    ``keep_last`` keeps the most recent saves (``None`` keeps all);
    ``keep_best=(metric, "min" | "max"[, count])`` also keeps the best
    ``count`` checkpoints by that metric. ``latest`` is the most recent save.
    Bundles and the index get the permissions of any file a tool writes
    (``0o666`` less the umask), or ``mode`` when given (``0o600``: only the
    owner reads them). ``digest`` names the algorithm of the bundles' member
    digests, as for :func:`polybundle.save` (``"xxh3-128"`` or ``"sha256"``).

    With ``async_save=True``, :meth:`save` copies the weights and optimizer
    slots to host memory (through the backend, into the previous save's
    buffers) and returns; one background thread writes, hashes, fsyncs and
    commits the bundle, then the index, then prunes, exactly as a synchronous
    save does. At most one save is in flight: the next :meth:`save` waits for
    it, and so do the reading methods, so they see it. A failure in the
    background is raised by the next call (see :meth:`wait_until_finished`).
    A process that ends normally finishes the write first; one killed
    mid-write keeps the previous checkpoint as :meth:`latest`. The copies stay
    allocated for the next save (:meth:`host_bytes`).

    Example:
        >>> manager = CheckpointManager("ckpt", keep_last=3)
        >>> manager.latest() is None
        True
        >>> for step in (10, 20, 30, 40):
        ...     _ = manager.save(step, {"net": net}, metrics={"loss": 1 / step})
        >>> manager.latest().step, [c.step for c in manager.checkpoints()]
        (40, [20, 30, 40])
        >>> sorted(path.name for path in Path("ckpt").glob("*.bundle"))[0]
        'checkpoint-0000000020.bundle'
        >>> private = CheckpointManager("private", mode=0o600)
        >>> oct(private.save(1, {"net": net}).path.stat().st_mode & 0o777)
        '0o600'
        >>> oct(private.index_path.stat().st_mode & 0o777)
        '0o600'
        >>> import copy
        >>> background = CheckpointManager("async", async_save=True)
        >>> _ = background.save(1, {"net": net})
        >>> with torch.no_grad():
        ...     _ = net[0].weight.zero_()  # training goes on at once
        >>> restored = background.restore(into={"net": copy.deepcopy(net)})  # waits for step 1
        >>> bool((restored.models["net"][0].weight != 0).any())
        True
    """

    url_manager: type[CheckpointManager] | None = None
    """The subclass made for a URL directory (set by :mod:`polybundle.api.remote_checkpoints`)."""

    def __new__(cls, directory: Any, **options: Any) -> CheckpointManager:
        if cls is CheckpointManager and is_url(directory) and cls.url_manager is not None:
            return super().__new__(cls.url_manager)  # a bucket or another fsspec store
        return super().__new__(cls)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep_last: int | None = 3,
        keep_best: tuple[Any, ...] | None = None,
        mode: int | None = None,
        storage_options: dict[str, Any] | None = None,
        filesystem: Any = None,
        digest: str = digests.DEFAULT,
        async_save: bool = False,
    ) -> None:
        locate(directory, storage_options, filesystem)  # options without a URL are refused
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise CheckpointError(
                f"keep_last is {keep_last!r}; expected an int >= 1, or None to keep every one."
            )
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(
                f"{str(self.directory)!r} is a file; expected a directory for checkpoints."
            )
        self.keep_last = keep_last
        self.keep_best = _check_keep_best(keep_best)
        self.mode = None if mode is None else file_mode(mode)
        """The bundles' and the index's permission bits; ``None`` follows the umask."""
        self.digest = digests.algorithm(digest).name
        """The algorithm of the bundles' member digests."""
        self.async_save = bool(async_save)
        """Whether :meth:`save` returns once the state is copied, writing in the background."""
        self._host = HostCopies() if self.async_save else None
        self._writer = BackgroundWriter(str(self.directory))

    def host_bytes(self) -> int:
        """Return the host memory held by the last asynchronous save's copies (0 when sync).

        The copies are kept so that the next save reuses them; they are what
        ``async_save=True`` costs in memory: about the size of the weights and
        optimizer slots saved.

        Example:
            >>> manager = CheckpointManager("ckpt", async_save=True)
            >>> _ = manager.save(1, {"net": net})
            >>> manager.host_bytes()  # net holds 23 float32 numbers
            92
        """
        return 0 if self._host is None else self._host.nbytes()

    def wait_until_finished(self) -> None:
        """Block until the save in flight has committed; raise its error if it failed.

        With ``async_save=True`` a failed background save surfaces here, or in
        whichever call comes next (:meth:`save`, :meth:`restore`,
        :meth:`latest`, :meth:`checkpoints`, :meth:`best`, :meth:`history`), as
        a :class:`~polybundle.errors.CheckpointError` whose ``__cause__`` is
        the original error; it is raised once. Returns at once when nothing is
        in flight.

        Example:
            >>> manager = CheckpointManager("ckpt", async_save=True)
            >>> _ = manager.save(1, {"net": net})  # returns once the weights are copied
            >>> manager.wait_until_finished()
            >>> Path("ckpt/checkpoint-0000000001.bundle").is_file()
            True
        """
        self._writer.wait()

    @property
    def index_path(self) -> Path:
        """Return the path of the index file."""
        return self.directory / INDEX_NAME

    def _load_index(self) -> tuple[dict[str, Any], str | None]:
        """Return ``(index, None)``, or ``(empty index, what is wrong)`` when it is damaged."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.index_path, flags)  # a FIFO does not block, a symlink fails
        except FileNotFoundError:
            return _empty_index(), None
        except OSError as exc:
            return _empty_index(), f"it cannot be read ({exc.strerror or exc})"
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return _empty_index(), "it is not a regular file"
            if info.st_size > MAX_INDEX_BYTES:
                return _empty_index(), f"it is {info.st_size} bytes, more than {MAX_INDEX_BYTES}"
            with open(fd, "rb", closefd=False) as stream:
                data = stream.read()  # the writer replaces the file whole: it never grows
        except OSError as exc:
            return _empty_index(), f"it cannot be read ({exc.strerror or exc})"
        finally:
            os.close(fd)
        return parse_index(data)

    def _scan(self) -> list[dict[str, Any]]:
        """Return index records of the directory's checkpoint bundles that pass verify."""

        found: dict[int, dict[str, Any]] = {}
        try:
            entries = sorted(os.scandir(self.directory), key=lambda entry: entry.name)
        except OSError:
            return []
        for entry in entries:
            match = _FILE.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            step = int(match["step"])
            canonical = entry.name == f"{_PREFIX}{step:010d}{_SUFFIX}"
            if step in found and not canonical:
                continue
            try:
                if not verify(entry.path).ok:
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except (PolybundleError, OSError):
                continue
            created = _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc)
            found[step] = {"step": step, "file": entry.name, "metrics": {},
                           "created": created.isoformat(timespec="seconds")}
        return [found[step] for step in sorted(found)]

    def _read_index(self) -> dict[str, Any]:
        """Return the index; when it is damaged, warn and rebuild it from verified bundles."""
        index, problem = self._load_index()
        if problem is None:
            return index
        scanned = self._scan()
        warnings.warn(
            DamagedIndexWarning(
                f"the checkpoint index {str(self.index_path)!r} is damaged ({problem}); using "
                f"the {len(scanned)} checkpoint bundle(s) of the directory that pass "
                "polybundle.verify instead (their metrics are lost). The next save writes a "
                "new index."
            ),
            stacklevel=3,
        )
        history = [{key: e[key] for key in ("step", "metrics", "created")} for e in scanned]
        return {**_empty_index(), "checkpoints": scanned, "history": history}

    def _checkpoint(self, entry: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            entry["step"], self.directory / entry["file"], entry["metrics"], entry["created"]
        )

    def _lock(self) -> IO[bytes] | None:
        """Take the directory's writer lock, or raise when another process holds it.

        Returns the open lock file (closing it releases the lock), or ``None``
        where the platform has no advisory locks.
        """
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return None
        try:
            lock = open(self.directory / _LOCK_NAME, "a+b")
        except OSError as exc:
            raise write_error(exc, self.directory / _LOCK_NAME) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise CheckpointError(
                f"another process is saving into {str(self.directory)!r}; one writer per "
                "checkpoint directory."
            ) from None
        _HELD_LOCKS.add(lock)
        return lock

    @staticmethod
    def _unlock(lock: IO[bytes] | None) -> None:
        """Release a lock :meth:`_lock` took."""
        if lock is not None:
            _HELD_LOCKS.discard(lock)
            lock.close()

    def _retained(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = set(range(len(entries)))
        if self.keep_last is not None:
            keep = set(range(max(0, len(entries) - self.keep_last), len(entries)))
        if self.keep_best is not None:
            metric, mode, count = self.keep_best
            ranked = [i for i, e in enumerate(entries) if metric in e["metrics"]]
            sign = 1 if mode == "min" else -1
            ranked.sort(key=lambda i: (sign * entries[i]["metrics"][metric], i))
            keep |= set(ranked[:count])
        return [entry for i, entry in enumerate(entries) if i in keep]

    def _prune(self, kept: Iterable[dict[str, Any]]) -> None:
        names = {entry["file"] for entry in kept}
        for path in self.directory.iterdir():
            stale_temp = path.name.startswith(f".{_PREFIX}") or path.name.startswith(
                f".{INDEX_NAME}."
            )
            ours = path.name.startswith(_PREFIX) and path.name.endswith(_SUFFIX)
            if (ours and path.name not in names) or (stale_temp and path.suffix == ".tmp"):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    raise write_error(
                        exc, path, "The checkpoint was saved, but an old one was not pruned."
                    ) from None

    def save(
        self,
        step: int,
        models: dict[str, Any],
        *,
        optimizers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        schedulers: dict[str, Any] | None = None,
        architectures: dict[str, Any] | None = None,
        rng: bool = True,
    ) -> Checkpoint:
        """Save a checkpoint for ``step``, update the index, then prune; return it.

        Arguments are those of :func:`polybundle.save`; ``metrics`` are plain
        numbers kept in the index (and in :meth:`history` for good). Saving a
        step again replaces its checkpoint. With ``async_save=True`` it
        returns once the state is copied; the returned checkpoint's file
        appears when the background write commits.

        Example:
            >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            >>> net(torch.ones(1, 4)).sum().backward()
            >>> opt.step()
            >>> manager = CheckpointManager("ckpt")
            >>> manager.save(200, {"net": net}, optimizers={"net": opt},
            ...              metrics={"val_loss": 0.28}).path.name
            'checkpoint-0000000200.bundle'
            >>> manager.save(200, {"net": net}, metrics={"val_loss": float("nan")})
            Traceback (most recent call last):
            ...
            polybundle.errors.CheckpointError: metric 'val_loss' is nan; expected a str name and
            a finite int or float (call float() on tensors).
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"step is {step!r}; expected an int >= 0.")
        metrics = _check_metrics(metrics)
        self.wait_until_finished()  # one save in flight: its buffers are about to be reused
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.directory) from None
        name = f"{_PREFIX}{step:010d}{_SUFFIX}"
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        entry = {"step": step, "file": name, "metrics": metrics, "created": created}
        lock = self._lock()
        try:
            prepared = prepare_save(
                self.directory / name,
                models,
                params=params,
                architectures=architectures,
                optimizers=optimizers,
                schedulers=schedulers,
                rng=rng,
                mode=self.mode,
                digest=self.digest,
                host=self._host,
            )
        except BaseException:
            self._unlock(lock)
            raise
        commit = partial(self._commit, prepared, entry, lock)
        if self.async_save:
            self._writer.submit(commit, f"step {step}")
        else:
            commit()
        return self._checkpoint(entry)

    def _commit(
        self, prepared: PreparedSave, entry: dict[str, Any], lock: IO[bytes] | None
    ) -> None:
        """Write the bundle, then the index, then prune; release the writer lock at the end."""
        try:
            index = self._read_index()
            write_prepared(prepared)
            step = entry["step"]
            checkpoints = [e for e in index["checkpoints"] if e["step"] != step] + [entry]
            history = [h for h in index["history"] if h["step"] != step]
            history.append({key: entry[key] for key in ("step", "metrics", "created")})
            kept = self._retained(checkpoints)
            index.update(checkpoints=kept, history=history)
            write_json_atomically(self.index_path, index, mode=self.mode)
            self._prune(kept)
        finally:
            self._unlock(lock)

    def checkpoints(self) -> list[Checkpoint]:
        """Return the retained checkpoints, oldest save first.

        Example:
            >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
            >>> for step, val_loss in [(100, 0.31), (200, 0.21), (300, 0.27), (400, 0.29)]:
            ...     _ = manager.save(step, {"net": net}, metrics={"val_loss": val_loss})
            >>> [c.step for c in manager.checkpoints()]  # the best (200) and the last two
            [200, 300, 400]
        """
        self.wait_until_finished()
        return [self._checkpoint(e) for e in self._read_index()["checkpoints"]]

    def latest(self) -> Checkpoint | None:
        """Return the most recently saved checkpoint, or ``None`` when there is none.

        Example:
            >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
            >>> for step, val_loss in [(100, 0.31), (200, 0.21), (300, 0.27), (400, 0.29)]:
            ...     _ = manager.save(step, {"net": net}, metrics={"val_loss": val_loss})
            >>> manager.latest().step
            400
        """
        for attempt in range(_READ_ATTEMPTS):
            retained = self.checkpoints()
            if not retained or retained[-1].path.is_file():
                break
            _pause(attempt)  # pruned by a concurrent save since the index was read
        return retained[-1] if retained else None

    def best(self, metric: str | None = None, mode: str | None = None) -> Checkpoint | None:
        """Return the retained checkpoint with the best ``metric`` (default: ``keep_best``'s).

        Example:
            >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
            >>> for step, val_loss in [(100, 0.31), (200, 0.21), (300, 0.27), (400, 0.29)]:
            ...     _ = manager.save(step, {"net": net}, metrics={"val_loss": val_loss})
            >>> manager.best().step, manager.best().metrics
            (200, {'val_loss': 0.21})
            >>> manager.best("val_loss", "max").step  # among the retained ones
            400
        """
        if metric is None and self.keep_best is not None:
            metric, mode = self.keep_best[0], mode or self.keep_best[1]
        if metric is None or mode not in ("min", "max"):
            raise CheckpointError(
                f"best() needs a metric and mode 'min' or 'max' (got {metric!r}, {mode!r}); pass "
                "them, or make the manager with keep_best=(metric, mode)."
            )
        scored = [c for c in self.checkpoints() if metric in c.metrics]
        if not scored:
            return None
        sign = 1 if mode == "min" else -1
        return min(enumerate(scored), key=lambda ic: (sign * ic[1].metrics[metric], ic[0]))[1]

    def history(self) -> list[dict[str, Any]]:
        """Return ``{"step", "metrics", "created"}`` of every step saved, pruned ones too.

        Example:
            >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
            >>> for step, val_loss in [(100, 0.31), (200, 0.21), (300, 0.27), (400, 0.29)]:
            ...     _ = manager.save(step, {"net": net}, metrics={"val_loss": val_loss})
            >>> [h["step"] for h in manager.history()]  # step 100 was pruned; its metrics stay
            [100, 200, 300, 400]
            >>> manager.history()[0]["metrics"]
            {'val_loss': 0.31}
        """
        self.wait_until_finished()
        return [dict(h) for h in self._read_index()["history"]]

    def restore(
        self,
        step: int | None = None,
        *,
        into: dict[str, Any] | None = None,
        roles: Iterable[str] | None = None,
        rng: bool = True,
        verify: bool = True,
    ) -> Bundle:
        """Load the latest checkpoint (or that of ``step``) and return its :class:`Bundle`.

        ``into``, ``roles`` and ``verify`` are those of :func:`polybundle.load`.
        With ``rng=True`` the saved random-generator state is put back too.
        Restore optimizers with :meth:`Bundle.restore_optimizer`.

        Example:
            >>> opt = torch.optim.Adam(net.parameters())
            >>> net(torch.ones(1, 4)).sum().backward()
            >>> opt.step()
            >>> manager = CheckpointManager("ckpt")
            >>> _ = manager.save(1, {"net": net}, optimizers={"net": opt})
            >>> expected = net(torch.ones(1, 4))
            >>> with torch.no_grad():
            ...     _ = net[0].weight.zero_()  # training goes wrong after the checkpoint
            >>> bundle = manager.restore(into={"net": net})
            >>> bool(torch.equal(bundle.models["net"](torch.ones(1, 4)), expected))
            True
            >>> bundle.restore_optimizer("net", opt)
            >>> manager.restore(step=7)
            Traceback (most recent call last):
            ...
            polybundle.errors.CheckpointError: no retained checkpoint for step 7 in 'ckpt';
            retained steps: [1].
        """
        for attempt in range(_READ_ATTEMPTS):
            chosen = self._choose(step)
            try:
                bundle = load(chosen.path, into=into, roles=roles, verify=verify)
                if rng and "rng" in bundle.manifest:
                    bundle.restore_rng()
                return bundle
            except PolybundleError as exc:
                if self._exists(chosen.path):
                    raise
                vanished = exc  # pruned by a concurrent save: read the index again
            _pause(attempt)
        raise CheckpointError(
            f"the checkpoint {chosen.path.name!r} named by the index of "
            f"{str(self.directory)!r} was missing {_READ_ATTEMPTS} times in a row; it was "
            "deleted, or another process prunes faster than it can be read. Restore a step "
            "that is kept (keep_best), or read when the writer pauses."
        ) from vanished

    def _exists(self, path: Any) -> bool:
        """Return True when a checkpoint's bundle is still there."""
        return os.path.lexists(path)

    def _choose(self, step: int | None) -> Checkpoint:
        retained = self.checkpoints()
        if not retained:
            raise CheckpointError(f"{str(self.directory)!r} holds no checkpoint to restore.")
        if step is None:
            return retained[-1]
        matches = [c for c in retained if c.step == step]
        if not matches:
            raise CheckpointError(
                f"no retained checkpoint for step {step!r} in {str(self.directory)!r}; "
                f"retained steps: {[c.step for c in retained]}."
            )
        return matches[0]


def _pause(attempt: int) -> None:
    """Sleep a little longer on each retry (1 ms, 2 ms, ... at most 50 ms)."""
    time.sleep(min(0.05, 0.001 * (attempt + 1)))
