"""Training state: checkpoints with retention policies, and random-number-generator state.

Internal: the public API is :mod:`polybundle` and, for backend authors, :mod:`polybundle.plugin`.
"""
