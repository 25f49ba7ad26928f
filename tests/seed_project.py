"""The seed project's model, small: two roles, custom layers, both frameworks, its old writer.

The project polybundle started from is a physics-informed ptychography network
saved as ``wts.h5.zip`` with two roles: ``autoencoder`` (diffraction in,
predicted diffraction intensity out, the model that trains) and
``diffraction_to_obj`` (diffraction in, object amplitude out, for inference).
Both use the project's own layers: a scale layer (``x * intensity_scale``, or
``x / intensity_scale`` at the input; the scale trains when
``params['intensity_scale.trainable']``) and ``SquareLayer`` (``x * x``,
amplitude to intensity). Builders read the project's global params (``N``,
``n_filters_scale``, ``intensity_scale``, ``intensity_scale.trainable``), so
the same builder serves a format-2 bundle (its config) and a legacy archive
(its params). The params also hold a probe: a complex64 ``N x N`` array.

Keras builders and PyTorch builders compute the same function from the same
weights; inputs and outputs are channels-last in both. ``docs/legacy.md``
walks through this module; ``tests/test_seed_project.py`` checks that the
code shown there is this code.

Example:
    >>> net = polybundle.build("seed-autoencoder", model_config(seed_params()),
    ...                        backend="tensorflow")
    >>> net.output_shape
    (None, 16, 16, 1)
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import dill
import h5py
import keras
import numpy as np
import torch

import polybundle
from polybundle.hooks.registry import get_registry, register_tensor_map

ROLES = ("autoencoder", "diffraction_to_obj")
ARCHITECTURES = {"autoencoder": "seed-autoencoder", "diffraction_to_obj": "seed-diffraction-to-obj"}
MODEL_KEYS = ("N", "n_filters_scale", "intensity_scale", "intensity_scale.trainable")
"""The params a builder reads; a format-2 bundle records them as the architecture config."""


def make_probe(n: int, seed: int = 0) -> np.ndarray:
    """Return a complex64 ``n x n`` probe: a Gaussian spot with a phase ramp and noise.

    Example:
        >>> make_probe(4).dtype
        dtype('complex64')
    """
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, n)
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    phase = 0.7 * axis[None, :] + 0.1 * rng.standard_normal((n, n))
    return (np.exp(-2.0 * r2) * np.exp(1j * phase)).astype(np.complex64)


def seed_params(n: int = 16) -> dict[str, Any]:
    """Return the project's global config snapshot, as its training script leaves it.

    Example:
        >>> seed_params()["probe"].shape
        (16, 16)
    """
    probe = make_probe(n)
    return {
        "N": n, "gridsize": 1, "offset": 4, "batch_size": 4, "nepochs": 3,
        "n_filters_scale": 2, "nphotons": 1e9, "model_type": "pinn",
        "amp_activation": "sigmoid", "object.big": True, "probe.big": False,
        "probe.trainable": False, "intensity_scale.trainable": True, "nll_weight": 1.0,
        "h5_path": "wts.h5", "probe": probe, "probe.mask": np.abs(probe) > 0.3,
        "intensity_scale": 12.5,
    }


def model_config(params: dict[str, Any]) -> dict[str, Any]:
    """Return the part of ``params`` the builders read (plain JSON).

    Example:
        >>> model_config(seed_params())["N"]
        16
    """
    return {key: params[key] for key in MODEL_KEYS}


# ---------------------------------------------------------------- Keras


@keras.saving.register_keras_serializable(package="seed_project")
class ScaleLayer(keras.layers.Layer):
    """``x * intensity_scale`` (``x / intensity_scale`` with ``invert``); trainable or fixed."""

    def __init__(self, intensity_scale=1.0, trainable_scale=False, invert=False, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = float(intensity_scale)
        self.trainable_scale = bool(trainable_scale)
        self.invert = bool(invert)
        self.intensity_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_scale),
            trainable=self.trainable_scale, name="intensity_scale",
        )

    def call(self, x):
        return x / self.intensity_scale if self.invert else x * self.intensity_scale

    def get_config(self):
        return {**super().get_config(), "intensity_scale": self.initial_scale,
                "trainable_scale": self.trainable_scale, "invert": self.invert}


@keras.saving.register_keras_serializable(package="seed_project")
class SquareLayer(keras.layers.Layer):
    """``x * x``: amplitude to intensity."""

    def call(self, x):
        return x * x


def keras_model(config: dict[str, Any], *, role: str) -> keras.Model:
    """The encoder-decoder of one role (Keras); see the module docstring."""
    layers, n, f = keras.layers, config["N"], 4 * config["n_filters_scale"]
    scale = config["intensity_scale"]
    x = keras.Input((n, n, 1), name="diffraction")
    y = ScaleLayer(scale, invert=True, name="intensity_in")(x)
    y = layers.Conv2D(f, 3, padding="same", use_bias=False, name="enc_conv1")(y)
    y = layers.BatchNormalization(name="enc_bn")(y)
    y = layers.MaxPooling2D(2, name="enc_pool")(layers.Activation("relu", name="enc_relu")(y))
    y = layers.Conv2D(f // 2, 3, padding="same", activation="relu", name="enc_conv2")(y)
    y = layers.Conv2DTranspose(f // 2, 2, strides=2, activation="relu", name="dec_up")(y)
    y = layers.Conv2DTranspose(1, 3, padding="same", activation="sigmoid", name="dec_convT")(y)
    if role == "autoencoder":
        y = SquareLayer(name="square")(y)
        trainable = config["intensity_scale.trainable"]
        y = ScaleLayer(scale, trainable_scale=trainable, name="intensity_out")(y)
    return keras.Model(x, y, name=role)


@polybundle.architecture("seed-autoencoder", backend="tensorflow")
def keras_autoencoder(config: dict[str, Any]) -> keras.Model:
    """Diffraction -> predicted intensity (Keras)."""
    return keras_model(config, role="autoencoder")


@polybundle.architecture("seed-diffraction-to-obj", backend="tensorflow")
def keras_diffraction_to_obj(config: dict[str, Any]) -> keras.Model:
    """Diffraction -> object amplitude (Keras)."""
    return keras_model(config, role="diffraction_to_obj")


@keras.saving.register_keras_serializable(package="seed_project")
def poisson_nll(counts, predicted):
    """The seed's training loss: Poisson negative log-likelihood of the counts (Keras)."""
    return keras.ops.mean(predicted - counts * keras.ops.log(predicted + 1e-7))


