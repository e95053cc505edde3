"""OlmoEarth: architectures of every ModelID, bundles (torch-free reading, round trip, no
downloads), arguments, the merged timeline, normalization, precision and XLA."""

import datetime
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from olmoearth_helpers import FIXTURES, batch_inputs, encoder_state, load, model_for, write_config

from rskeras.models.olmoearth_pretrain import bundle, modalities
from rskeras.models.olmoearth_pretrain.config import (
    MODEL_ARCHS,
    EncoderConfig,
    ModelID,
    arch_config,
    bundle_config,
    encoder_config_from_bundle,
    encoder_state_dict_shapes,
    model_id_config,
)
from rskeras.models.olmoearth_pretrain.encoder import Encoder
from rskeras.models.olmoearth_pretrain.model import EMBEDDING_SIZES, OlmoEarth
from rskeras.models.olmoearth_pretrain.norm import OlmoEarthNormalize, load_computed_config
from rskeras.models.olmoearth_pretrain.timestamps import civil_from_posix, parse_timedelta, prepare_merged
from rskeras.weights.torch_params import torch_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTS = json.load(open(os.path.join(FIXTURES, "olmoearth_arch_facts.json")))["archs"]
SMALL = "olmoearth_small_v12_merged.npz"


# ---- architectures ------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [m for m in ModelID if MODEL_ARCHS[m][0] != "v1.3"], ids=lambda m: m.name)
def test_every_model_id_matches_the_package(model_id):
    """State-dict keys (in order), shapes and parameter counts of every ModelID's encoder
    equal olmoearth_pretrain's (computed from the architecture, no weights built)."""
    facts = FACTS["/".join(MODEL_ARCHS[model_id])]
    assert facts["model_id"] == model_id.value
    config = model_id_config(model_id)
    shapes = encoder_state_dict_shapes(config)
    assert list(shapes) == list(facts["encoder_state_dict"])
    assert {k: list(v) for k, v in shapes.items()} == facts["encoder_state_dict"]
    assert sum(int(np.prod(s)) for s in shapes.values()) == facts["encoder_params"]
    assert config.to_dict() == facts["encoder_config"]
    assert EMBEDDING_SIZES[model_id] == facts["embedding_size"]


@pytest.mark.parametrize("version", ["v1", "v1.1", "v1.2"])
def test_built_encoders_have_the_computed_weights(version):
    """The Keras layers hold exactly the analytic state dict (checked on nano; the full
    sizes share the code and differ only in the numbers)."""
    config = arch_config(version, "nano")
    encoder = Encoder(config)
    state = torch_state_dict(encoder)
    expected = encoder_state_dict_shapes(config)
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(int(np.prod(v.shape)) for v in encoder.weights) == FACTS[f"{version}/nano"]["encoder_params"]
    # month_embed is frozen in olmoearth_pretrain (nn.Embedding.from_pretrained(freeze=True)).
    assert encoder.composite_encodings.month_embed.trainable is False


def test_v1_3_is_refused_clearly():
    with pytest.raises(ValueError, match="attention_pooler_config.*not supported"):
        OlmoEarth(patch_size=8, model_id="OLMOEARTH_V1_3_BASE", random_initialization=True)


def test_encoder_config_round_trip_and_errors():
    config = arch_config("v1.2", "tiny")
    again = encoder_config_from_bundle(bundle_config(config))
    assert again == config
    d = config.to_dict()
    with pytest.raises(ValueError, match="unknown field.*'not_a_field'"):
        EncoderConfig.from_dict({**d, "not_a_field": 1})
    with pytest.raises(ValueError, match="only_decode_modalities"):
        encoder_config_from_bundle({"model": {"encoder_config": d}})
    with pytest.raises(ValueError, match="position_encoding"):
        EncoderConfig.from_dict({**d, "position_encoding": "spiral"})
    # A config that predates use_linear_patch_embed used Conv2d patch embeddings.
    legacy = {k: v for k, v in arch_config("v1", "nano").to_dict().items() if k != "use_linear_patch_embed"}
    cfg = encoder_config_from_bundle({"model": {"encoder_config": legacy}, "train_module": {"masking_config": {"strategy_config": {"only_decode_modalities": ["srtm"]}}}})
    assert cfg.use_linear_patch_embed is False and "srtm" not in cfg.encoded_modalities()


