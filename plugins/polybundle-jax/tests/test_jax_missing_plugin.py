"""Without polybundle-jax, a JAX bundle gives an error naming the package to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax_models

import polybundle

pytestmark = jax_models.needs_jax

HIDE_PLUGIN = textwrap.dedent(
    """
    import importlib.abc, importlib.metadata, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("polybundle_jax", "jax", "flax", "optax"):
                raise ModuleNotFoundError("hidden: " + name, name=name)

    sys.meta_path.insert(0, Hide())
    real = importlib.metadata.distributions  # what pluggy scans for entry points
    importlib.metadata.distributions = lambda **kw: [
        d for d in real(**kw) if d.metadata["Name"] != "polybundle-jax"
    ]
    import polybundle, polybundle.hooks.manager
    polybundle.hooks.manager.reset()
    try:
        polybundle.load(sys.argv[1])
    except polybundle.PolybundleError as err:
        print(type(err).__name__ + ": " + str(err))
    else:
        print("loaded")
    print(sorted(polybundle.hooks.registry.get_registry().backends))
    """
)


def test_jax_bundle_without_the_plugin_names_the_package(tmp_path):
    path = tmp_path / "jax.bundle"
    model = jax_models.convnet(jax_models.CONFIG)
    polybundle.save(path, {"net": model}, architectures={"net": (jax_models.ARCH, {})})
    done = subprocess.run(
        [sys.executable, "-c", HIDE_PLUGIN, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    error, backends = done.stdout.strip().splitlines()[-2:]
    assert "jax" not in backends
    assert error.startswith("UnknownBackendError: ")
    assert "pip install polybundle-jax" in error
