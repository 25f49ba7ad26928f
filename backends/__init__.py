"""Built-in backends, each an ordinary pluggy plugin module.

``polybundle.backends.torch`` binds PyTorch and ``polybundle.backends.tensorflow``
binds TensorFlow/Keras 3. Neither imports its framework at module top.

Example:
    >>> import polybundle.backends.torch as torch_plugin
    >>> torch_plugin.TorchBackend.name
    'torch'
"""