# ---- bundles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    z, config = load(SMALL)
    return z, config, batch_inputs(z, config)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_bundle_round_trip(small, tmp_path, fmt):
    """Torch-layout weights (a torch zip written without torch, as released) + config.json
    -> model_path -> the fixture's outputs."""
    z, config, inputs = small
    state = encoder_state(z)
    directory = tmp_path / "bundle"
    write_config(str(directory), config)
    full = {f"encoder.{k}": v for k, v in state.items()}
    full["decoder.some.weight"] = np.ones((2, 2), np.float32)  # the rest of the pretraining model
    full["target_encoder.norm.weight"] = np.ones((64,), np.float32)
    if fmt == "pth":
        from rskeras.weights.torch_pickle import write_torch_zip

        write_torch_zip(full, str(directory / "weights.pth"))
    else:
        from rskeras.weights.files import write_state_dict

        write_state_dict(full, str(directory / "weights.safetensors"))
    kwargs = {k: v for k, v in config["wrapper_kwargs"].items() if k != "timestamp_error_tolerance"}
    model = OlmoEarth(model_path=str(directory), timestamp_error_tolerance={"days": 10}, **kwargs)
    (features,) = model(inputs)
    np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2), z["out/pooled/features"], atol=1e-4, rtol=0)
    # The weights read back are the bundle's (not a random init).
    np.testing.assert_array_equal(model.encoder.norm.gamma.numpy(), state["norm.weight"])


def test_convert_weights_cli_makes_an_encoder_bundle(small, tmp_path):
    z, config, _ = small
    directory = tmp_path / "bundle"
    path = bundle.write_bundle(str(directory), encoder_config_from_bundle(config["bundle_config_json"]), encoder_state(z), fmt="pth")
    out = directory / "weights.safetensors"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), path, str(out), "--no-torch", "--quiet", "--ignore", "decoder.", "--ignore", "target_encoder."]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    os.remove(path)
    model = OlmoEarth(model_path=str(directory), patch_size=4, use_legacy_timestamps=True, autocast_dtype=None)
    np.testing.assert_array_equal(model.encoder.norm.beta.numpy(), encoder_state(z)["norm.bias"])


def test_model_id_without_a_local_bundle_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(bundle.BUNDLE_DIR_ENV, raising=False)
    with pytest.raises(bundle.BundleError) as info:
        OlmoEarth(patch_size=8, model_id="OLMOEARTH_V1_NANO")
    message = str(info.value)
    assert "https://huggingface.co/allenai/OlmoEarth-v1-Nano" in message
    assert "model_path: OlmoEarth-v1-Nano" in message and "tools/convert_weights.py" in message
    # Random initialization needs no bundle: the architecture table.
    model = OlmoEarth(patch_size=8, model_id="OlmoEarth-v1-Nano", random_initialization=True)
    assert model.get_backbone_channels() == [(8, 128)] and len(model.encoder.blocks) == 4


