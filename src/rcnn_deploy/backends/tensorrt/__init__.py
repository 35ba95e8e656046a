"""TensorRT (8.6 / 10 / 11) and TensorRT-RTX: engine building and the runtime.

Torch-free and Python 3.9 compatible: this is where real TensorRT runs in our setup. Version differences
are kept in :mod:`.compat`.
"""