# ---------------------------------------------------------------- PyTorch


class TorchScale(torch.nn.Module):
    """``x * intensity_scale`` (``/`` with ``invert``): a Parameter if trainable, else a buffer."""

    def __init__(self, intensity_scale: float, trainable: bool = False, invert: bool = False):
        super().__init__()
        self.invert = invert
        value = torch.tensor(float(intensity_scale), dtype=torch.float32)
        if trainable:
            self.intensity_scale = torch.nn.Parameter(value)
        else:
            self.register_buffer("intensity_scale", value)

    def forward(self, x):
        return x / self.intensity_scale if self.invert else x * self.intensity_scale


class TorchSeedNet(torch.nn.Module):
    """The encoder-decoder of one role (PyTorch), channels-last in and out."""

    def __init__(self, config: dict[str, Any], role: str):
        super().__init__()
        nn, f, scale = torch.nn, 4 * config["n_filters_scale"], config["intensity_scale"]
        self.role = role
        self.intensity_in = TorchScale(scale, invert=True)
        self.enc_conv1 = nn.Conv2d(1, f, 3, padding=1, bias=False)  # batch norm follows
        self.enc_bn = nn.BatchNorm2d(f, eps=1e-3, momentum=0.01)  # Keras' defaults
        self.enc_conv2 = nn.Conv2d(f, f // 2, 3, padding=1)
        self.dec_up = nn.ConvTranspose2d(f // 2, f // 2, 2, stride=2)
        self.dec_convT = nn.ConvTranspose2d(f // 2, 1, 3, padding=1)
        if role == "autoencoder":
            self.intensity_out = TorchScale(scale, trainable=config["intensity_scale.trainable"])

    def forward(self, x):
        y = self.intensity_in(x).permute(0, 3, 1, 2)
        y = torch.relu(self.enc_bn(self.enc_conv1(y)))
        y = torch.relu(self.enc_conv2(torch.nn.functional.max_pool2d(y, 2)))
        y = torch.sigmoid(self.dec_convT(torch.relu(self.dec_up(y)))).permute(0, 2, 3, 1)
        if self.role == "autoencoder":
            y = self.intensity_out(y * y)
        return y


def torch_poisson_nll(counts, predicted):
    """The seed's training loss (PyTorch): the same formula as :func:`poisson_nll`."""
    return torch.mean(predicted - counts * torch.log(predicted + 1e-7))


@polybundle.architecture("seed-autoencoder", backend="torch")
def torch_autoencoder(config: dict[str, Any]) -> TorchSeedNet:
    """Diffraction -> predicted intensity (PyTorch)."""
    return TorchSeedNet(config, "autoencoder")


@polybundle.architecture("seed-diffraction-to-obj", backend="torch")
def torch_diffraction_to_obj(config: dict[str, Any]) -> TorchSeedNet:
    """Diffraction -> object amplitude (PyTorch)."""
    return TorchSeedNet(config, "diffraction_to_obj")


# ---------------------------------------------------------------- conversion


SCALES = {"autoencoder": ("intensity_in", "intensity_out"), "diffraction_to_obj": ("intensity_in",)}


def register_scale_maps(architectures: dict[str, str] = ARCHITECTURES) -> None:
    """Tell polybundle which tensor the custom scale layers' scalar is in each framework.

    ``ScaleLayer`` and ``TorchScale`` have no canonical kind, so conversion
    needs an explicit map; the standard layers pair by structure.
    """
    for role, name in architectures.items():
        keras_names = {f"{layer}.intensity_scale": f"{layer}/intensity_scale"
                       for layer in SCALES[role]}
        register_tensor_map(
            name, source="torch", target="tensorflow", mapping=keras_names)
        register_tensor_map(
            name, source="tensorflow", target="torch",
            mapping={k: t for t, k in keras_names.items()})


register_scale_maps()


def register_legacy_builders() -> None:
    """Register the builders under the role names, which is how legacy archives find them."""
    for role, name in ARCHITECTURES.items():
        for backend in ("tensorflow", "torch"):
            builder = get_registry().builder(name, backend)
            polybundle.architecture(role, backend=backend, replace=True)(builder)
    register_scale_maps({role: role for role in ROLES})


# ---------------------------------------------------------------- the seed's writer


def write_legacy_archive(
    path: str | os.PathLike[str], models: dict[str, keras.Model], params: dict[str, Any]
) -> Path:
    """Write ``models`` as the seed's ``ModelManager.save_multiple_models`` does (TF era).

    Each role gets ``model.keras`` (``model.save``), ``custom_objects.dill``
    (the layer classes, by reference), ``params.dill`` (the config snapshot,
    arrays and all, plus ``intensity_scale`` and ``_version``) and
    ``model.h5`` (only an ``intensity_scale`` attribute); the folder is
    zipped, deflated, as ``os.walk`` finds it.
    """
    custom_objects = {"ScaleLayer": ScaleLayer, "SquareLayer": SquareLayer}
    intensity_scale = params["intensity_scale"]
    with tempfile.TemporaryDirectory() as temp_dir:
        with open(os.path.join(temp_dir, "manifest.dill"), "wb") as f:
            dill.dump({"models": list(models), "version": "1.0"}, f)
        for name, model in models.items():
            model_dir = os.path.join(temp_dir, name)
            os.makedirs(model_dir)
            model.save(os.path.join(model_dir, "model.keras"))
            with open(os.path.join(model_dir, "custom_objects.dill"), "wb") as f:
                dill.dump(custom_objects, f)
            params_dict = {**params, "intensity_scale": intensity_scale, "_version": "1.0"}
            with open(os.path.join(model_dir, "params.dill"), "wb") as f:
                dill.dump(params_dict, f)
            with h5py.File(os.path.join(model_dir, "model.h5"), "w") as f:
                f.attrs["intensity_scale"] = intensity_scale
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipf:
            for root, _, files in os.walk(temp_dir):
                for file in files:
                    file_path = os.path.join(root, file)
                    zipf.write(file_path, os.path.relpath(file_path, temp_dir))
    return Path(path)
