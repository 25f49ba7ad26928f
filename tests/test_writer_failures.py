"""Writing on a full disk, a read-only folder, past a file-size limit, and after a SIGKILL.

Issue 10, items 4 and 7: the OS refusing a write must raise a typed
``WriteError`` naming the path and the OS's reason, leave no temporary file
behind (the old ``abort()`` closed before it unlinked, and the close itself
raised ENOSPC) and leave the target as it was; a SIGKILLed save's temporary
file is removed by the next save into the folder, a live writer's never.

The full disk and the read-only folder are real: a tiny tmpfs mounted in a
private mount namespace (``unshare -m``, as root, which CI is). Permission
denied is a 0o555 folder, written by root after ``setpriv`` dropped
CAP_DAC_OVERRIDE. The file-size limit (EFBIG through ``RLIMIT_FSIZE``) needs no
privilege and always runs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import polybundle
from polybundle.format.writer import TEMP_MARK, ArchiveWriter, remove_stale_temps
from tests.conftest import REPO, needs_torch, snapshot_tree

PRELUDE = """
import hashlib, json, os, subprocess, sys
from pathlib import Path
import polybundle
from polybundle.format.writer import ArchiveWriter

def mount(where, options):
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)

def free(where):
    stat = os.statvfs(where)
    return stat.f_bavail * stat.f_frsize

def attempt(action):
    try:
        action()
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None, "message": ""}
"""


@functools.cache
def _no_namespace_reason() -> str | None:
    """Return why a private mount namespace with a tmpfs cannot be made here, else None."""
    if not sys.platform.startswith("linux"):
        return "mount namespaces exist on Linux only"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "util-linux unshare/mount are not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a mount namespace (needs root): {probe.stderr.strip()}"
    return None


def _in_namespace(script: str, *args: str) -> list[dict]:
    """Run ``script`` (after PRELUDE) in a private mount namespace; return its JSON lines."""
    reason = _no_namespace_reason()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
         PRELUDE + textwrap.dedent(script), *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


FULL_DISK = """
import torch
disk = Path(sys.argv[1])
mount(disk, "size=1m")
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.Linear(256, 8))
target = disk / "run.bundle"
polybundle.save(target, {"net": net}, params={"lr": 0.1})  # the good bundle to keep
good = hashlib.sha256(target.read_bytes()).hexdigest()
size = target.stat().st_size
print(json.dumps({"size": size}))
net2 = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.Linear(256, 8))
page = 4096
for room in [0, page, 16 * page, size // 2, size - 2 * page, size - page, size, size + page]:
    (disk / "filler").unlink(missing_ok=True)
    with open(disk / "filler", "wb") as filler:  # leave `room` bytes free
        filler.write(bytes(max(0, free(disk) - room)))
    before = free(disk)
    result = attempt(lambda: polybundle.save(target, {"net": net2}, params={"lr": 0.2}))
    names = sorted(os.listdir(disk))
    same = hashlib.sha256(target.read_bytes()).hexdigest() == good
    result.update(room=room, names=names, freed=free(disk) >= before, same=same)
    print(json.dumps(result))
"""


@needs_torch
def test_full_disk_raises_write_error_removes_the_temp_file_and_keeps_the_target(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    first, *results = _in_namespace(FULL_DISK, str(disk))
    failures = [r for r in results if r["error"] is not None]
    assert len(failures) >= 5, results  # the weights, the small members and the commit all fail
    for result in failures:
        assert result["error"] == "WriteError", result
        assert "No space left on device" in result["message"], result
        assert str(disk / "run.bundle") in result["message"], result
        assert result["names"] == ["filler", "run.bundle"], result  # no temporary file left
        assert result["freed"], result  # the space the temporary file took is free again
        assert result["same"], result  # the previous bundle is untouched
    for result in results:
        if result["error"] is None:  # enough room: the new bundle replaced the old one
            assert result["names"] == ["filler", "run.bundle"] and not result["same"], result
    assert first["size"] > 64 * 1024


READ_ONLY = """
disk = Path(sys.argv[1])
mount(disk, "size=256k")
(disk / "old.bundle").write_bytes(b"keep")
subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
def save():
    with ArchiveWriter(disk / "new.bundle") as writer:
        writer.write_bytes("params.json", b"{}")
        writer.commit()
def checkpoint():
    polybundle.CheckpointManager(disk / "ckpt").save(1, {"net": object()})
def checkpoint_here():  # the folder exists: creating the lock file fails
    polybundle.CheckpointManager(disk).save(1, {"net": object()})
for action in (save, checkpoint, checkpoint_here):
    result = attempt(action)
    result["names"] = sorted(os.listdir(disk))
    print(json.dumps(result))
"""


def test_read_only_folder_raises_write_error_and_changes_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    results = _in_namespace(READ_ONLY, str(disk))
    assert len(results) == 3
    for result in results:
        assert result["error"] == "WriteError", result
        assert "Read-only file system" in result["message"], result
        assert str(disk) in result["message"], result
        assert result["names"] == ["old.bundle"], result


PERMISSION_DENIED = """
folder = Path(sys.argv[1])
def save():
    with ArchiveWriter(folder / "new.bundle") as writer:
        writer.write_bytes("params.json", b"{}")
        writer.commit()
def checkpoint():
    polybundle.CheckpointManager(folder / "ckpt").save(1, {"net": object()})
def checkpoint_here():
    polybundle.CheckpointManager(folder).save(1, {"net": object()})
for action in (save, checkpoint, checkpoint_here):
    result = attempt(action)
    result["names"] = sorted(os.listdir(folder))
    print(json.dumps(result))
"""


def test_a_folder_without_write_permission_raises_write_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "old.bundle").write_bytes(b"keep")
    folder.chmod(0o555)
    command = [sys.executable, "-c", PRELUDE + PERMISSION_DENIED, str(folder)]
    if os.geteuid() == 0:  # root writes anywhere unless it gives up CAP_DAC_OVERRIDE
        if shutil.which("setpriv") is None:
            pytest.skip("as root, setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                   "--inh-caps=-all", "--", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 3
    for result in results:
        assert result["error"] == "WriteError", result
        assert "Permission denied" in result["message"] and str(folder) in result["message"]
        assert result["names"] == ["old.bundle"], result


FILE_SIZE_LIMIT = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
folder = Path(sys.argv[1])
def save():
    with ArchiveWriter(folder / "big.bundle") as writer:
        writer.write_bytes("params.json", b"{}", compress=True)
        writer.write_bytes("net/weights.bin", bytes(300_000))
        writer.commit()
result = attempt(save)
result["names"] = sorted(os.listdir(folder))
print(json.dumps(result))
"""


def test_file_size_limit_raises_write_error_and_removes_the_temp_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + FILE_SIZE_LIMIT, str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error"] == "WriteError", result
    assert "File too large" in result["message"], result
    assert str(tmp_path / "big.bundle") in result["message"], result
    assert result["names"] == [], result


SAVER = """
import sys, torch, polybundle
torch.manual_seed(0)
net = torch.nn.Linear(2048, 4096)  # 32 MiB of weights: a save takes a while
while True:
    polybundle.save(sys.argv[1], {"net": net})
"""

LIVE_WRITER = """
import sys
from polybundle.format.writer import ArchiveWriter
with ArchiveWriter(sys.argv[1]) as writer:
    writer.write_bytes("a.bin", bytes(1000))
    print(writer.temp_path, flush=True)
    sys.stdin.readline()
    writer.commit()
"""


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TEMP_MARK in p.name)


