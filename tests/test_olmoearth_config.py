"""configs/olmoearth_segmentation.yaml: OlmoEarth v1.2 Nano (random init) + UNetDecoder
trains on the sample dataset through the CLI with the loss going down, exports a SavedModel
on raw bands (OlmoEarthNormalize inside) that matches the Keras model, and converts to
TFLite with builtin ops only."""

import json

import numpy as np
import pytest
import tensorflow as tf

from rskeras import lightning_cli
from rskeras.run import build_run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CONFIG = "configs/olmoearth_segmentation.yaml"


@pytest.fixture(scope="module")
def trained(sample_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("olmoearth_run")
    args = [
        "fit",
        "--config", CONFIG,
        "--data.init_args.path", sample_dataset,
        # ~70 small steps: a randomly initialised ViT needs ~35 before its loss leaves the
        # class prior; steps on 32x32 windows are cheap (the test time is tracing).
        "--data.init_args.batch_size", "4",
        "--data.init_args.train_config.sampler",
        "{class_path: rslearn.train.dataset.RandomSamplerFactory, init_args: {replacement: true, num_samples: 96}}",
        "--trainer.max_epochs", "3",
        "--trainer.check_val_every_n_epoch", "3",
        "--trainer.callbacks", "[]",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.export_saved_model", "true",
        "--seed_everything", "0",
    ]  # fmt: skip
    assert lightning_cli.main(args) == 0
    return root


def test_config_trains_with_the_loss_going_down(trained):
    rows = json.loads((trained / "metrics.json").read_text())
    assert len(rows) == 3
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], [r["train_loss"] for r in rows]
    assert (trained / "saved_model" / "saved_model.pb").exists()


@pytest.fixture(scope="module")
def reloaded(trained, sample_dataset):
    """The config's Run (test split) with the trained weights."""
    config = lightning_cli.load_config([CONFIG], [("data.init_args.path", sample_dataset), ("trainer.default_root_dir", str(trained / "reload"))])
    r = build_run(config, "test")
    (checkpoint,) = (trained / "checkpoints").glob("*.weights.h5")
    r.lm.load_weights(str(checkpoint))
    return r


def test_saved_model_on_raw_bands_matches_keras(trained, reloaded):
    from rskeras.export.examples import raw_examples
    from rskeras.export.preprocessing import RawInput

    r = reloaded
    inputs, _ = next(iter(r.data.tf_dataset("test")))
    keras_out = r.lm.inference_model(r.input_specs)(inputs)
    served = tf.saved_model.load(str(trained / "saved_model")).signatures["serving_default"]
    n = len(inputs["sentinel2_l2a"])
    raw = [e["sentinel2_l2a"][0] for e in raw_examples(r.data, "test", [RawInput("sentinel2_l2a", ())], limit=n)]
    out = served(sentinel2_l2a=tf.constant(np.stack(raw)))
    assert set(out) == set(keras_out)
    for key in keras_out:
        np.testing.assert_allclose(out[key].numpy(), np.asarray(keras_out[key]), atol=1e-5, rtol=0, err_msg=key)


def test_tflite_builtin_ops(reloaded):
    from rskeras.export.examples import raw_examples
    from rskeras.export.inference import exportable_from_run
    from rskeras.export.litert import LiteRTModel
    from rskeras.export.preprocessing import RawInput
    from rskeras.export.tflite import convert_tflite

    r = reloaded
    exportable = exportable_from_run(r, stage="test")
    content = convert_tflite(exportable, (32, 32), "none")  # raises UnsupportedOpsError naming any non-builtin op
    lite = LiteRTModel(content=content)
    example = next(iter(raw_examples(r.data, "test", [RawInput("sentinel2_l2a", ())], limit=1)))
    image = example["sentinel2_l2a"][:1]
    got = lite(sentinel2_l2a=image)
    want = exportable.keras_model(32, 32, batch=1)({"sentinel2_l2a": tf.constant(image)})
    np.testing.assert_allclose(got["probabilities"], np.asarray(want["probabilities"]), atol=1e-4, rtol=0)