def test_model_id_finds_local_bundles(small, tmp_path, monkeypatch):
    z, config, inputs = small
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--allenai--OlmoEarth-v1_2-Nano" / "snapshots" / "abc123"
    bundle.write_bundle(str(snapshot), encoder_config_from_bundle(config["bundle_config_json"]), encoder_state(z))
    (tmp_path / "hub" / "models--allenai--OlmoEarth-v1_2-Nano" / "refs").mkdir()
    (tmp_path / "hub" / "models--allenai--OlmoEarth-v1_2-Nano" / "refs" / "main").write_text("abc123")
    model = OlmoEarth(patch_size=4, model_id=ModelID.OLMOEARTH_V1_2_NANO, autocast_dtype=None, use_legacy_timestamps=False, timestamp_error_tolerance="10 days, 0:00:00")
    (features,) = model(inputs)
    np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2), z["out/pooled/features"], atol=1e-4, rtol=0)
    monkeypatch.setenv(bundle.BUNDLE_DIR_ENV, str(tmp_path / "bundles"))
    bundle.write_bundle(str(tmp_path / "bundles" / "OlmoEarth-v1_2-Nano"), encoder_config_from_bundle(config["bundle_config_json"]), encoder_state(z))
    assert bundle.find_model_id_bundle(ModelID.OLMOEARTH_V1_2_NANO) == str(tmp_path / "bundles" / "OlmoEarth-v1_2-Nano")


