"""rskeras: a TensorFlow/Keras port of the rslearn training stack."""

__version__ = "0.1.0"
