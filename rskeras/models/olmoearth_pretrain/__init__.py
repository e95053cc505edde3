"""OlmoEarth (allenai/olmoearth_pretrain) in rskeras: rslearn's
``rslearn.models.olmoearth_pretrain`` (``model.OlmoEarth``, ``norm.OlmoEarthNormalize``; rslearn's
``optimizer.LayerDecayAdamW`` is ``rskeras.train.layer_decay``) and the encoder it wraps, one concept per module:
``config`` (architectures), ``modalities``, ``patch_embed`` (+ ``resize``), ``encodings``,
``rope``, ``attention``, ``encoder``, ``timestamps``, ``pooling``, ``bundle``."""
