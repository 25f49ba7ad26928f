"""One rank of the sharded-bundle tests (FSDP2 on CPU with gloo); runs in its own process.

``python -m tests.dist_worker RANK PORT FOLDER``: one of 3 ranks (one process
start each, for every scenario), in three phases.

- Save, on ranks 0 and 1 (a 2-rank group; rank 2 waits): build the
  ``dist-mlp`` from seed 0, ``fully_shard`` it over the pair, train
  :data:`STEPS` Adam steps, save model and optimizer through DCP into
  ``FOLDER/ck1`` (:class:`~polybundle_torch.distributed.BundleWriter`) and,
  with ``dcp.async_save``, into ``FOLDER/ck_async``; rank 0 writes the
  gathered full state to ``full1.pt``. Training then goes on :data:`STEPS`
  more steps (the uninterrupted run, gathered into ``full2.pt``).
- Load, on all 3 ranks: a differently initialised model sharded over 3 ranks
  loads ``ck_async`` and ``ck1`` through DCP; rank 0 writes ``load3.json``:
  whether the gathered state equals ``full1.pt`` bit for bit, and whether,
  after :data:`STEPS` steps of the same training, it equals ``full2.pt``.
- Killed save, on ranks 0 and 1 again: a save into ``FOLDER/ck_killed``
  during which rank 1 dies (``os._exit(17)``) halfway through writing its part.

Every rank sees the same batch and only rank 0's loss counts (see
:func:`train`), so the gradients do not depend on the rank count. The
``dist-mlp`` builders (both frameworks) are registered here, so the test
process imports this module for them too. ``docs/distributed.md`` shows
:func:`torch_mlp`, :func:`sharded_model`, :func:`save_checkpoint` and
:func:`load_checkpoint` as they are here.

Example:
    >>> [t.shape for t in batch()]
    [torch.Size([16, 8]), torch.Size([16, 4])]
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import polybundle

ARCH = "dist-mlp"
CONFIG = {"inputs": 8, "hidden": 16, "outputs": 4}
STEPS = 3
PARAMS = {"lr": 0.01}


@polybundle.architecture(ARCH, backend="torch")
def torch_mlp(config: dict[str, Any]) -> Any:
    """Linear -> ReLU -> Linear."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(config["inputs"], config["hidden"]), torch.nn.ReLU(),
        torch.nn.Linear(config["hidden"], config["outputs"]),
    )


@polybundle.architecture(ARCH, backend="tensorflow")
def keras_mlp(config: dict[str, Any]) -> Any:
    """Dense(relu) -> Dense, the same network in Keras."""
    import keras

    inputs = keras.Input((config["inputs"],))
    hidden = keras.layers.Dense(config["hidden"], activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(config["outputs"], name="out")(hidden))


def batch() -> tuple[Any, Any]:
    """The fixed training batch (inputs, targets), the same on every rank."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return (torch.randn(16, CONFIG["inputs"], generator=generator),
            torch.randn(16, CONFIG["outputs"], generator=generator))


def sharded_model(seed: int, mesh: Any = None) -> tuple[Any, Any]:
    """The ``dist-mlp`` from ``seed``, FSDP2-sharded over ``mesh`` (None: all ranks), and Adam."""
    import torch
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch_mlp(CONFIG)
    for module in (model[0], model[2], model):
        fully_shard(module, mesh=mesh)
        module.set_gradient_divide_factor(1.0)  # a sum of the ranks' gradients...
        module.set_force_sum_reduction_for_comms(True)  # ...as gloo's plain SUM
    return model, torch.optim.Adam(model.parameters(), lr=PARAMS["lr"])


def train(model: Any, optimizer: Any, steps: int) -> None:
    """Take ``steps`` Adam steps of mean-squared error on :func:`batch`.

    Only rank 0's loss counts (the others' is multiplied by 0) and gradients
    are summed, not averaged (:func:`sharded_model`), so every rank count
    reduces to exactly rank 0's gradient: runs on 2 and 3 ranks can agree bit
    for bit.
    """
    import torch.distributed as dist

    weight = 1.0 if dist.get_rank() == 0 else 0.0
    x, y = batch()
    for _ in range(steps):
        optimizer.zero_grad()
        (((model(x) - y) ** 2).mean() * weight).backward()
        optimizer.step()


def full_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The gathered full model and optimizer state (on every rank), on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optim": optim_state}


def dcp_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The sharded state DCP saves and loads: ``{"model": ..., "optim": ...}``."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def flat_tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor (and number) of a nested state, keyed by its path."""
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out.update(flat_tensors(value, f"{prefix}{key}/"))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for index, value in enumerate(state):
            out.update(flat_tensors(value, f"{prefix}{index}/"))
        return out
    return {prefix.rstrip("/"): state}


