"""The Galileo encoder (Tseng et al. 2025, "Galileo: Learning Global & Local Features of
Many Remote Sensing Modalities"), as packaged in rslearn's ``single_file_galileo.py``.

Galileo tokenizes four kinds of inputs, each split into channel groups:

* space-time (``s_t``, ``[B, T, H, W, C]``): S1 (VV, VH), the Sentinel-2 groups RGB (B2, B3,
  B4), Red_Edge (B5, B6, B7), NIR_10m (B8), NIR_20m (B8A), SWIR (B11, B12), and NDVI;
  one token per (patch, timestep, group) from a FlexiPatchEmbed (Conv k = s = patch);
* space (``sp``, ``[B, H, W, C]``): SRTM (elevation, slope), DW (9 Dynamic World
  probabilities), WC (5 WorldCereal layers); one token per (patch, group);
* time (``t``, ``[B, T, C]``): ERA5 (2), TC (TerraClimate, 3), VIIRS (1); Linear, one token per
  (timestep, group);
* static (``st``, ``[B, C]``): LS (LandScan), location (x, y, z on the unit sphere),
  DW_static, WC_static; Linear, one token per group.

Every token gets a D-wide encoding made of four D/4 quarters: the group's learned channel
embedding, the sinusoidal timestep-index embedding (``pos_embed``), the month embedding, and
a 2-D sinusoidal patch-position embedding scaled by the patch's ground size (patch_size ×
10 m / 10 m); quarters that do not apply to a kind are zeros (space: time and month;
time: position; static: all but the channel). Tokens of masked groups are removed before
the transformer; since attention, LayerNorm and the MLP treat tokens as a set, rskeras
simply never builds tokens for groups that have no input (identical numbers, no masks).

The patch embedding weights are stored for ``max_patch_size`` (8); a smaller patch size
resizes each kernel with the pseudo-inverse of the antialiased bicubic resize matrix
(FlexiViT), computed here in numpy and applied as a matmul.

Torch keys (``Encoder`` state dict): ``pos_embed``, ``month_embed.weight``,
``{s_t,sp,t,st}_channel_embed``, ``space_time_embed.<group>.proj.{weight,bias}``,
``space_embed.<group>.proj.*``, ``time_embed.<group>.*``, ``static_embed.<group>.*``,
``blocks.<i>.*`` (split q/k/v), ``norm.*``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from rskeras.weights.torch_params import TorchParam, dense_params, join, layer_norm_params
from rskeras.models.transformer import Block, layer_norm, xavier_dense

CONFIG_FILENAME = "config.json"
ENCODER_FILENAME = "encoder.pt"
BASE_GSD = 10
DEFAULT_MONTH = 5

# ---- bands, groups and normalisation constants (Galileo's data config) ------------------

S1_BANDS = ["VV", "VH"]
S1_SHIFT_VALUES = [25.0, 25.0]
S1_DIV_VALUES = [25.0, 25.0]
S2_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
S2_SHIFT_VALUES = [0.0] * len(S2_BANDS)
S2_DIV_VALUES = [1e4] * len(S2_BANDS)
ERA5_BANDS = ["temperature_2m", "total_precipitation_sum"]
ERA5_SHIFT_VALUES = [-272.15, 0.0]
ERA5_DIV_VALUES = [35.0, 0.03]
TC_BANDS = ["def", "soil", "aet"]
TC_SHIFT_VALUES = [0.0, 0.0, 0.0]
TC_DIV_VALUES = [4548, 8882, 2000]
VIIRS_BANDS = ["avg_rad"]
VIIRS_SHIFT_VALUES = [0.0]
VIIRS_DIV_VALUES = [100]
SRTM_BANDS = ["elevation", "slope"]
SRTM_SHIFT_VALUES = [0.0, 0.0]
SRTM_DIV_VALUES = [2000.0, 50.0]
DW_BANDS = [
    "DW_water", "DW_trees", "DW_grass", "DW_flooded_vegetation", "DW_crops",
    "DW_shrub_and_scrub", "DW_built", "DW_bare", "DW_snow_and_ice",
]
DW_SHIFT_VALUES = [0] * len(DW_BANDS)
DW_DIV_VALUES = [1] * len(DW_BANDS)
WC_BANDS = ["WC_temporarycrops", "WC_maize", "WC_wintercereals", "WC_springcereals", "WC_irrigation"]
WC_SHIFT_VALUES = [0] * len(WC_BANDS)
WC_DIV_VALUES = [100] * len(WC_BANDS)
STATIC_DW_BANDS = [f"{x}_static" for x in DW_BANDS]
STATIC_WC_BANDS = [f"{x}_static" for x in WC_BANDS]
LANDSCAN_BANDS = ["b1"]
LANDSCAN_SHIFT_VALUES = [92500]
LANDSCAN_DIV_VALUES = [92500]
LOCATION_BANDS = ["x", "y", "z"]

SPACE_TIME_BANDS = S1_BANDS + S2_BANDS + ["NDVI"]
TIME_BANDS = ERA5_BANDS + TC_BANDS + VIIRS_BANDS
SPACE_BANDS = SRTM_BANDS + DW_BANDS + WC_BANDS
STATIC_BANDS = LANDSCAN_BANDS + LOCATION_BANDS + STATIC_DW_BANDS + STATIC_WC_BANDS

SPACE_TIME_BANDS_GROUPS_IDX: OrderedDict[str, list[int]] = OrderedDict(
    [
        ("S1", [SPACE_TIME_BANDS.index(b) for b in S1_BANDS]),
        ("S2_RGB", [SPACE_TIME_BANDS.index(b) for b in ["B2", "B3", "B4"]]),
        ("S2_Red_Edge", [SPACE_TIME_BANDS.index(b) for b in ["B5", "B6", "B7"]]),
        ("S2_NIR_10m", [SPACE_TIME_BANDS.index("B8")]),
        ("S2_NIR_20m", [SPACE_TIME_BANDS.index("B8A")]),
        ("S2_SWIR", [SPACE_TIME_BANDS.index(b) for b in ["B11", "B12"]]),
        ("NDVI", [SPACE_TIME_BANDS.index("NDVI")]),
    ]
)
TIME_BAND_GROUPS_IDX: OrderedDict[str, list[int]] = OrderedDict(
    [("ERA5", [TIME_BANDS.index(b) for b in ERA5_BANDS]), ("TC", [TIME_BANDS.index(b) for b in TC_BANDS]),
     ("VIIRS", [TIME_BANDS.index(b) for b in VIIRS_BANDS])]
)
SPACE_BAND_GROUPS_IDX: OrderedDict[str, list[int]] = OrderedDict(
    [("SRTM", [SPACE_BANDS.index(b) for b in SRTM_BANDS]), ("DW", [SPACE_BANDS.index(b) for b in DW_BANDS]),
     ("WC", [SPACE_BANDS.index(b) for b in WC_BANDS])]
)
STATIC_BAND_GROUPS_IDX: OrderedDict[str, list[int]] = OrderedDict(
    [("LS", [STATIC_BANDS.index(b) for b in LANDSCAN_BANDS]), ("location", [STATIC_BANDS.index(b) for b in LOCATION_BANDS]),
     ("DW_static", [STATIC_BANDS.index(b) for b in STATIC_DW_BANDS]),
     ("WC_static", [STATIC_BANDS.index(b) for b in STATIC_WC_BANDS])]
)

# Per-band statistics of Galileo's pretraining data (config/normalization.json of
# nasaharvest/galileo), keyed by the width of the tensor they apply to.
NORMALIZING_DICT: dict[str, dict[str, list[float]]] = {
    "13": {
        "mean": [-11.728724389184965, -18.85558188024017, 1395.3408730676722, 1338.4026921784578, 1343.09883810357,
                 1543.8607982512297, 2186.2022069512263, 2525.0932853316694, 2410.3377187373408, 2750.2854646886753,
                 2234.911100061487, 1474.5311266077113, 0.2892116502999044],
        "std": [4.887145774840316, 5.730270320384293, 917.7041440370853, 913.2988423581528, 1092.678723527555,
                1047.2206083460424, 1048.0101611156767, 1143.6903026819996, 1098.979177731649, 1204.472755085893,
                1145.9774063078878, 980.2429840007796, 0.2720939024500081],
    },
    "16": {
        "mean": [673.0152819503361, 5.930092668915115, 0.10470439140978786, 0.23965913270066183, 0.08158044385860364,
                 0.04246976254259546, 0.11304392863520317, 0.17329647890362473, 0.0698981691616277, 0.12130267132802142,
                 0.04671318615236216, 10.973119802517362, 1.0927069179958768, 1.6991394232855903, 0.03720594618055555,
                 1.3671352688259548],
        "std": [983.0697298296237, 8.167406789813247, 0.18771647977504985, 0.2368313455675914, 0.08024268534756586,
                0.04045374496146404, 0.11350342472061795, 0.1279898111718168, 0.12042341550438586, 0.13602408145504347,
                0.043971116096060345, 31.255340146970997, 10.395974878206689, 12.92380617159917, 1.9285254295940466,
                11.612179775408928],
    },
    "6": {
        "mean": [271.5674963541667, 0.08554303677156568, 657.3181260091111, 692.1291795806885, 562.781331880633,
                 1.5647115934036673],
        "std": [79.80828940314429, 0.11669547098151486, 704.0008695557707, 925.0116126406431, 453.2434022278578,
                7.513020170832818],
    },
    "18": {
        "mean": [188.20315880851746, 0.2804946561574936, 0.11371652073860168, 0.058778801321983334, 0.10474256777763366,
                 0.2396918488264084, 0.08152248692512512, 0.04248040814399719, 0.11303179881572724, 0.17326324067115784,
                 0.06998309404850006, 0.12122812910079957, 0.04671641788482666, 10.98456594619751, 1.0968475807189941,
                 1.6947754135131836, 0.03320046615600586, 1.3602827312469483],
        "std": [1154.5919128300602, 0.5276998078079327, 0.7021637331734328, 0.36528892213195063, 0.17470213191865785,
                0.20411195416718833, 0.0660782470089761, 0.03380702424871257, 0.09809195568521663, 0.11292471052124119,
                0.09720748930233268, 0.12912217763726777, 0.0399973913151906, 23.725471823867462, 5.715238079725388,
                9.030481416228302, 0.9950220242487364, 7.754429123862099],
    },
}

# Bands whose shift/div are replaced by the statistics (mean ± std_multiplier · std).
_STD_BANDS = {
    len(SPACE_TIME_BANDS): [b for b in SPACE_TIME_BANDS if b != "NDVI"],
    len(SPACE_BANDS): SRTM_BANDS,
    len(TIME_BANDS): TIME_BANDS,
    len(STATIC_BANDS): LANDSCAN_BANDS,
}
_KIND_BANDS = {"space_time": SPACE_TIME_BANDS, "space": SPACE_BANDS, "time": TIME_BANDS, "static": STATIC_BANDS}


def normalization_constants(std_multiplier: float = 2.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (shift, div) per band: ``x_normalised = (x - shift) / div``.

    Galileo's ``Normalizer`` starts from the fixed shift/div tables and, for the bands with
    statistics (all S1/S2 bands, SRTM, all time bands, LandScan), replaces them with
    ``shift = mean - m·std`` and ``div = 2·m·std``. The replacement is written into numpy
    arrays built from the tables; the static tables are integer arrays, so the LandScan
    values are truncated to integers (shift -2120, div 4618), as in the original.
    """
    tables = {
        "space_time": (S1_SHIFT_VALUES + S2_SHIFT_VALUES + [0], S1_DIV_VALUES + S2_DIV_VALUES + [1]),
        "space": (SRTM_SHIFT_VALUES + DW_SHIFT_VALUES + WC_SHIFT_VALUES, SRTM_DIV_VALUES + DW_DIV_VALUES + WC_DIV_VALUES),
        "time": (ERA5_SHIFT_VALUES + TC_SHIFT_VALUES + VIIRS_SHIFT_VALUES, ERA5_DIV_VALUES + TC_DIV_VALUES + VIIRS_DIV_VALUES),
        "static": (LANDSCAN_SHIFT_VALUES + [0, 0, 0] + DW_SHIFT_VALUES + WC_SHIFT_VALUES,
                   LANDSCAN_DIV_VALUES + [1, 1, 1] + DW_DIV_VALUES + WC_DIV_VALUES),
    }
    out = {}
    for kind, (shift_list, div_list) in tables.items():
        bands = _KIND_BANDS[kind]
        shift, div = np.array(shift_list), np.array(div_list)  # dtype from the lists, as upstream
        stats = NORMALIZING_DICT[str(len(bands))]
        for band in _STD_BANDS[len(bands)]:
            i = bands.index(band)
            lo = stats["mean"][i] - std_multiplier * stats["std"][i]
            hi = stats["mean"][i] + std_multiplier * stats["std"][i]
            shift[i], div[i] = lo, hi - lo
        out[kind] = (shift.astype(np.float64), div.astype(np.float64))
    return out


