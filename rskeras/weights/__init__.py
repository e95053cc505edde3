"""PyTorch-format weights: files, key rules and the mapping onto Keras variables.

Every module that reads, writes or maps torch state dicts lives here, so that a new
component (a foundation-model encoder, a head) needs only ``torch_params`` and, for
pretrained weights, :func:`rskeras.weights.files.read_state_dict`:

* ``files``: ``{torch key: numpy array}`` from ``.npz`` / ``.safetensors`` / torch files,
  written back as ``.npz`` / ``.safetensors``; rslearn's restore_config key rules
  (selector, ignore_prefixes, remap_prefixes). numpy only.
* ``torch_pickle``: torch zip files (``.pth``/``.pt``/``.ckpt``/``.bin``) through
  ``torch.load(weights_only=True)`` when torch is installed, else a restricted
  pure-Python unpickler that runs no code from the file. numpy only.
* ``torch_params``: ``TorchParam`` (torch key -> Keras variable + layout),
  ``load_torch_state_dict`` / ``torch_state_dict`` and the helpers for standard Keras
  layers (Dense, Conv, LayerNormalization, BatchNormalization, torch Sequentials).
* ``restore``: loading into a model: Lightning checkpoints, plain state dicts, and
  rslearn's ``restore_config``.
* ``convert``: the ``tools/convert_weights.py`` command line. numpy only.
* ``errors``: ``CheckpointError`` (a file cannot be read) and ``WeightLoadError`` (a state
  dict does not fit a model).

Importing the package imports nothing heavy.
"""
