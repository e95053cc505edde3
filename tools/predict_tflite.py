#!/usr/bin/env python
"""Run an exported TFLite model over a GeoTIFF scene (same as ``rskeras predict-tflite``).

    python tools/predict_tflite.py --model model.tflite --input scene.tif --output out.tif --overlap 16

See rskeras/export/predict_tflite.py and docs/deployment.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["predict-tflite"] + sys.argv[1:], prog="predict_tflite.py"))
