#!/usr/bin/env python
"""Train, validate, test or predict with an rslearn-style YAML config.

    python tools/train.py --config configs/classification.yaml          # fit
    python tools/train.py test --config cfg.yaml --ckpt_path runs/cfg/checkpoints/best.weights.h5
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rskeras.lightning_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
