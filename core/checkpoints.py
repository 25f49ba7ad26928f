"""``polybundle.CheckpointManager``: numbered training checkpoints in one directory.

Each checkpoint is an ordinary format-2 bundle (weights, optimizer state,
params, RNG state) named ``checkpoint-<step>.bundle``. The index
``checkpoints.json`` lists the retained checkpoints in save order and the
metrics of every step ever saved (``history``). A save writes the bundle
atomically, then the index atomically, and only then deletes the checkpoints
that fall out of retention, so a crash at any moment leaves an index that
names only complete, committed bundles. One process writes a directory at a
time (a lock file enforces it where the OS supports ``fcntl``).

Example:
    >>> manager = CheckpointManager("ckpt", keep_last=2, keep_best=("val_loss", "min"))
    >>> manager.save(100, {"net": net}, optimizers={"net": opt},
    ...              metrics={"val_loss": 0.31})  # doctest: +SKIP
    >>> bundle = manager.restore(into={"net": fresh_net})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import Bundle
from .errors import CheckpointError
from .loading import load
from .saving import save
from .writer import _fsync_directory

INDEX_NAME = "checkpoints.json"
"""The index file inside a checkpoint directory."""
INDEX_FORMAT = "polybundle-checkpoints"
_PREFIX = "checkpoint-"
_SUFFIX = ".bundle"
_LOCK_NAME = ".checkpoints.lock"


@dataclass(frozen=True)
class Checkpoint:
    """One retained checkpoint: its step, bundle path, metrics and save time.

    Example:
        >>> manager.latest()  # doctest: +SKIP
        Checkpoint(step=100, path=PosixPath('ckpt/checkpoint-0000000100.bundle'), ...)
    """

    step: int
    path: Path
    metrics: dict[str, Any]
    created: str


def write_json_atomically(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so readers see the old file or the new one.

    Example:
        >>> write_json_atomically(Path("ckpt/index.json"), {"steps": []})  # doctest: +SKIP
    """
    data = json.dumps(document, indent=1, allow_nan=False).encode("utf-8")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _check_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"metrics is a {type(metrics).__name__}; expected a dict.")
    for name, value in metrics.items():
        plain = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(name, str) or not plain or not math.isfinite(value):
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

    Example:
        >>> manager = CheckpointManager("ckpt", keep_last=3)
        >>> manager.save(10, {"net": net}, metrics={"loss": 0.5})  # doctest: +SKIP
        >>> manager.latest().step  # doctest: +SKIP
        10
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep_last: int | None = 3,
        keep_best: tuple[Any, ...] | None = None,
    ) -> None:
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

    @property
    def index_path(self) -> Path:
        """Return the path of the index file."""
        return self.directory / INDEX_NAME

    def _read_index(self) -> dict[str, Any]:
        try:
            document = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {"format": INDEX_FORMAT, "version": 1, "checkpoints": [], "history": []}
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{str(self.index_path)!r} is not valid JSON ({exc}); it is written atomically, "
                "so something else changed it. Restore it from a backup or remove it."
            ) from None
        valid = (
            isinstance(document, dict)
            and document.get("format") == INDEX_FORMAT
            and isinstance(document.get("checkpoints"), list)
            and isinstance(document.get("history"), list)
        )
        if not valid:
            raise CheckpointError(
                f"{str(self.index_path)!r} is not a polybundle checkpoint index (expected format "
                f"{INDEX_FORMAT!r} with checkpoints and history lists)."
            )
        return document

    def _checkpoint(self, entry: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            entry["step"], self.directory / entry["file"], entry["metrics"], entry["created"]
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            yield
            return
        with open(self.directory / _LOCK_NAME, "a+b") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(
                    f"another process is saving into {str(self.directory)!r}; one writer per "
                    "checkpoint directory."
                ) from None
            yield

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
                path.unlink(missing_ok=True)

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
        step again replaces its checkpoint.

        Example:
            >>> manager.save(200, {"net": net}, optimizers={"net": opt},
            ...              metrics={"val_loss": 0.28}).path.name  # doctest: +SKIP
            'checkpoint-0000000200.bundle'
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"step is {step!r}; expected an int >= 0.")
        metrics = _check_metrics(metrics)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{_PREFIX}{step:010d}{_SUFFIX}"
        with self._locked():
            index = self._read_index()
            save(
                self.directory / name,
                models,
                params=params,
                architectures=architectures,
                optimizers=optimizers,
                schedulers=schedulers,
                rng=rng,
            )
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            entry = {"step": step, "file": name, "metrics": metrics, "created": created}
            checkpoints = [e for e in index["checkpoints"] if e["step"] != step] + [entry]
            history = [h for h in index["history"] if h["step"] != step]
            history.append({"step": step, "metrics": metrics, "created": created})
            kept = self._retained(checkpoints)
            index.update(checkpoints=kept, history=history)
            write_json_atomically(self.index_path, index)
            self._prune(kept)
        return self._checkpoint(entry)

    def checkpoints(self) -> list[Checkpoint]:
        """Return the retained checkpoints, oldest save first.

        Example:
            >>> [c.step for c in manager.checkpoints()]  # doctest: +SKIP
            [300, 400]
        """
        return [self._checkpoint(e) for e in self._read_index()["checkpoints"]]

    def latest(self) -> Checkpoint | None:
        """Return the most recently saved checkpoint, or ``None`` when there is none.

        Example:
            >>> manager.latest().step  # doctest: +SKIP
            400
        """
        retained = self.checkpoints()
        return retained[-1] if retained else None

    def best(self, metric: str | None = None, mode: str | None = None) -> Checkpoint | None:
        """Return the retained checkpoint with the best ``metric`` (default: ``keep_best``'s).

        Example:
            >>> manager.best().metrics  # doctest: +SKIP
            {'val_loss': 0.21}
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
            >>> [h["step"] for h in manager.history()]  # doctest: +SKIP
            [100, 200, 300, 400]
        """
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
            >>> bundle = manager.restore(into={"net": net})  # doctest: +SKIP
            >>> bundle.restore_optimizer("net", torch.optim.Adam(net.parameters()))
        """
        retained = self.checkpoints()
        if not retained:
            raise CheckpointError(f"{str(self.directory)!r} holds no checkpoint to restore.")
        if step is None:
            chosen = retained[-1]
        else:
            matches = [c for c in retained if c.step == step]
            if not matches:
                raise CheckpointError(
                    f"no retained checkpoint for step {step!r} in {str(self.directory)!r}; "
                    f"retained steps: {[c.step for c in retained]}."
                )
            chosen = matches[0]
        bundle = load(chosen.path, into=into, roles=roles, verify=verify)
        if rng and "rng" in bundle.manifest:
            bundle.restore_rng()
        return bundle