def test_bundle_and_checkpoint_errors(small, tmp_path):
    z, config, _ = small
    with pytest.raises(bundle.BundleError, match="config.json: not found"):
        OlmoEarth(patch_size=4, model_path=str(tmp_path / "nothing"))
    write_config(str(tmp_path / "b"), config)
    with pytest.raises(bundle.BundleError, match="no weights file"):
        OlmoEarth(patch_size=4, model_path=str(tmp_path / "b"))
    # checkpoint_path: the distributed checkpoint itself is not readable without torch.
    with pytest.raises(bundle.BundleError, match="model_and_optim"):
        OlmoEarth(patch_size=4, checkpoint_path=str(tmp_path / "b"))
    model = OlmoEarth(patch_size=4, checkpoint_path=str(tmp_path / "b"), random_initialization=True)
    assert model.config.encoder_input_modalities is None  # rslearn does not restrict checkpoint encoders
    state = encoder_state(z)
    del state["norm.weight"]
    bundle.write_bundle(str(tmp_path / "c"), encoder_config_from_bundle(config["bundle_config_json"]), state)
    with pytest.raises(bundle.BundleError, match=r"missing \(1\): norm.weight"):
        OlmoEarth(patch_size=4, model_path=str(tmp_path / "c"))


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one of model_id, model_path, or checkpoint_path"):
        OlmoEarth(patch_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        OlmoEarth(patch_size=4, model_id="OLMOEARTH_V1_NANO", model_path="x")
    with pytest.raises(ValueError, match="unknown OlmoEarth model_id"):
        OlmoEarth(patch_size=4, model_id="OLMOEARTH_V9")
    base = dict(patch_size=4, model_id="OLMOEARTH_V1_2_NANO", random_initialization=True)
    with pytest.raises(ValueError, match="selector"):
        OlmoEarth(selector=["decoder"], **base)
    with pytest.raises(KeyError, match="sdpa_backends: unknown backend 'fast'"):
        OlmoEarth(sdpa_backends=["flash", "fast"], **base)
    with pytest.raises(ValueError, match="requires use_location_token_output"):
        OlmoEarth(projected_location_token_dim=8, **base)
    with pytest.raises(ValueError, match="no AttentionPooler"):
        OlmoEarth(use_location_token_output=True, **base)
    with pytest.raises(ValueError, match="autocast_dtype"):
        OlmoEarth(autocast_dtype="int8", **base)
    with pytest.raises(ValueError, match="forward_kwargs"):
        OlmoEarth(forward_kwargs={"token_exit_cfg": {}}, **base)
    with pytest.raises(ValueError, match="timestamp_error_tolerance"):
        OlmoEarth(timestamp_error_tolerance=15, **base)
    model = OlmoEarth(sdpa_backends=["cudnn", "math"], **base)
    with pytest.raises(ValueError, match="width 30 is not a multiple of patch_size 4"):
        model({"sentinel2_l2a": tf.zeros([1, 1, 32, 30, 12])})
    with pytest.raises(ValueError, match="has 10 channels, expected 12"):
        model({"sentinel2_l2a": tf.zeros([1, 1, 32, 32, 10])})
    with pytest.raises(ValueError, match="no modality in the inputs"):
        model({"image": tf.zeros([1, 1, 32, 32, 12])})
    with pytest.raises(ValueError, match="at most 12 timesteps"):
        model({"sentinel2_l2a": tf.zeros([1, 13, 8, 8, 12])})
    merged = OlmoEarth(use_legacy_timestamps=False, **base)
    with pytest.raises(ValueError, match="set load_timestamps: true"):
        merged({"sentinel2_l2a": tf.zeros([1, 1, 8, 8, 12])})
    stamps = tf.constant(np.full((1, 1, 2), np.nan))
    with pytest.raises(tf.errors.InvalidArgumentError, match="without a timestamp"):
        merged({"sentinel2_l2a": tf.zeros([1, 1, 8, 8, 12]), "sentinel2_l2a_timestamps": stamps})


def test_decode_only_modalities_are_ignored():
    model = OlmoEarth(patch_size=8, model_id="OLMOEARTH_V1_2_NANO", random_initialization=True, autocast_dtype=None)
    x = tf.random.normal([1, 1, 8, 8, 12], seed=1)
    (a,) = model({"sentinel2_l2a": x})
    (b,) = model({"sentinel2_l2a": x, "worldcover": tf.ones([1, 1, 8, 8, 1])})
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---- timeline -----------------------------------------------------------------------------


def reference_timeline(example: dict[str, list[float]], tolerance: float):
    """rslearn's greedy merge (``_prepare_modality_inputs``) in plain Python."""
    timeline: list[float] = []
    assigned: dict[str, list[float]] = {}
    for m in modalities.WRAPPER_MODALITIES:
        if m not in example:
            continue
        mine: list[float] = []
        for center in example[m]:
            best, best_diff = None, tolerance
            for existing in timeline:
                if existing in mine:
                    continue
                diff = abs(center - existing)
                if diff >= tolerance or diff >= best_diff:
                    continue
                best, best_diff = existing, diff
            if best is not None:
                mine.append(best)
                continue
            timeline.append(center)
            mine.append(center)
        assigned[m] = mine
    timeline.sort()
    return timeline, {m: [timeline.index(t) for t in ts] for m, ts in assigned.items()}


def test_merged_timeline_matches_rslearns_greedy_algorithm():
    rng = random.Random(0)
    day = 86400.0
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    names = ["sentinel2_l2a", "sentinel1", "landsat"]
    for trial in range(12):
        b = 4
        examples = []
        for _ in range(b):
            ex = {}
            for m in names:
                n = rng.randint(0, 3)
                if n:
                    days = sorted(rng.sample(range(0, 120, 3), n))
                    ex[m] = [base + d * day + 0.5 * day for d in days]
            if not ex:
                ex["sentinel1"] = [base]
            examples.append(ex)
        tolerance = rng.choice([5, 10, 15]) * day
        images, masks, centers = {}, {}, {}
        for m in names:
            t = max(len(ex.get(m, [])) for ex in examples)
            if t == 0:
                continue
            mask = np.zeros((b, t), bool)
            c = np.full((b, t), np.nan)
            x = np.zeros((b, t, 1, 1, 1), np.float32)
            for i, ex in enumerate(examples):
                for j, v in enumerate(ex.get(m, [])):
                    mask[i, j], c[i, j], x[i, j] = True, v, 100 * i + j + 1
            images[m], masks[m], centers[m] = tf.constant(x), tf.constant(mask), tf.constant(c)
        data, valid, stamps = prepare_merged(images, masks, centers, tolerance)
        refs = [reference_timeline(ex, tolerance) for ex in examples]
        t_max = max(len(r[0]) for r in refs)
        assert stamps.shape[1] == t_max, trial
        for i, (timeline, slots) in enumerate(refs):
            for j, t in enumerate(timeline):
                d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
                assert stamps[i, j].numpy().tolist() == [d.day, d.month - 1, d.year]
            assert (stamps[i, len(timeline) :].numpy() == 0).all()
            for m in data:
                got = {int(s): int(data[m][i, s, 0, 0, 0]) for s in np.flatnonzero(valid[m][i].numpy())}
                want = {s: 100 * i + j + 1 for j, s in enumerate(slots.get(m, []))}
                assert got == want, (trial, i, m)


def test_civil_dates_and_durations():
    rng = np.random.default_rng(0)
    seconds = np.concatenate([rng.uniform(-3e9, 5e9, 500), [0.0, 951782400.0, 951868799.9, -86400.0]])
    got = civil_from_posix(tf.constant(seconds)).numpy()
    for s, (d, m, y) in zip(seconds, got):
        ref = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=float(s))
        assert (d, m + 1, y) == (ref.day, ref.month, ref.year), s
    assert parse_timedelta("15 days, 0:00:00") == datetime.timedelta(days=15)
    assert parse_timedelta("1 day, 12:00:00") == datetime.timedelta(days=1, hours=12)
    assert parse_timedelta("P15D") == parse_timedelta({"days": 15}) == datetime.timedelta(days=15)
    assert parse_timedelta("PT36H") == datetime.timedelta(hours=36)
    with pytest.raises(ValueError, match="expected a duration"):
        parse_timedelta("fortnight")