# ---- sinusoidal tables ------------------------------------------------------------------


def sincos_1d(embed_dim: int, pos: tf.Tensor) -> tf.Tensor:
    """``[M]`` positions -> ``[M, embed_dim]`` = [sin(pos·ω), cos(pos·ω)] with
    ``ω_k = 10000^(-k / (2·embed_dim))`` (Galileo's exponent, half MAE's)."""
    k = np.arange(embed_dim // 2, dtype=np.float64) / embed_dim / 2.0
    omega = tf.constant((1.0 / 10000**k).astype(np.float32))
    out = tf.cast(pos, tf.float32)[:, None] * omega[None, :]
    return tf.concat([tf.sin(out), tf.cos(out)], axis=-1)


def spatial_embedding(embed_dim: int, h: Any, w: Any, resolution: float) -> tf.Tensor:
    """``[h, w, embed_dim]`` 2-D sin-cos patch-position embedding: the first half encodes the
    column (x) and the second the row (y), both as index × ``resolution``."""
    half = embed_dim // 2
    cols = sincos_1d(half, tf.range(w, dtype=tf.float32) * resolution)  # [w, half]
    rows = sincos_1d(half, tf.range(h, dtype=tf.float32) * resolution)  # [h, half]
    cols = tf.broadcast_to(cols[None, :, :], tf.stack([h, w, half]))
    rows = tf.broadcast_to(rows[:, None, :], tf.stack([h, w, half]))
    return tf.concat([cols, rows], axis=-1)


def month_table(embed_dim: int) -> np.ndarray:
    """``[12, embed_dim]``: sin of the month angle in the first half, cos in the second."""
    angles = np.arange(0, 13) / (12 / (2 * np.pi))
    sin = np.sin(np.stack([angles] * (embed_dim // 2), axis=-1))
    cos = np.cos(np.stack([angles] * (embed_dim // 2), axis=-1))
    return np.concatenate([sin[:-1], cos[:-1]], axis=-1).astype(np.float32)


def time_position_table(embed_dim: int, length: int) -> np.ndarray:
    """``[length, embed_dim]`` sin-cos table of timestep indexes (Galileo's ``pos_embed``)."""
    k = np.arange(embed_dim // 2, dtype=np.float32) / embed_dim / 2.0
    omega = 1.0 / 10000**k
    out = np.arange(length, dtype=np.float32)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1).astype(np.float32)


# ---- FlexiPatchEmbed ----------------------------------------------------------------------


def _cubic_aa(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def antialias_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` 1-D weights of ``F.interpolate(mode="bicubic", antialias=True)``
    (PIL's separable filter: cubic a = -0.5 widened by the scale when downsampling)."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = np.array([_cubic_aa((j - centre + 0.5) * inv) for j in range(lo, hi)])
        weights[i, lo:hi] = w / w.sum()
    return weights


def patch_resize_pinv(base: int, new: int) -> np.ndarray:
    """``[new², base²]``: the FlexiViT pseudo-inverse that maps a ``base×base`` kernel
    (row-major, flattened) to a ``new×new`` one."""
    w = antialias_bicubic_weights(base, new)
    resize = np.kron(w, w).T  # [base², new²]: row i = resize of basis image i
    return np.linalg.pinv(resize).astype(np.float32)


@keras.saving.register_keras_serializable(package="rskeras")
class FlexiPatchEmbed(keras.layers.Layer):
    """Patch embedding Conv2d(in_chans, D, k = s = patch) whose kernel, stored for
    ``base_patch_size``, is resized with :func:`patch_resize_pinv` for another patch size.

    Args:
        in_chans: int, input channels.
        embed_dim: int, output width D.
        base_patch_size: int, kernel size of the stored weights.

    Call: ``x [N, H, W, in_chans]``, ``patch_size`` int -> ``[N, H // p, W // p, D]``
    (trailing rows/columns that do not fill a patch are dropped, as torch's conv does).
    """

    def __init__(self, in_chans: int, embed_dim: int, base_patch_size: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.base_patch_size = int(base_patch_size)
        p = self.base_patch_size
        fan_in = self.in_chans * p * p
        bound = 1.0 / math.sqrt(fan_in)
        self.kernel = self.add_weight(
            name="kernel", shape=(p, p, self.in_chans, self.embed_dim),
            initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        )
        self.bias = self.add_weight(name="bias", shape=(self.embed_dim,), initializer=keras.initializers.RandomUniform(-bound, bound))
        self._pinvs: dict[int, np.ndarray] = {}
        self.built = True

    def resized_kernel(self, patch_size: int) -> tf.Tensor:
        if patch_size == self.base_patch_size:
            return self.kernel
        if patch_size not in self._pinvs:
            self._pinvs[patch_size] = patch_resize_pinv(self.base_patch_size, patch_size)
        pinv = tf.constant(self._pinvs[patch_size], dtype=self.kernel.dtype)
        p0 = self.base_patch_size
        flat = tf.reshape(self.kernel, [p0 * p0, self.in_chans * self.embed_dim])
        return tf.reshape(tf.matmul(pinv, flat), [patch_size, patch_size, self.in_chans, self.embed_dim])

    def call(self, x, patch_size: int):
        kernel = tf.cast(self.resized_kernel(int(patch_size)), self.compute_dtype)
        x = tf.cast(x, self.compute_dtype)
        y = tf.nn.conv2d(x, kernel, strides=int(patch_size), padding="VALID")
        return y + tf.cast(self.bias, self.compute_dtype)

    def torch_params(self, prefix: str) -> list[TorchParam]:
        return [TorchParam(join(prefix, "proj.weight"), self.kernel, "conv2d"), TorchParam(join(prefix, "proj.bias"), self.bias)]

    def get_config(self):
        return {**super().get_config(), "in_chans": self.in_chans, "embed_dim": self.embed_dim, "base_patch_size": self.base_patch_size}


# ---- the encoder --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="rskeras")
class GalileoEncoder(keras.layers.Layer):
    """Galileo's ``Encoder`` (the arguments of its ``config.json``).

    Args:
        max_patch_size: int, kernel size of the stored patch embeddings, default 8.
        embedding_size: int, token width D (divisible by 8: each quarter is split in two
            for the 2-D position), default 128.
        depth: int, transformer blocks, default 2.
        mlp_ratio: float, default 2.
        num_heads: int, default 8.
        max_sequence_length: int, longest time series (rows of ``pos_embed``), default 24.
        freeze_projections: bool, make the patch/linear embeddings non-trainable.
        drop_path: float, stochastic depth of every block in training, default 0.

    Call: see :meth:`encode`.
    """

    def __init__(
        self,
        max_patch_size: int = 8,
        embedding_size: int = 128,
        depth: int = 2,
        mlp_ratio: float = 2,
        num_heads: int = 8,
        max_sequence_length: int = 24,
        freeze_projections: bool = False,
        drop_path: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if embedding_size % 8 != 0:
            raise ValueError(f"GalileoEncoder: embedding_size must be a multiple of 8, got {embedding_size}")
        self.max_patch_size = int(max_patch_size)
        self.embedding_size = int(embedding_size)
        self.depth = int(depth)
        self.mlp_ratio = float(mlp_ratio)
        self.num_heads = int(num_heads)
        self.max_sequence_length = int(max_sequence_length)
        self.freeze_projections = bool(freeze_projections)
        self.drop_path = float(drop_path)
        d, q = self.embedding_size, self.embedding_size // 4
        policy = self.dtype_policy
        self.blocks = [
            Block(d, self.num_heads, self.mlp_ratio, drop_path=self.drop_path, qkv_layout="split", name=f"blocks_{i}", dtype=policy)
            for i in range(self.depth)
        ]
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(self.max_sequence_length, q), trainable=False,
            initializer=keras.initializers.Constant(time_position_table(q, self.max_sequence_length)),
        )
        self.month_embed = self.add_weight(name="month_embed", shape=(12, q), trainable=False, initializer=keras.initializers.Constant(month_table(q)))
        self.s_t_channel_embed = self.add_weight(name="s_t_channel_embed", shape=(len(SPACE_TIME_BANDS_GROUPS_IDX), q), initializer="zeros")
        self.sp_channel_embed = self.add_weight(name="sp_channel_embed", shape=(len(SPACE_BAND_GROUPS_IDX), q), initializer="zeros")
        self.t_channel_embed = self.add_weight(name="t_channel_embed", shape=(len(TIME_BAND_GROUPS_IDX), q), initializer="zeros")
        self.st_channel_embed = self.add_weight(name="st_channel_embed", shape=(len(STATIC_BAND_GROUPS_IDX), q), initializer="zeros")
        self.space_time_embed = {
            g: FlexiPatchEmbed(len(idx), d, self.max_patch_size, name=f"space_time_embed_{g}", dtype=policy)
            for g, idx in SPACE_TIME_BANDS_GROUPS_IDX.items()
        }
        self.space_embed = {
            g: FlexiPatchEmbed(len(idx), d, self.max_patch_size, name=f"space_embed_{g}", dtype=policy)
            for g, idx in SPACE_BAND_GROUPS_IDX.items()
        }
        self.time_embed = {g: xavier_dense(d, f"time_embed_{g}", policy) for g in TIME_BAND_GROUPS_IDX}
        self.static_embed = {g: xavier_dense(d, f"static_embed_{g}", policy) for g in STATIC_BAND_GROUPS_IDX}
        for g, idx in TIME_BAND_GROUPS_IDX.items():
            self.time_embed[g].build((None, len(idx)))
        for g, idx in STATIC_BAND_GROUPS_IDX.items():
            self.static_embed[g].build((None, len(idx)))
        if self.freeze_projections:
            for layer in [*self.space_time_embed.values(), *self.space_embed.values(), *self.time_embed.values(), *self.static_embed.values()]:
                layer.trainable = False
        self.norm = layer_norm("norm", policy)
        self.norm.build((None, d))
        self.built = True

    # -- encodings --

    # Tokens and their encodings are float32 (torch autocast adds the float32 encodings to
    # the bf16 patch embeddings in float32); the projections compute in the layer's policy.

    @staticmethod
    def _quarter(table, shape):
        return tf.broadcast_to(tf.cast(table, tf.float32), shape)

    def _zeros(self, shape, quarters: int):
        return tf.zeros(tf.concat([shape[:-1], [quarters * (self.embedding_size // 4)]], axis=0), tf.float32)

    def encode(
        self,
        s_t: dict[str, tf.Tensor],
        sp: dict[str, tf.Tensor],
        t: dict[str, tf.Tensor],
        st: dict[str, tf.Tensor],
        months: tf.Tensor,
        patch_size: int,
        timestep_masks: dict[str, tf.Tensor] | None = None,
        training=None,
    ) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor | None]:
        """Encodes the present channel groups.

        Args:
            s_t: group -> normalised ``[B, T, H, W, C_g]`` (groups of SPACE_TIME_BANDS_GROUPS_IDX).
            sp: group -> normalised ``[B, H, W, C_g]``.
            t: group -> normalised ``[B, T, C_g]``.
            st: group -> normalised ``[B, C_g]``.
            months: int ``[B, T]`` months 0-11.
            patch_size: int, patch side in pixels.
            timestep_masks: optional group -> bool ``[B, T]`` (True = real timestep) for s_t
                and time groups: tokens of padded timesteps are left out of attention.

        Returns:
            (group -> ``[B, T, H/p, W/p, D]`` s_t tokens, all tokens ``[B, N, D]``, both after
            the final LayerNorm, and the bool ``[B, N]`` token mask or None when no
            ``timestep_masks`` are given).
        """
        masks = timestep_masks or {}
        q = self.embedding_size // 4
        month_emb = tf.gather(tf.cast(self.month_embed, tf.float32), tf.cast(months, tf.int32))  # [B, T, q]
        resolution = float(patch_size * BASE_GSD / BASE_GSD)
        groups_s_t = [g for g in SPACE_TIME_BANDS_GROUPS_IDX if g in s_t]
        tokens, valid, s_t_shapes = [], [], []
        for g in groups_s_t:
            x = s_t[g]
            b, tt, h, w = tf.shape(x)[0], x.shape[1] or tf.shape(x)[1], tf.shape(x)[2], tf.shape(x)[3]
            e = self.space_time_embed[g](tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0)), patch_size=patch_size)
            hp, wp = tf.shape(e)[1], tf.shape(e)[2]
            e = tf.reshape(tf.cast(e, tf.float32), tf.stack([b, tt, hp, wp, self.embedding_size]))
            shape = tf.stack([b, tt, hp, wp, q])
            idx = list(SPACE_TIME_BANDS_GROUPS_IDX).index(g)
            enc = tf.concat(
                [
                    self._quarter(self.s_t_channel_embed[idx], shape),
                    self._quarter(self.pos_embed[:tt][None, :, None, None, :], shape),
                    self._quarter(month_emb[:, :, None, None, :], shape),
                    self._quarter(spatial_embedding(q, hp, wp, resolution)[None, None], shape),
                ],
                axis=-1,
            )
            e = e + enc
            s_t_shapes.append(tf.shape(e))
            tokens.append(tf.reshape(e, tf.stack([b, -1, self.embedding_size])))
            m = masks[g][:, :, None, None] if g in masks else tf.ones([1, 1, 1, 1], tf.bool)
            valid.append(tf.reshape(tf.broadcast_to(m, tf.stack([b, tt, hp, wp])), tf.stack([b, -1])))
        for g in [g for g in SPACE_BAND_GROUPS_IDX if g in sp]:
            e = tf.cast(self.space_embed[g](sp[g], patch_size=patch_size), tf.float32)
            b, hp, wp = tf.shape(e)[0], tf.shape(e)[1], tf.shape(e)[2]
            shape = tf.stack([b, hp, wp, q])
            idx = list(SPACE_BAND_GROUPS_IDX).index(g)
            enc = tf.concat(
                [self._quarter(self.sp_channel_embed[idx], shape), self._zeros(shape, 2),
                 self._quarter(spatial_embedding(q, hp, wp, resolution)[None], shape)],
                axis=-1,
            )
            tokens.append(tf.reshape(e + enc, tf.stack([b, -1, self.embedding_size])))
            valid.append(tf.ones(tf.stack([b, hp * wp]), tf.bool))
        for g in [g for g in TIME_BAND_GROUPS_IDX if g in t]:
            x = t[g]
            e = tf.cast(self.time_embed[g](x), tf.float32)
            b, tt = tf.shape(e)[0], x.shape[1] or tf.shape(x)[1]
            shape = tf.stack([b, tt, q])
            idx = list(TIME_BAND_GROUPS_IDX).index(g)
            enc = tf.concat(
                [self._quarter(self.t_channel_embed[idx], shape), self._quarter(self.pos_embed[:tt][None], shape),
                 self._quarter(month_emb, shape), self._zeros(shape, 1)],
                axis=-1,
            )
            tokens.append(e + enc)
            valid.append(masks[g] if g in masks else tf.ones(tf.stack([b, tt]), tf.bool))
        for g in [g for g in STATIC_BAND_GROUPS_IDX if g in st]:
            e = tf.cast(self.static_embed[g](st[g]), tf.float32)
            shape = tf.shape(e[:, :q])
            idx = list(STATIC_BAND_GROUPS_IDX).index(g)
            enc = tf.concat([self._quarter(self.st_channel_embed[idx], shape), self._zeros(shape, 3)], axis=-1)
            tokens.append((e + enc)[:, None, :])
            valid.append(tf.ones(tf.stack([tf.shape(e)[0], 1]), tf.bool))
        if not tokens:
            raise ValueError("GalileoEncoder: at least one input must be given")
        x = tf.concat(tokens, axis=1) if len(tokens) > 1 else tokens[0]
        token_mask = tf.concat(valid, axis=1) if masks else None
        for block in self.blocks:
            x = block(x, key_mask=token_mask, training=training)
        x = tf.cast(self.norm(x), tf.float32)
        out_s_t, start = {}, 0
        for g, shape in zip(groups_s_t, s_t_shapes):
            n = tf.reduce_prod(shape[1:4])
            out_s_t[g] = tf.reshape(x[:, start : start + n], shape)
            start = start + n
        return out_s_t, x, token_mask

    def torch_params(self, prefix: str = "") -> list[TorchParam]:
        out = [
            TorchParam(join(prefix, "pos_embed"), self.pos_embed),
            TorchParam(join(prefix, "s_t_channel_embed"), self.s_t_channel_embed),
            TorchParam(join(prefix, "sp_channel_embed"), self.sp_channel_embed),
            TorchParam(join(prefix, "t_channel_embed"), self.t_channel_embed),
            TorchParam(join(prefix, "st_channel_embed"), self.st_channel_embed),
        ]
        for i, block in enumerate(self.blocks):
            out += block.torch_params(join(prefix, f"blocks.{i}"))
        out.append(TorchParam(join(prefix, "month_embed.weight"), self.month_embed))
        for g, layer in self.space_time_embed.items():
            out += layer.torch_params(join(prefix, f"space_time_embed.{g}"))
        for g, layer in self.space_embed.items():
            out += layer.torch_params(join(prefix, f"space_embed.{g}"))
        for g, layer in self.time_embed.items():
            out += dense_params(layer, join(prefix, f"time_embed.{g}"))
        for g, layer in self.static_embed.items():
            out += dense_params(layer, join(prefix, f"static_embed.{g}"))
        return out + layer_norm_params(self.norm, join(prefix, "norm"))

    def get_config(self):
        return {
            **super().get_config(),
            "max_patch_size": self.max_patch_size,
            "embedding_size": self.embedding_size,
            "depth": self.depth,
            "mlp_ratio": self.mlp_ratio,
            "num_heads": self.num_heads,
            "max_sequence_length": self.max_sequence_length,
            "freeze_projections": self.freeze_projections,
            "drop_path": self.drop_path,
        }
