"""Deployment: SavedModel (TF Serving) and TFLite (LiteRT) exports with the pre- and
post-processing inside, parity reports, a loopback serving stand-in and TF-free edge
prediction. See docs/deployment.md.

Importing this package imports nothing heavy: ``description``, ``litert`` and
``sliding_window`` run without TensorFlow.
"""
