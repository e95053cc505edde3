"""Transforms applied per example to (input_dict, target_dict) inside tf.data.

``rslearn.train.transforms.Sequential`` lives in this package module, as in rslearn.
"""

from rskeras.train.transforms.transform import Identity, Sequential, Transform

__all__ = ["Identity", "Sequential", "Transform"]
