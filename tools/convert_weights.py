#!/usr/bin/env python
"""Convert a PyTorch weights file into a torch-free state dict (.npz or .safetensors).

Examples::

    # whole rslearn model, keys relative to the model (encoder.0..., decoder.0...)
    python tools/convert_weights.py last.ckpt model.npz --selector state_dict --remap model. ""

    # SatlasPretrain weights, loadable by SatlasPretrain(weights_path=...)
    python tools/convert_weights.py sentinel2_swinb_si_ms.pth satlas.safetensors

    # torchvision Swin-v2-B ImageNet weights for Swin(pretrained=True, weights_path=...)
    python tools/convert_weights.py swin_v2_b-781e5279.pth swin_v2_b.npz

See rskeras/weights/convert.py and docs/weights.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.weights.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
