"""Bundles at URLs, against a real S3 API server (moto) and fsspec's memory store.

One moto server per session (:mod:`tests.remote_server`: IAM authentication
on, a request log counting what each request sent), reached with s3fs. The
tests cover round trips in PyTorch and TensorFlow, a lazy one-tensor read
whose requests and bytes are counted at the server, checkpoints with
``keep_last`` on the bucket, a writer killed mid-upload, the errors of wrong
credentials, a missing bucket and a missing key, and ``memory://`` for the
rest of the entry points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import polybundle
from polybundle.api.transfer import plan_bundle
from polybundle.errors import IntegrityError, StorageError
from polybundle.format.storage import locate
from polybundle.tools.cli import main
from tests.conftest import needs_tensorflow, needs_torch
from tests.remote_server import S3, start_s3

WRITER = Path(__file__).with_name("remote_writer.py")
LAZY_SLACK = 64 * 1024
"""What a lazy one-tensor read may fetch beyond the tensor: directory, manifest, index."""


@pytest.fixture(scope="session")
def s3() -> S3:
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def torch_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512)
    )


def _sent(requests, method: str = "GET") -> int:
    return sum(r.sent for r in requests if r.method == method)


@needs_torch
def test_torch_round_trip_on_s3(s3, torch_net):
    import torch

    url = s3.url("torch/run.bundle")
    opt = torch.optim.Adam(torch_net.parameters())
    torch_net(torch.ones(1, 256)).sum().backward()
    opt.step()
    polybundle.save(url, {"net": torch_net}, optimizers={"net": opt}, params={"lr": 0.1},
                    storage_options=s3.storage_options)
    fresh = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512))
    bundle = polybundle.load(url, into={"net": fresh}, storage_options=s3.storage_options)
    assert bundle.params == {"lr": 0.1}
    for mine, theirs in zip(fresh.parameters(), torch_net.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert bundle.optimizer_state("net").step == 1
    report = polybundle.verify(url, storage_options=s3.storage_options)
    assert report.ok, report.problems
    assert polybundle.inspect(url, storage_options=s3.storage_options)["tensors"][0]["shape"] == [
        512, 256]


@needs_tensorflow
def test_tensorflow_round_trip_on_s3(s3):
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    url = s3.url("tf/run.bundle")
    polybundle.save(url, {"net": model}, storage_options=s3.storage_options)
    twin = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    polybundle.load(url, into={"net": twin}, storage_options=s3.storage_options)
    for mine, theirs in zip(twin.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    lazy = polybundle.load(url, lazy=True, storage_options=s3.storage_options)
    kernel = [name for name in lazy.tensors("net") if name.endswith("kernel")][0]
    assert lazy.tensors("net")[kernel].shape in {(3, 4), (4, 2)}


@needs_torch
def test_lazy_tensor_read_fetches_the_tensor_and_the_index_only(s3, torch_net):
    url = s3.url("lazy/run.bundle")
    polybundle.save(url, {"net": torch_net}, storage_options=s3.storage_options)
    size = locate(url, s3.storage_options).size()
    mark = s3.log.mark()
    bundle = polybundle.load(url, lazy=True, verify=False, storage_options=s3.storage_options)
    weight = np.array(bundle.tensors("net")["2.weight"])
    requests = s3.log.since(mark)
    np.testing.assert_array_equal(weight, torch_net[2].weight.detach().numpy())
    fetched = _sent(requests)
    assert weight.nbytes == 1024 * 1024 and size > 1.5 * 1024 * 1024
    assert fetched <= weight.nbytes + LAZY_SLACK, (fetched, requests)
    assert len(requests) <= 12, requests  # two opens (load, tensors) + the tensor's range
    ranged = [r for r in requests if r.method == "GET"]
    assert all(r.range for r in ranged), "every read is a ranged GET"
    assert max(r.sent for r in ranged) <= weight.nbytes  # no request reads the whole object


@needs_torch
def test_lazy_read_checks_the_weights_unless_verify_false(s3, torch_net):
    url = s3.url("lazy/checked.bundle")
    polybundle.save(url, {"net": torch_net}, storage_options=s3.storage_options)
    mark = s3.log.mark()
    bundle = polybundle.load(url, lazy=True, storage_options=s3.storage_options)
    tensors = bundle.tensors("net")  # hashes the weights member: every byte of it
    hashed = _sent(s3.log.since(mark))
    assert hashed >= sum(p.numel() * 4 for p in torch_net.parameters())
    mark = s3.log.mark()
    np.testing.assert_array_equal(tensors["0.weight"], torch_net[0].weight.detach().numpy())
    assert _sent(s3.log.since(mark)) == 0  # already fetched while hashing


@needs_torch
def test_checkpoints_keep_last_on_the_bucket(s3, torch_net):
    url = s3.url("ckpt/keep")
    manager = polybundle.CheckpointManager(url, keep_last=2, storage_options=s3.storage_options)
    for step in (1, 2, 3):
        manager.save(step, {"net": torch_net}, metrics={"loss": 1 / step})
    assert [c.step for c in manager.checkpoints()] == [2, 3]
    assert locate(url, s3.storage_options).names() == [
        "checkpoint-0000000002.bundle", "checkpoint-0000000003.bundle", "checkpoints.json"]
    assert [h["step"] for h in manager.history()] == [1, 2, 3]
    import torch

    fresh = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512))
    manager.restore(into={"net": fresh})
    assert torch.equal(fresh[2].bias, torch_net[2].bias)


@needs_torch
def test_writer_killed_mid_upload_leaves_the_previous_checkpoint(s3, torch_net):
    url = s3.url("ckpt/killed")
    manager = polybundle.CheckpointManager(url, keep_last=2, storage_options=s3.storage_options)
    manager.save(1, {"net": torch_net}, metrics={"loss": 1.0})
    s3.log.hold(lambda env: env["REQUEST_METHOD"] in ("PUT", "POST")
                and "checkpoint-0000000002" in env.get("PATH_INFO", ""))
    writer = subprocess.Popen(  # a 32 MiB checkpoint of the NumPy test backend: no framework
        [sys.executable, str(WRITER), url, json.dumps(s3.storage_options), "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        assert s3.log.held.wait(timeout=120), writer.stderr.read() if writer.poll() else ""
        writer.send_signal(signal.SIGKILL)  # mid-upload: the server holds its PUT
        writer.wait(timeout=30)
    finally:
        s3.log.release()
    assert writer.returncode == -signal.SIGKILL
    latest = manager.latest()
    assert latest is not None and latest.step == 1
    assert not (locate(url, s3.storage_options) / "checkpoint-0000000002.bundle").exists()
    assert manager.restore(into={"net": torch_net}).manifest["models"][0]["role"] == "net"


def test_wrong_credentials_missing_bucket_and_key_name_the_url(s3):
    wrong = {**s3.storage_options, "secret": "not-the-secret"}
    url = s3.url("anything.bundle")
    with pytest.raises(StorageError, match="refused access") as refused:
        polybundle.load(url, storage_options=wrong)
    assert refused.value.url == url and url in str(refused.value)
    missing_bucket = "s3://no-such-bucket/run.bundle"
    with pytest.raises(StorageError, match="no such object or bucket") as no_bucket:
        polybundle.inspect(missing_bucket, storage_options=s3.storage_options)
    assert missing_bucket in str(no_bucket.value)
    missing_key = s3.url("no/such/key.bundle")
    with pytest.raises(StorageError, match="no such object or bucket") as no_key:
        polybundle.load(missing_key, lazy=True, storage_options=s3.storage_options)
    assert missing_key in str(no_key.value)
    report = polybundle.verify(missing_key, storage_options=s3.storage_options)
    assert not report.ok and report.problems[0].startswith("StorageError")


def test_cli_reads_s3_with_storage_options(s3, capsys):
    options = [f"--storage-option={k}={v}" for k, v in s3.storage_options.items()]
    assert main([*options, "inspect", s3.url("no/such.bundle")]) == 2
    assert "no such object or bucket" in capsys.readouterr().err


# memory:// : the same code without a server


@needs_torch
def test_memory_save_load_lazy_verify_inspect(torch_net):
    import torch

    url = "memory://unit/run.bundle"
    polybundle.save(url, {"net": torch_net}, params={"n": 3})
    assert polybundle.verify(url).ok
    assert polybundle.inspect(url)["params"] == {"n": 3}
    lazy = polybundle.load(url, lazy=True)
    np.testing.assert_array_equal(lazy.tensors("net")["0.bias"], torch_net[0].bias.detach())
    fresh = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512))
    polybundle.load(url, into={"net": fresh})
    assert torch.equal(fresh[0].weight, torch_net[0].weight)


@needs_torch
def test_memory_lazy_bundle_sees_a_replaced_object(torch_net):
    import torch

    url = "memory://unit/replaced.bundle"
    polybundle.save(url, {"net": torch_net})
    lazy = polybundle.load(url, lazy=True)
    other = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 512))
    polybundle.save(url, {"net": other})
    with pytest.raises(IntegrityError, match="changed since it was loaded"):
        lazy.tensors("net")


@needs_torch
def test_memory_failed_save_leaves_the_old_object(torch_net):
    url = "memory://unit/kept.bundle"
    polybundle.save(url, {"net": torch_net}, params={"v": 1})
    with pytest.raises(polybundle.PolybundleError):
        polybundle.save(url, {"net": torch_net}, params={"bad": object()})
    assert polybundle.load(url, lazy=True).params == {"v": 1}
    assert locate("memory://unit").names() == sorted(
        n for n in locate("memory://unit").names() if ".polybundle-tmp-" not in n)


@needs_torch
def test_memory_convert_migrate_and_cli(torch_net, capsys):
    polybundle.save("memory://unit/src.bundle", {"net": torch_net})
    report = polybundle.migrate("memory://unit/src.bundle", "memory://unit/copy.bundle")
    assert report.written and polybundle.verify("memory://unit/copy.bundle").ok
    assert polybundle.migrate("memory://unit/src.bundle", "memory://unit/copy.bundle").written \
        is False  # idempotent, as for files
    plan = plan_bundle("memory://unit/copy.bundle", "tensorflow")
    assert plan["roles"][0]["rows"][0]["layout"] == "out,in -> in,out"
    assert main(["verify", "memory://unit/copy.bundle"]) == 0
    assert main(["inspect", "--json", "memory://unit/copy.bundle"]) == 0
    assert '"backend": "torch"' in capsys.readouterr().out


def test_storage_options_on_a_local_path_are_refused(tmp_path):
    with pytest.raises(StorageError, match="for URLs"):
        polybundle.load(tmp_path / "x.bundle", storage_options={"anon": True})


@needs_torch
def test_local_paths_never_use_fsspec(tmp_path, torch_net, monkeypatch):
    """With fsspec made unimportable, local paths work and a URL names the extra."""
    monkeypatch.setitem(sys.modules, "fsspec", None)  # ``import fsspec`` now raises
    path = tmp_path / "local.bundle"
    polybundle.save(path, {"net": torch_net})
    polybundle.load(path, into={"net": torch_net})
    assert polybundle.load(path, lazy=True).tensors("net")["0.bias"].shape == (512,)
    assert polybundle.verify(path).ok
    manager = polybundle.CheckpointManager(tmp_path / "ckpt")
    manager.save(1, {"net": torch_net})
    with pytest.raises(StorageError, match=r"polybundle\[remote\]"):
        polybundle.load("s3://bucket/run.bundle")


@needs_torch
def test_memory_legacy_archive_and_plain_file(legacy_dir, torch_net, tmp_path):
    import torch

    archive = "memory://unit/wts.h5.zip"
    locate(archive).write_bytes((legacy_dir / "tf_era_shared.zip").read_bytes())
    assert polybundle.inspect(archive)["format"] == "legacy-tf-dill"
    legacy = polybundle.load(archive, lazy=True)
    assert legacy.roles == ["autoencoder", "diffraction_to_obj"]
    assert legacy.tensors("autoencoder")
    torch.save(torch_net.state_dict(), tmp_path / "net.pth")
    plain = "memory://unit/net.pth"
    locate(plain).put_file(tmp_path / "net.pth")
    tensors = polybundle.load(plain, lazy=True).tensors("model")
    np.testing.assert_array_equal(tensors["2.bias"], torch_net[2].bias.detach().numpy())


@needs_torch
def test_memory_lazy_tensors_hash_the_weights_unless_verify_false(torch_net):
    url = "memory://unit/flipped.bundle"
    polybundle.save(url, {"net": torch_net})
    with polybundle.format.archive.ArchiveReader(url) as archive:
        middle = archive.data_offset("net/model.pth") + archive.size("net/model.pth") // 2
    data = bytearray(locate(url).read_bytes(limit=1 << 30))
    data[middle] ^= 0xFF  # inside the 1 MiB of 2.weight: the zips still read
    locate(url).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest"):
        polybundle.load(url, lazy=True).tensors("net")
    unchecked = polybundle.load(url, lazy=True, verify=False).tensors("net")
    assert unchecked["0.weight"].shape == (512, 256)  # read as asked: nothing hashed