@needs_torch
def test_a_sigkilled_saves_temp_file_is_removed_by_the_next_save_a_live_one_is_kept(
    tmp_path: Path,
) -> None:
    import torch

    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path / "big.bundle")],
                             cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not _temps(tmp_path) or not (tmp_path / "big.bundle").exists():
            assert time.monotonic() < deadline and saver.poll() is None, "no save started"
            time.sleep(0.001)
        while not _temps(tmp_path):  # kill in the middle of the second save
            assert time.monotonic() < deadline and saver.poll() is None
            time.sleep(0.001)
        saver.send_signal(signal.SIGKILL)
    finally:
        saver.kill()
        saver.wait()
    (stale,) = _temps(tmp_path)
    assert stale.name.startswith(f".big.bundle{TEMP_MARK}{saver.pid}-")
    live = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(tmp_path / "live.bundle")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        live_temp = Path(live.stdout.readline().strip())
        assert live_temp.is_file()
        polybundle.save(tmp_path / "small.bundle", {"net": torch.nn.Linear(2, 1)})
        assert not stale.exists()  # the dead writer's temporary file is gone
        assert _temps(tmp_path) == [live_temp]  # the live writer's is kept
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    finally:
        live.kill()
    assert _temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.bundle", "live.bundle", "small.bundle"
    ]
    polybundle.load(tmp_path / "big.bundle", into={"net": torch.nn.Linear(2048, 4096)})


def test_stale_temp_cleanup_leaves_other_files_and_other_peoples_names_alone(
    tmp_path: Path,
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".run.bundle{TEMP_MARK}{pid}-0123abcd"
    stale.write_bytes(b"x")
    keep = [
        tmp_path / f".run.bundle{TEMP_MARK}{os.getpid()}-0123abcd",  # ours, alive
        tmp_path / f".run.bundle{TEMP_MARK}1-0123abcd",  # pid 1 is alive
        tmp_path / f".run.bundle{TEMP_MARK}{pid}-NOTHEX",  # not our pattern
        tmp_path / "run.bundle",
        tmp_path / f"x{TEMP_MARK}{pid}-0123abcd",  # not hidden: not ours
    ]
    for path in keep:
        path.write_bytes(b"y")
    os.mkdir(tmp_path / f".dir{TEMP_MARK}{pid}-0123abcd")  # a folder is never removed
    os.symlink(keep[3], tmp_path / f".link{TEMP_MARK}{pid}-0123abcd")
    assert remove_stale_temps(tmp_path) == [stale.name]
    assert not stale.exists() and all(path.exists() for path in keep)
    assert (tmp_path / f".dir{TEMP_MARK}{pid}-0123abcd").is_dir()
    assert (tmp_path / f".link{TEMP_MARK}{pid}-0123abcd").is_symlink()
    assert snapshot_tree(tmp_path)["run.bundle"] == 1


def test_a_temp_file_whose_lock_is_held_is_kept_even_when_its_pid_is_dead(tmp_path) -> None:
    fcntl = pytest.importorskip("fcntl")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    held = tmp_path / f".run.bundle{TEMP_MARK}{int(dead.stdout)}-0123abcd"
    held.write_bytes(b"x")
    with open(held, "rb") as handle:  # e.g. a writer in another pid namespace
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path) == [held.name]


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "run.bundle").write_bytes(b"old")
    before = snapshot_tree(tmp_path)
    with pytest.raises(KeyError), ArchiveWriter(tmp_path / "run.bundle") as writer:
        writer.write_bytes("a", bytes(100_000))
        raise KeyError("a framework failed")
    assert snapshot_tree(tmp_path) == before
    with pytest.raises(polybundle.WriteError, match="No such file or directory"):
        ArchiveWriter(tmp_path / "missing" / "run.bundle")