def test_batch_without_a_modality_and_unpooled_shapes():
    """A modality absent from the whole batch has T = 0 (design.md); it adds no tokens
    and does not count in the modality mean."""
    model = OlmoEarth(patch_size=4, model_id="OLMOEARTH_V1_2_NANO", random_initialization=True, autocast_dtype=None, token_pooling=False)
    s2 = tf.random.normal([2, 2, 8, 8, 12], seed=2)
    base = {"sentinel2_l2a": s2, "sentinel2_l2a_timestep_mask": tf.constant([[True, True], [True, False]])}
    out = model(base)
    with_empty = model({**base, "sentinel1": tf.zeros([2, 0, 8, 8, 2]), "sentinel1_timestep_mask": tf.zeros([2, 0], tf.bool)})
    assert out["feature_maps"][0].shape == (2, 2, 2, 2, 128) and out["masks"][0].shape == (2, 2, 2, 2)
    np.testing.assert_allclose(with_empty["feature_maps"][0].numpy(), out["feature_maps"][0].numpy(), atol=1e-6)
    model.token_pooling = True
    (a,) = model(base)
    (b,) = model({**base, "sentinel1": tf.zeros([2, 0, 8, 8, 2]), "sentinel1_timestep_mask": tf.zeros([2, 0], tf.bool)})
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


# ---- normalization, precision, XLA -------------------------------------------------------


def test_olmoearth_normalize():
    stats = load_computed_config()
    bands = modalities.get("sentinel2_l2a").band_order
    norm = OlmoEarthNormalize({"sentinel2_l2a": bands}, std_multiplier=2)
    x = tf.constant(np.random.default_rng(0).uniform(0, 5000, (2, 4, 4, 12)).astype(np.float32))
    out, _ = norm({"sentinel2_l2a": x, "other": x}, {})
    for c, band in enumerate(bands):
        lo = stats["sentinel2_l2a"][band]["mean"] - 2 * stats["sentinel2_l2a"][band]["std"]
        hi = stats["sentinel2_l2a"][band]["mean"] + 2 * stats["sentinel2_l2a"][band]["std"]
        np.testing.assert_allclose(out["sentinel2_l2a"][..., c].numpy(), (x[..., c].numpy() - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["other"].numpy(), x.numpy())
    with pytest.raises(ValueError, match=r"missing \['B09'\]"):
        OlmoEarthNormalize({"sentinel2_l2a": bands[:-1]})
    with pytest.raises(ValueError, match="no normalization statistics"):
        OlmoEarthNormalize({"openstreetmap_raster": ["building"]})
    with pytest.raises(KeyError, match="sentinel1"):
        OlmoEarthNormalize({"sentinel1": ["vv", "vh"]})({"sentinel2_l2a": x}, {})
    skipped, _ = OlmoEarthNormalize({"sentinel1": ["vh", "vv"]}, skip_missing=True)({"sentinel2_l2a": x}, {})
    assert set(skipped) == {"sentinel2_l2a"}


def test_bfloat16_autocast_and_xla(small, tmp_path):
    z, config, inputs = small
    ref = z["out/pooled/features"]
    bf16 = model_for(z, config, tmp_path / "a", autocast_dtype="bfloat16")
    assert bf16.encoder.blocks[0].fc1.compute_dtype == "bfloat16" and bf16.encoder.blocks[0].fc1.kernel.dtype == "float32"
    (features,) = bf16(inputs)
    assert features.dtype == tf.float32
    got = np.asarray(features).transpose(0, 3, 1, 2)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    xla = model_for(z, config, tmp_path / "b", compile_model=True)
    (features,) = xla(inputs)
    np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2), ref, atol=1e-4, rtol=0)


