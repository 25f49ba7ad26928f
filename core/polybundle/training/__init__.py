"""Training state a bundle carries besides weights: random-number-generator state.

Checkpoint directories (:class:`polybundle.CheckpointManager`) are built on the
public API and live in :mod:`polybundle.api.checkpoints`.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
