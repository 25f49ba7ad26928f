"""Time polybundle against the frameworks' own save/load on the same weights.

One process, one set of weights per size; every operation is run
``--repeats`` times and its median wall time and median peak RSS above
baseline are reported (see :mod:`measure`), with the ratio of each polybundle
figure to its framework's own call. Files are written to one temporary
folder, so loads read from the page cache (warm), as a training loop does.

Usage:
    python benchmarks/bench.py --sizes 10,100,400 --repeats 5 --json out.json --plot out.png

Usage::

    report = run_benchmark([1], repeats=1)
    report["sizes"][0]["ratios"]["torch load"]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from measure import measure  # noqa: E402
from workloads import (  # noqa: E402
    ARCHITECTURE,
    Weights,
    adam_state,
    keras_model,
    keras_model_unregistered,
    many_tensors,
    register_architectures,
    torch_model,
)

import polybundle  # noqa: E402
from polybundle.api.lazy import lazy_tensors  # noqa: E402
from polybundle.format.archive import ArchiveReader  # noqa: E402

RATIOS = {
    "torch save": ("polybundle.save (torch)", "torch.save"),
    "torch save vs fsynced": ("polybundle.save (torch)", "torch.save + fsync"),
    "torch load": ("polybundle.load (torch)", "torch.load"),
    "torch load vs + load_state_dict": ("polybundle.load (torch)", "torch.load + load_state_dict"),
    "torch load into= vs + load_state_dict": (
        "polybundle.load into= (torch)", "torch.load + load_state_dict"
    ),
    "torch save + Adam vs fsynced": (
        "polybundle.save (weights + Adam)", "torch.save + fsync (weights + Adam)"
    ),
    "torch load + Adam vs restore": (
        "polybundle.load into= + restore_optimizer (weights + Adam)",
        "torch.load + load_state_dict (weights + Adam)",
    ),
    "lazy open vs torch.load mmap (1,000 tensors)": (
        "polybundle lazy open (1,000 tensors)", "torch.load mmap (1,000 tensors)"
    ),
    "lazy open, no digest, vs torch.load mmap (1,000 tensors)": (
        "polybundle lazy open, no digest (1,000 tensors)", "torch.load mmap (1,000 tensors)"
    ),
    "tf save": ("polybundle.save (tensorflow)", "keras model.save"),
    "tf save vs fsynced": ("polybundle.save (tensorflow)", "keras model.save + fsync"),
    "tf load": ("polybundle.load (tensorflow)", "keras load_model"),
    "tf load, no builder": ("polybundle.load (tensorflow, no builder)", "keras load_model"),
    "torch bundle -> tf load": ("polybundle.load (torch bundle as tensorflow)", "keras load_model"),
    "tf bundle -> torch load": ("polybundle.load (tensorflow bundle as torch)", "torch.load"),
}
"""Ratio name -> (polybundle operation, framework operation it is compared with)."""

FRAMEWORKS = ("torch", "tensorflow")
"""The frameworks measured unless ``--frameworks`` names fewer."""

LOAD_OPERATIONS = (
    "torch.load",
    "polybundle.load into= (torch)",
    "safetensors load_file",
    "polybundle.load (torch)",
    "keras load_model",
    "keras load_weights",
    "polybundle.load (tensorflow)",
    "polybundle.load (tensorflow, no builder)",
)
"""Loads whose peak memory is also reported as a multiple of the weights' size."""


@dataclass
class Operation:
    """A named operation to time, with an optional untimed step before each run."""

    name: str
    run: Callable[[], Any]
    before: Callable[[], Any] | None = None


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _unlink(*paths: Path) -> Callable[[], None]:
    def drop() -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    return drop