def test_padded_batch_examples_equal_single_examples_in_training(small, tmp_path):
    """With the time-series contract, a padded batch is the examples it holds: in training
    (padding tokens masked, drop_path 0 in this bundle) each example's output equals its
    output alone; in eval the zero padding tokens of shorter examples change it (the
    olmoearth_pretrain quirk)."""
    z, config, _ = small
    model = model_for(z, config, tmp_path, use_legacy_timestamps=True)
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1, 2, 16, 16, 12)).astype(np.float32)
    b = rng.normal(size=(1, 1, 16, 16, 12)).astype(np.float32)
    s1 = rng.normal(size=(1, 2, 16, 16, 2)).astype(np.float32)
    batch = {
        "sentinel2_l2a": tf.constant(np.concatenate([a, np.pad(b, [(0, 0), (0, 1), (0, 0), (0, 0), (0, 0)])])),
        "sentinel2_l2a_timestep_mask": tf.constant([[True, True], [True, False]]),
        "sentinel1": tf.constant(np.concatenate([np.zeros_like(s1), s1])),
        "sentinel1_timestep_mask": tf.constant([[False, False], [True, True]]),
    }
    (both,) = model(batch, training=True)
    (alone_a,) = model({"sentinel2_l2a": tf.constant(a)}, training=True)
    (alone_b,) = model({"sentinel2_l2a": tf.constant(b), "sentinel1": tf.constant(s1)}, training=True)
    # Example a lacks Sentinel-1, present in the batch: rslearn averages its 0 in.
    np.testing.assert_allclose(both[0].numpy(), alone_a[0].numpy() / 2, atol=1e-5)
    np.testing.assert_allclose(both[1].numpy(), alone_b[0].numpy(), atol=1e-5)
    # Eval: example a (32 valid tokens) attends to 16 zero padding tokens (b has 48).
    (eval_both,) = model(batch, training=False)
    (eval_a,) = model({"sentinel2_l2a": tf.constant(a)}, training=False)
    (eval_b,) = model({"sentinel2_l2a": tf.constant(b), "sentinel1": tf.constant(s1)}, training=False)
    np.testing.assert_allclose(eval_both[1].numpy(), eval_b[0].numpy(), atol=1e-5)
    assert np.abs(2 * eval_both[0].numpy() - eval_a[0].numpy()).max() > 1e-3


# ---- optimizer ----------------------------------------------------------------------------


def _lightning_module():
    from rskeras.models.singletask import SingleTaskModel
    from rskeras.models.unet import UNetDecoder
    from rskeras.train.lightning_module import RslearnLightningModule
    from rskeras.train.tasks.segmentation import SegmentationHead, SegmentationTask

    encoder = OlmoEarth(patch_size=8, model_id="OLMOEARTH_V1_2_NANO", random_initialization=True, autocast_dtype=None)
    model = SingleTaskModel([encoder], [UNetDecoder(in_channels=[[8, 128]], out_channels=3), SegmentationHead()])
    lm = RslearnLightningModule(model, SegmentationTask(num_classes=3))
    inputs = {"sentinel2_l2a": tf.random.normal([2, 1, 16, 16, 12], seed=4)}
    lm.build_from_batch(inputs)
    return lm, inputs