def differences(left: Any, right: Any) -> dict[str, Any]:
    """``{"same_keys", "bitwise", "max_abs"}`` of two states (tensors compared exactly)."""
    import torch

    a, b = flat_tensors(left), flat_tensors(right)
    bitwise, worst = True, 0.0
    for key in set(a) & set(b):
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            bitwise &= x.dtype == y.dtype and torch.equal(x, y)
            if x.is_floating_point() and x.numel():
                worst = max(worst, float((x.double() - y.double()).abs().max()))
        else:
            bitwise &= x == y
    return {"same_keys": set(a) == set(b), "bitwise": bool(bitwise), "max_abs": worst}


def save_checkpoint(
    model: Any, optimizer: Any, folder: Path, *, writer: Any = None, group: Any = None
) -> None:
    """Save the sharded model and optimizer into the sharded bundle ``folder`` (every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from polybundle_torch.distributed import BundleWriter

    model_state, optim_state = get_state_dict(model, optimizer)
    writer = writer or BundleWriter(folder, params=PARAMS, architectures={"model": (ARCH, CONFIG)})
    dcp.save({"model": model_state, "optim": optim_state}, storage_writer=writer,
             process_group=group)


def load_checkpoint(model: Any, optimizer: Any, folder: Path) -> None:
    """Load the sharded bundle ``folder`` into the sharded model and optimizer (every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from polybundle_torch.distributed import BundleReader

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, storage_reader=BundleReader(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def _writer(folder: Path) -> Any:
    from polybundle_torch.distributed import BundleWriter

    return BundleWriter(folder, params=PARAMS, architectures={"model": (ARCH, CONFIG)})


def _killed_save(folder: Path, model: Any, optimizer: Any, rank: int, group: Any) -> None:
    """Save into ``folder`` while rank 1 dies halfway through writing its part file."""
    from polybundle.format.writer import create_temp

    writer = _writer(folder)
    write_data = writer.write_data

    def dying_write(plan: Any, planner: Any) -> Any:
        if rank == 1:
            fd, _ = create_temp(folder / "parts" / f"{plan.storage_data}.safetensors")
            os.write(fd, b"half a part")
            os._exit(17)
        return write_data(plan, planner)

    writer.write_data = dying_write  # type: ignore[method-assign]
    try:
        save_checkpoint(model, optimizer, folder, writer=writer, group=group)
    except Exception as exc:  # noqa: BLE001 - the save must fail; how is DCP's business
        (folder.parent / "killed-rank0.txt").write_text(type(exc).__name__)


def save_phase(rank: int, out: Path, pair: Any) -> tuple[Any, Any]:
    """Ranks 0 and 1: train, save (and async-save), gather the states (module docstring)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import DeviceMesh

    model, optimizer = sharded_model(seed=0, mesh=DeviceMesh.from_group(pair, "cpu"))
    train(model, optimizer, STEPS)
    save_checkpoint(model, optimizer, out / "ck1", group=pair)
    full = full_state(model, optimizer)
    dcp.async_save(dcp_state(model, optimizer), storage_writer=_writer(out / "ck_async"),
                   process_group=pair).result()
    if rank == 0:
        torch.save(full, out / "full1.pt")
    train(model, optimizer, STEPS)
    full = full_state(model, optimizer)
    if rank == 0:
        torch.save(full, out / "full2.pt")
    dist.barrier(group=pair)
    return model, optimizer


def load_phase(rank: int, out: Path) -> None:
    """All 3 ranks: load both checkpoints resharded, compare, train on (module docstring)."""
    import torch

    report = {}
    full1 = torch.load(out / "full1.pt", weights_only=True)
    for name in ("ck_async", "ck1"):  # ck1 last: training goes on from it
        model, optimizer = sharded_model(seed=123)
        load_checkpoint(model, optimizer, out / name)
        report[name] = differences(full_state(model, optimizer), full1)
    train(model, optimizer, STEPS)
    report["resumed"] = differences(full_state(model, optimizer),
                                    torch.load(out / "full2.pt", weights_only=True))
    if rank == 0:
        (out / "load3.json").write_text(json.dumps(report))


def main(argv: list[str]) -> None:
    """Join the 3-rank gloo group on 127.0.0.1 and run the three phases as one rank."""
    import torch.distributed as dist

    rank, port, out = int(argv[0]), argv[1], Path(argv[2])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=3,
                            timeout=datetime.timedelta(seconds=60))
    try:
        pair = dist.new_group([0, 1])
        if rank < 2:
            model, optimizer = save_phase(rank, out, pair)
        dist.barrier()
        load_phase(rank, out)
        dist.barrier()
        if rank < 2:
            _killed_save(out / "ck_killed", model, optimizer, rank, pair)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