def _torch_operations(weights: Weights, folder: Path) -> list[Operation]:
    import safetensors.torch
    import torch

    model = torch_model(weights)
    state = model.state_dict()
    plain, safe, bundle = folder / "plain.pth", folder / "w.safetensors", folder / "torch.bundle"
    target = polybundle.build(ARCHITECTURE, weights.config, backend="torch")

    def plain_save_fsync() -> None:
        torch.save(state, plain)
        _fsync(plain)

    def plain_load_into() -> Any:
        target.load_state_dict(torch.load(plain, map_location="cpu", weights_only=True))
        return target

    operations = [
        Operation("torch.save", lambda: torch.save(state, plain), _unlink(plain)),
        Operation("torch.save + fsync", plain_save_fsync, _unlink(plain)),
        Operation("torch.load", lambda: torch.load(plain, map_location="cpu", weights_only=True)),
        Operation("torch.load + load_state_dict", plain_load_into),
        Operation("safetensors save_file", lambda: safetensors.torch.save_file(state, safe),
                  _unlink(safe)),
        Operation("safetensors load_file", lambda: safetensors.torch.load_file(safe)),
        Operation("polybundle.save (torch)", lambda: polybundle.save(bundle, {"net": model}),
                  _unlink(bundle)),
        Operation("polybundle.load (torch)", lambda: polybundle.load(bundle).models),
        Operation("polybundle.load into= (torch)",
                  lambda: polybundle.load(bundle, into={"net": target}).models),
    ]
    return operations + _adam_operations(model, folder) + _lazy_operations(weights, folder)