def test_layer_decay_adamw_groups_and_update():
    from rskeras.train.callbacks.freeze_unfreeze import SimpleFreeze, named_trainable_variables
    from rskeras.train.layer_decay import LayerDecayAdamW, get_layer_id

    assert get_layer_id("model.encoder.0.model.blocks.3.attn.q.weight", 4) == 3
    assert get_layer_id("model.encoder.0.model.patch_embeddings.x", 4) == 0
    assert get_layer_id("model.encoder.0.model.norm.weight", 4) == 4
    assert get_layer_id("model.decoder.0.layers.0.0.weight", 4) == 4
    lm, inputs = _lightning_module()
    with pytest.raises(ValueError, match=r"missing layers: \[4, 5, 6, 7, 8, 9, 10, 11\]"):
        LayerDecayAdamW(lr=0.01).build(lm)
    freeze = SimpleFreeze(["model", "encoder", 0], unfreeze_at_epoch=1)
    freeze.setup(None, lm)  # frozen modules still join their groups
    lm.compile(optimizer=LayerDecayAdamW(lr=0.01, num_layers=4, layer_decay_rate=0.5).build(lm))
    lm.build_optimizer()
    opt = lm.optimizer
    np.testing.assert_allclose(opt.param_group_lrs(), [0.01 * 0.5**4, 0.01 * 0.5**3, 0.01 * 0.5**2, 0.01 * 0.5, 0.01], rtol=1e-6)
    names = dict(named_trainable_variables(lm))
    assert opt.group_of(names["model.encoder.0.model.blocks.2.attn.q.weight"]) == 2
    assert opt.group_of(names["model.encoder.0.model.patch_embeddings.per_modality_embeddings.sentinel2_l2a.sentinel2_l2a__0.proj.weight"]) == 0
    assert opt.group_of(names["model.encoder.0.model.norm.weight"]) == 4
    assert opt.group_of(names["model.decoder.0.layers.0.0.weight"]) == 4
    assert not names["model.encoder.0.model.blocks.0.attn.q.weight"].trainable
    freeze.set_model(lm)
    freeze.on_epoch_begin(1)
    assert names["model.encoder.0.model.blocks.0.attn.q.weight"].trainable
    # One step: block 0 moves at lr * 0.5^4 (Adam's first step moves each weight by ~lr).
    block0 = names["model.encoder.0.model.blocks.0.mlp.fc2.bias"]
    head = names["model.decoder.0.layers.0.0.bias"]
    before = block0.numpy().copy(), head.numpy().copy()
    targets = {"classes": tf.zeros([2, 1, 16, 16, 1], tf.int32), "valid": tf.ones([2, 1, 16, 16, 1])}
    lm.train_step((inputs, targets))
    step0 = np.abs(block0.numpy() - before[0]).max()
    step_head = np.abs(head.numpy() - before[1]).max()
    assert step0 == pytest.approx(0.01 * 0.5**4, rel=0.05) and step_head == pytest.approx(0.01, rel=0.05)


def test_rslearn_class_paths_resolve():
    """rslearn's quickstart / example configs name these paths."""
    from rskeras.config.class_paths import import_class, map_class_path

    for path in (
        "rslearn.models.olmoearth_pretrain.model.OlmoEarth",
        "rslearn.models.olmoearth_pretrain.norm.OlmoEarthNormalize",
        "rslearn.models.olmoearth_pretrain.optimizer.LayerDecayAdamW",
        "rslearn.models.olmoearth_pretrain.optimizer.SimpleFreeze",
    ):
        cls = import_class(map_class_path(path))
        assert cls.__name__ == path.rsplit(".", 1)[1]
