"""The built-in PyTorch backend of polybundle, a plugin like any other.

It is registered through the ``polybundle`` entry-point group; nothing here
imports torch at module top.
"""