def _adam_operations(model: Any, folder: Path) -> list[Operation]:
    """Weights + Adam state: a training checkpoint saved and restored both ways."""
    import torch

    optimizer = adam_state(model)
    plain, bundle = folder / "checkpoint.pth", folder / "checkpoint.bundle"

    def plain_save() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, plain)
        _fsync(plain)

    def plain_restore() -> Any:
        checkpoint = torch.load(plain, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        return model

    def ours_save() -> None:
        polybundle.save(bundle, {"net": model}, optimizers={"net": optimizer})

    def ours_restore() -> Any:
        loaded = polybundle.load(bundle, into={"net": model})
        loaded.restore_optimizer("net", optimizer)
        return model

    return [
        Operation("torch.save + fsync (weights + Adam)", plain_save, _unlink(plain)),
        Operation("torch.load + load_state_dict (weights + Adam)", plain_restore),
        Operation("polybundle.save (weights + Adam)", ours_save, _unlink(bundle)),
        Operation("polybundle.load into= + restore_optimizer (weights + Adam)", ours_restore),
    ]


def _lazy_operations(weights: Weights, folder: Path) -> list[Operation]:
    """Opening without reading: the 8-layer weights and the same bytes in 1,000 tensors."""
    import torch

    many = many_tensors(weights.nbytes / 2**20)
    model = polybundle.build(ARCHITECTURE, many.config, backend="torch")
    plain, bundle = folder / "many.pth", folder / "many.bundle"
    torch.save(model.state_dict(), plain)
    polybundle.save(bundle, {"net": model})
    first_key = next(iter(model.state_dict()))
    eight = folder / "torch.bundle"

    def lazy_one_tensor() -> np.ndarray:
        return np.array(polybundle.load(eight, lazy=True).tensors("net")[first_key])

    def lazy_no_digest() -> Any:
        specs = polybundle.load(bundle, lazy=True).tensor_specs("net")
        with ArchiveReader(bundle) as archive:
            return lazy_tensors(archive, "net/model.pth", specs, polybundle.get_backend("torch"))

    return [
        Operation("polybundle lazy open + one tensor (torch)", lazy_one_tensor),
        Operation("torch.load mmap (1,000 tensors)",
                  lambda: torch.load(plain, map_location="cpu", weights_only=True, mmap=True)),
        Operation("polybundle lazy open (1,000 tensors)",
                  lambda: polybundle.load(bundle, lazy=True).tensors("net")),
        Operation("polybundle lazy open, no digest (1,000 tensors)",
                  lazy_no_digest),
    ]


def _keras_operations(weights: Weights, folder: Path) -> list[Operation]:
    import keras

    model = keras_model(weights)
    native, h5 = folder / "model.keras", folder / "model.weights.h5"
    bundle, unregistered = folder / "tf.bundle", folder / "tf-no-builder.bundle"
    polybundle.save(unregistered, {"net": keras_model_unregistered(weights)})

    def native_save_fsync() -> None:
        model.save(native)
        _fsync(native)

    return [
        Operation("keras model.save", lambda: model.save(native), _unlink(native)),
        Operation("keras model.save + fsync", native_save_fsync, _unlink(native)),
        Operation("keras load_model", lambda: keras.saving.load_model(native, compile=False)),
        Operation("keras save_weights", lambda: model.save_weights(h5), _unlink(h5)),
        Operation("keras load_weights", lambda: model.load_weights(h5)),
        Operation("polybundle.save (tensorflow)", lambda: polybundle.save(bundle, {"net": model}),
                  _unlink(bundle)),
        Operation("polybundle.load (tensorflow)", lambda: polybundle.load(bundle).models),
        Operation("polybundle.load (tensorflow, no builder)",
                  lambda: polybundle.load(unregistered).models),
    ]


def _cross_operations(folder: Path) -> list[Operation]:
    """Cross-framework loads, where this polybundle supports them (probed once)."""
    candidates = [
        ("polybundle.load (torch bundle as tensorflow)", folder / "torch.bundle", "tensorflow"),
        ("polybundle.load (tensorflow bundle as torch)", folder / "tf.bundle", "torch"),
    ]
    operations = []
    for name, path, backend in candidates:
        if not path.exists():
            continue
        try:
            polybundle.load(path, backend=backend)
        except polybundle.PolybundleError:
            continue

        def cross(path: Path = path, backend: str = backend) -> Any:
            return polybundle.load(path, backend=backend).models

        operations.append(Operation(name, cross))
    return operations


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bench_size(
    mib: float,
    *,
    repeats: int,
    folder: Path,
    log: Callable[[str], None],
    frameworks: tuple[str, ...] = FRAMEWORKS,
) -> dict:
    """Measure every operation on ``mib`` MiB of weights; return the size's report.

    Usage::

        bench_size(1, repeats=1, folder=Path("/tmp"), log=print)["mib"]
        # -> 1
    """
    weights = Weights.of_size(mib)
    flat = weights.flat()
    operations = [Operation("numpy copy (floor)", flat.copy)]
    if "torch" in frameworks and _available("torch"):
        operations += _torch_operations(weights, folder)
    if "tensorflow" in frameworks and _available("keras") and _available("tensorflow"):
        operations += _keras_operations(weights, folder)
    results: dict[str, dict] = {}
    for index, operation in enumerate(operations):
        results[operation.name] = measure(
            operation.run, repeats=repeats, before=operation.before
        ).to_json()
        log(f"  {operation.name}: {results[operation.name]['median_s']:.4f} s")
        if index == len(operations) - 1:
            for cross in _cross_operations(folder):
                results[cross.name] = measure(cross.run, repeats=repeats).to_json()
                log(f"  {cross.name}: {results[cross.name]['median_s']:.4f} s")
    ratios = {
        label: results[ours]["median_s"] / results[theirs]["median_s"]
        for label, (ours, theirs) in RATIOS.items()
        if ours in results and theirs in results
    }
    memory = {
        name: results[name]["peak_rss_mib"] * 2**20 / weights.nbytes
        for name in LOAD_OPERATIONS
        if name in results and results[name]["peak_rss_mib"] is not None
    }
    return {
        "mib": mib,
        "weights_bytes": weights.nbytes,
        "operations": results,
        "ratios": ratios,
        "load_peak_rss_over_weights": memory,
    }


def conditions() -> dict[str, Any]:
    """Return what the figures depend on: machine, versions, load average.

    Example:
        >>> "cpus" in conditions()
        True
    """
    versions = {}
    for module in ("numpy", "torch", "tensorflow", "keras", "safetensors", "h5py"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "polybundle": polybundle.__version__,
        "versions": versions,
    }


def run_benchmark(
    sizes: list[float],
    *,
    repeats: int = 5,
    folder: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = lambda line: None,
    frameworks: tuple[str, ...] = FRAMEWORKS,
) -> dict[str, Any]:
    """Run the benchmark at each size in MiB; return the whole report as a dict.

    Usage::

        run_benchmark([1], repeats=1)["sizes"][0]["mib"]
        # -> 1
    """
    register_architectures()
    with tempfile.TemporaryDirectory(dir=folder, prefix="polybundle-bench-") as temp:
        reports = []
        for mib in sizes:
            log(f"{mib} MiB:")
            reports.append(bench_size(mib, repeats=repeats, folder=Path(temp), log=log,
                                      frameworks=frameworks))
            for path in Path(temp).iterdir():
                path.unlink()
    return {"repeats": repeats, "conditions": conditions(), "sizes": reports}


def render(report: dict[str, Any]) -> str:
    """Return the report as Markdown tables (one per size, then the ratios).

    Usage::

        print(render(run_benchmark([1], repeats=1)))
    """
    lines = []
    for size in report["sizes"]:
        lines += [
            f"### {size['mib']} MiB of weights ({size['weights_bytes'] / 2**20:.1f} MiB)",
            "",
            "| operation | median s | peak RSS above baseline, MiB |",
            "| --- | ---: | ---: |",
        ]
        for name, result in size["operations"].items():
            peak = result["peak_rss_mib"]
            peak_text = "n/a" if peak is None else f"{peak:.0f}"
            lines.append(f"| {name} | {result['median_s']:.4f} | {peak_text} |")
        lines += ["", "| ratio (polybundle / framework) | value |", "| --- | ---: |"]
        lines += [f"| {label} | {value:.2f} |" for label, value in size["ratios"].items()]
        lines += ["", "| load: peak RSS / weights size | value |", "| --- | ---: |"]
        memory = size["load_peak_rss_over_weights"]
        lines += [f"| {name} | {value:.2f} |" for name, value in memory.items()]
        lines.append("")
    return "\n".join(lines)


def _panel(name: str) -> int:
    """Return the plot panel of an operation: 0 PyTorch, 1 TensorFlow/Keras, 2 both (floor)."""
    if name.startswith("numpy"):
        return 2
    return 1 if ("keras" in name or "tensorflow" in name) else 0


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw median time against weights size, one line per operation, into the PNG ``path``.

    One panel per framework measured (PyTorch, TensorFlow/Keras; the NumPy
    copy, the floor, in each), log-log; polybundle's operations solid, the frameworks' and
    safetensors' dashed. Drawn with matplotlib's Agg canvas (no display).

    Usage::

        plot(run_benchmark([1, 4], repeats=1), "bench.png")
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = [size["mib"] for size in report["sizes"]]
    names = list(dict.fromkeys(n for size in report["sizes"] for n in size["operations"]))
    panels = [(index, title) for index, title in enumerate(("PyTorch", "TensorFlow / Keras"))
              if any(_panel(name) == index for name in names)]
    figure = Figure(figsize=(7 * len(panels), 8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (index, title) in zip(axes, panels, strict=True):
        axis.set_prop_cycle(color=colormaps["tab20"].colors)
        for name in names:
            if _panel(name) not in (index, 2):
                continue
            times = [size["operations"].get(name, {}).get("median_s") for size in report["sizes"]]
            points = [(mib, t) for mib, t in zip(sizes, times, strict=True) if t]
            if not points:
                continue
            style = "-" if name.startswith("polybundle") else "--"
            axis.plot(*zip(*points, strict=True), style, marker="o", label=name)
        axis.set(xscale="log", yscale="log", xlabel="weights, MiB", ylabel="median seconds",
                 title=title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.1), ncols=2)
    figure.suptitle(f"save and load time against size (median of {report['repeats']} runs)")
    FigureCanvasAgg(figure).print_png(str(path))


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the benchmark, print tables, write JSON.

    Example:
        $ python benchmarks/bench.py --sizes 10,100,400 --json out.json
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,400", help="MiB of weights, comma separated")
    parser.add_argument("--repeats", type=int, default=5, help="runs per operation (median)")
    parser.add_argument("--json", default=None, help="write the report to this JSON file")
    parser.add_argument("--dir", default=None, help="folder for temporary files")
    parser.add_argument("--plot", default=None, help="write a PNG of time against size here")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma separated, of: " + ", ".join(FRAMEWORKS))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = [float(s) if "." in s else int(s) for s in args.sizes.split(",")]
    report = run_benchmark(
        sizes, repeats=args.repeats, folder=args.dir, log=lambda line: print(line, flush=True),
        frameworks=tuple(args.frameworks.split(",")),
    )
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
