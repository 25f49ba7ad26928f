"""The built-in TensorFlow/Keras 3 backend of polybundle, a plugin like any other.

It is registered through the ``polybundle`` entry-point group; nothing here
imports TensorFlow or Keras at module top.
"""
