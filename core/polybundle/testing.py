"""The conformance kit every backend runs against itself: ``polybundle.testing``.

Two parts. The feature matrix (:func:`feature_matrix`, from
:mod:`polybundle.tools.conformance`, pytest-free) checks every feature for
every backend whose plugin hands an :class:`Adapter` to the
``polybundle_conformance_adapters`` hook; ``polybundle conformance`` prints it.
The class suite :class:`BackendConformance` holds the finer checks
(detection, strict loading, optimizer mismatches, ...): a backend package
subclasses it in its tests and sets ``adapter``. Importing this module needs
pytest but no framework; adapters import their framework inside their methods.

Example (``tests/test_conformance.py`` of a backend package):
    >>> from polybundle.testing import Adapter, BackendConformance
    >>> class NumpyAdapter(Adapter):
    ...     backend = "numpy"
    ...     def make_model(self, config, seed): return {}
    ...     def predict(self, model, x): return x
    >>> class TestNumpyConformance(BackendConformance):
    ...     adapter = NumpyAdapter()
    >>> TestNumpyConformance.adapter.architecture
    'polybundle-conformance-convnet'
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polybundle.api.loading import detect, load
from polybundle.api.saving import save
from polybundle.errors import (
    IntegrityError,
    OptimizerMismatchError,
    TensorMismatchError,
    UnknownArchitectureError,
)
from polybundle.format.archive import ArchiveReader
from polybundle.hooks.registry import backend_for_model, get_backend, get_registry
from polybundle.model.layouts import OPAQUE, SCALAR
from polybundle.tools.conformance import (
    ARCHITECTURE,
    CONFIG,
    FAIL,
    FEATURES,
    NOT_APPLICABLE,
    OTHER_CONFIG,
    PARAMS,
    PASS,
    Adapter,
    Cell,
    Feature,
    NotApplicable,
    cases,
    conformance_adapters,
    feature_matrix,
    matrix_table,
    neutral_inputs,
    problems,
    run_cell,
)

__all__ = [
    "ARCHITECTURE", "CONFIG", "FAIL", "FEATURES", "NOT_APPLICABLE", "OTHER_CONFIG", "PARAMS",
    "PASS", "Adapter", "BackendConformance", "Cell", "Feature", "NotApplicable", "cases",
    "conformance_adapters", "feature_matrix", "matrix_table", "neutral_inputs", "problems",
    "run_cell",
]

def _block_modules_script(modules: list[str], body: str) -> str:
    """Return a script that makes importing ``modules`` fail, then runs ``body``."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {modules!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked by the conformance suite: " + name)
        sys.meta_path.insert(0, Block())
        """
    ) + textwrap.dedent(body)


class BackendConformance:
    """The conformance tests; subclass it as ``Test...`` and set :attr:`adapter`.

    Every test builds small models, so the whole class runs in seconds.
    A backend without optimizer support (``adapter.algorithm is None``) has
    its optimizer tests skipped with that reason.
    """

    adapter: Adapter

    def _model(self, seed: int, *, other: bool = False) -> Any:
        config = self.adapter.other_config if other else self.adapter.config
        return self.adapter.make_model(dict(config), seed)

    def _save(self, path: Path, models: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        architectures = {
            role: (self.adapter.architecture, dict(self.adapter.config)) for role in models
        }
        return save(path, models, params=PARAMS, architectures=architectures, **kwargs)

    def _x(self, seed: int = 7) -> np.ndarray:
        return self.adapter.inputs(dict(self.adapter.config), seed)

    def _needs_optimizer(self) -> None:
        if self.adapter.algorithm is None:
            pytest.skip(f"the {self.adapter.backend!r} adapter declares no optimizer support")

    def test_backend_is_registered_and_available(self) -> None:
        backend = get_backend(self.adapter.backend)
        for alias in (backend.name, *backend.aliases):
            assert get_backend(alias.upper()) is backend
        assert backend.is_available()
        backend.require()
        assert backend.weights_member and "/" not in backend.weights_member
        assert backend.framework_version() != "unknown"
        assert get_registry().has_builder(self.adapter.architecture, backend.name)

    def test_owns_its_models_and_only_them(self) -> None:
        backend = get_backend(self.adapter.backend)
        model = self._model(0)
        assert backend.owns(model)
        assert backend_for_model(model) is backend
        assert not backend.owns(object()) and not backend.owns(np.zeros(3))
        others = [b for b in get_registry().backends.values() if b is not backend]
        assert not any(b.is_available() and b.owns(model) for b in others)

    def test_describe_tags_every_tensor(self) -> None:
        specs = get_backend(self.adapter.backend).describe(self._model(0))
        assert specs, "describe() returned no tensors"
        assert len({s.name for s in specs}) == len(specs)
        assert len({s.key for s in specs}) == len(specs)
        for spec in specs:
            assert spec.numpy_dtype.itemsize > 0, spec  # a known dtype, bfloat16 too
            if spec.layout == SCALAR:
                assert spec.shape == (), spec
            elif spec.layout != OPAQUE:
                assert len(spec.layout.split(",")) == len(spec.shape), spec
        assert any(s.layout not in (OPAQUE, SCALAR) for s in specs), "every tensor is opaque"

    def test_round_trip_two_roles_bit_for_bit(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        first, second = self._model(0), self._model(1)
        path = tmp_path / "two.bundle"
        manifest = self._save(path, {"first": first, "second": second})
        assert manifest["backend"] == backend.name
        assert [m["weights"] for m in manifest["models"]] == [
            f"first/{backend.weights_member}", f"second/{backend.weights_member}"
        ]
        bundle = load(path)
        assert bundle.backend == backend.name and bundle.params == PARAMS
        x = self._x()
        for role, model in (("first", first), ("second", second)):
            loaded = bundle.models[role]
            assert loaded is not model
            np.testing.assert_array_equal(
                self.adapter.predict(loaded, x), self.adapter.predict(model, x)
            )
        assert not np.array_equal(
            self.adapter.predict(bundle.models["first"], x), self.adapter.predict(second, x)
        ), "two seeds gave the same model; the round trip proves nothing"

    def test_load_into_given_model(self, tmp_path: Path) -> None:
        model, target = self._model(0), self._model(2)
        path = tmp_path / "into.bundle"
        self._save(path, {"net": model})
        bundle = load(path, into={"net": target})
        assert bundle.models["net"] is target
        x = self._x()
        np.testing.assert_array_equal(
            self.adapter.predict(target, x), self.adapter.predict(model, x)
        )

    def test_tensor_export_and_import_agree(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        model = self._model(0)
        specs = backend.describe(model)
        path, again = tmp_path / "a.bundle", tmp_path / "b.bundle"
        self._save(path, {"net": model})
        bundle = load(path)
        exported = dict(bundle.tensors("net"))
        assert list(exported) == [s.name for s in specs]
        for spec in specs:
            assert exported[spec.name].shape == spec.shape, spec
            assert str(exported[spec.name].dtype) == spec.dtype, spec
        self._save(again, {"net": bundle.models["net"]})
        reexported = load(again).tensors("net")
        for name, array in exported.items():
            np.testing.assert_array_equal(reexported[name], array, err_msg=name)

    def test_detected_as_its_backend(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        path = tmp_path / "d.bundle"
        self._save(path, {"net": self._model(0)})
        with ArchiveReader(path) as archive:
            detection = detect(archive)
        assert detection.format == "polybundle"
        assert detection.backend is not None and get_backend(detection.backend) is backend

    def test_inspect_without_the_framework(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        model = self._model(0)
        path = tmp_path / "i.bundle"
        self._save(path, {"net": model})
        script = _block_modules_script(
            list(backend.modules),
            f"""
            import json, polybundle
            report = polybundle.inspect({str(path)!r})
            print(json.dumps([report["backend"], [t["name"] for t in report["tensors"]]]))
            """,
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        reported = json.loads(done.stdout.strip().splitlines()[-1])
        assert reported == [backend.name, [s.name for s in backend.describe(model)]]

    def test_mismatched_model_is_refused_and_left_unchanged(self, tmp_path: Path) -> None:
        path = tmp_path / "m.bundle"
        self._save(path, {"net": self._model(0)})
        other = self._model(3, other=True)
        before = get_backend(self.adapter.backend).describe(other)
        x = self.adapter.inputs(dict(self.adapter.other_config), 7)
        expected = self.adapter.predict(other, x)
        with pytest.raises(TensorMismatchError):
            load(path, into={"net": other})
        assert get_backend(self.adapter.backend).describe(other) == before
        np.testing.assert_array_equal(self.adapter.predict(other, x), expected)

    def test_damaged_weights_raise_integrity_error(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        path = tmp_path / "damaged.bundle"
        self._save(path, {"net": self._model(0)})
        member = f"net/{backend.weights_member}"
        with ArchiveReader(path) as archive:
            offset = archive.data_offset(member) + archive.size(member) // 2
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=member):
            load(path)

    def test_weights_file_alone(self, tmp_path: Path) -> None:
        backend = get_backend(self.adapter.backend)
        model = self._model(0)
        path = tmp_path / "s.bundle"
        self._save(path, {"net": model})
        with ArchiveReader(path) as archive, archive.open(f"net/{backend.weights_member}") as src:
            if not self.adapter.standalone:
                with pytest.raises(UnknownArchitectureError, match="polybundle.architecture"):
                    backend.load_standalone(src)
                return
            rebuilt = backend.load_standalone(src)
        x = self._x()
        np.testing.assert_array_equal(
            self.adapter.predict(rebuilt, x), self.adapter.predict(model, x)
        )

    def test_optimizer_state_round_trip(self, tmp_path: Path) -> None:
        self._needs_optimizer()
        backend = get_backend(self.adapter.backend)
        model = self._model(0)
        optimizer = self.adapter.make_optimizer(model)
        for step in range(3):
            self.adapter.train_step(model, optimizer, self._x(step))
        path = tmp_path / "o.bundle"
        self._save(path, {"net": model}, optimizers={"net": optimizer})
        bundle = load(path)
        state = bundle.optimizer_state("net")
        assert state.algorithm == self.adapter.algorithm
        assert state.step in (3, None)
        specs = {s.name: s for s in backend.describe(model)}
        assert state.slots, "a trained optimizer exported no slots"
        for name, slots in state.slots.items():
            for slot, array in slots.items():
                assert array.shape == specs[name].shape, (name, slot)
        restored = bundle.models["net"]
        fresh = self.adapter.make_optimizer(restored)
        bundle.restore_optimizer("net", fresh)
        x = self._x(99)
        self.adapter.train_step(model, optimizer, x)
        self.adapter.train_step(restored, fresh, x)
        np.testing.assert_array_equal(
            self.adapter.predict(restored, x), self.adapter.predict(model, x)
        )

    def test_optimizer_for_another_model_is_refused(self, tmp_path: Path) -> None:
        self._needs_optimizer()
        model = self._model(0)
        optimizer = self.adapter.make_optimizer(model)
        self.adapter.train_step(model, optimizer, self._x(0))
        path = tmp_path / "r.bundle"
        self._save(path, {"net": model}, optimizers={"net": optimizer})
        bundle = load(path)
        stranger = self._model(4, other=True)
        with pytest.raises(OptimizerMismatchError):
            bundle.restore_optimizer("net", self.adapter.make_optimizer(stranger))
