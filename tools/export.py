#!/usr/bin/env python
"""Export a trained model to a SavedModel (TF Serving) or TFLite (LiteRT), pre-processing inside.

    python tools/export.py --config cfg.yaml --checkpoint runs/cfg/checkpoints/best.weights.h5 --format saved_model
    python tools/export.py --config cfg.yaml --checkpoint best.weights.h5 --format tflite --quantize int8 --check 200

See docs/deployment.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
