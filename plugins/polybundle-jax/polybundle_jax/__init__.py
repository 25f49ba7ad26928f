"""polybundle-jax: the JAX backend of polybundle, as a plugin package.

Models are Flax NNX modules, stored as ``<role>/model.safetensors``;
optimizers are ``flax.nnx.Optimizer``s over transformations made with
:func:`adam`, :func:`adamw` or :func:`sgd` (optax's, with their
hyperparameters recorded). polybundle finds this package through the
``polybundle`` entry-point group; importing it is only needed for the
optimizer factories.

Example:
    >>> import polybundle, polybundle_jax
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, polybundle_jax.adam(1e-3), wrt=nnx.Param)
    >>> manifest = polybundle.save("jax.bundle", {"net": model}, optimizers={"net": optimizer})
    >>> list(manifest["members"])
    ['params.json', 'net/model.safetensors', 'net/optimizer.json', 'net/optimizer.safetensors']
    >>> bundle = polybundle.load("jax.bundle", into={"net": nnx.Linear(3, 2, rngs=nnx.Rngs(1))})
    >>> np.array_equal(bundle.models["net"].kernel[...], model.kernel[...])
    True
    >>> bundle.optimizer_state("net").algorithm
    'adam'
"""

from __future__ import annotations

from .backend import WEIGHTS_MEMBER, JaxBackend
from .optim import adam, adamw, recipe, sgd

__version__ = "0.1.0"

__all__ = ["JaxBackend", "WEIGHTS_MEMBER", "adam", "adamw", "sgd", "recipe", "__version__"]
