"""Deployment: SavedModel (TF Serving) and TFLite (LiteRT) exports with the pre- and
post-processing inside, parity reports and TF-free edge prediction (the loopback TF
Serving stand-in used by the tests is ``rskeras.testing.serving``). See docs/deployment.md.

Importing this package imports nothing heavy: ``description``, ``litert`` and
``sliding_window`` run without TensorFlow.
"""
