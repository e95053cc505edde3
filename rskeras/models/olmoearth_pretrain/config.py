"""OlmoEarth encoder architectures: the per-ModelID table and the bundle ``config.json``.

A released OlmoEarth model is a *bundle*: ``config.json`` (the pretraining config; the
encoder is ``model.encoder_config``) and ``weights.pth`` (the state dict of the whole
pretraining model: ``encoder.*``, ``decoder.*``, ``target_encoder.*``). rslearn keeps the
encoder (``selector: [encoder]``).

The table below is derived from ``olmoearth_pretrain``'s own configuration
(``OlmoEarthPretrain_v1(model_size, model_version)`` of olmoearth_pretrain_minimal 0.1.5,
which states that it matches the official models): sizes, then what each version adds on
top of the previous one:

* v1: three Sentinel-2 band sets (and two Landsat ones), Conv2d patch embeddings, absolute
  sin-cos position / time / month encodings;
* v1.1: one band group for Sentinel-2 and one for Landsat, a per-pixel Linear+ReLU
  (``patch_embed_hidden_sizes``) before a Linear patch projection;
* v1.2: 3D RoPE with learnable mixed frequencies (``rope_3d_mixed``; time in days since
  2000 / 30) instead of the additive position and time encodings;
* v1.3 (base only): an AttentionPooler (location tokens) on top of v1.2 (not supported by
  rskeras, see :func:`EncoderConfig.validate`).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any

from rskeras.models.olmoearth_pretrain import modalities as mod

# Every ModelID of olmoearth_pretrain_minimal (the Hugging Face repo is allenai/<value>).
class ModelID(str, enum.Enum):
    """OlmoEarth pre-trained model IDs (configs may give the name or the value)."""

    OLMOEARTH_V1_NANO = "OlmoEarth-v1-Nano"
    OLMOEARTH_V1_TINY = "OlmoEarth-v1-Tiny"
    OLMOEARTH_V1_BASE = "OlmoEarth-v1-Base"
    OLMOEARTH_V1_LARGE = "OlmoEarth-v1-Large"
    OLMOEARTH_V1_1_NANO = "OlmoEarth-v1_1-Nano"
    OLMOEARTH_V1_1_TINY = "OlmoEarth-v1_1-Tiny"
    OLMOEARTH_V1_1_BASE = "OlmoEarth-v1_1-Base"
    OLMOEARTH_V1_2_NANO = "OlmoEarth-v1_2-Nano"
    OLMOEARTH_V1_2_TINY = "OlmoEarth-v1_2-Tiny"
    OLMOEARTH_V1_2_SMALL = "OlmoEarth-v1_2-Small"
    OLMOEARTH_V1_2_BASE = "OlmoEarth-v1_2-Base"
    OLMOEARTH_V1_3_BASE = "OlmoEarth-v1_3-Base"

    @classmethod
    def parse(cls, value: "ModelID | str") -> "ModelID":
        if isinstance(value, cls):
            return value
        for member in cls:
            if value in (member.name, member.value):
                return member
        raise ValueError(f"unknown OlmoEarth model_id {value!r}; expected one of {[m.name for m in cls]}")

    def repo_id(self) -> str:
        return f"allenai/{self.value}"

    def url(self) -> str:
        """Where the released bundle (config.json + weights.pth) is published."""
        return f"https://huggingface.co/{self.repo_id()}"


# (version, size) of every ModelID.
MODEL_ARCHS: dict[ModelID, tuple[str, str]] = {
    ModelID.OLMOEARTH_V1_NANO: ("v1", "nano"),
    ModelID.OLMOEARTH_V1_TINY: ("v1", "tiny"),
    ModelID.OLMOEARTH_V1_BASE: ("v1", "base"),
    ModelID.OLMOEARTH_V1_LARGE: ("v1", "large"),
    ModelID.OLMOEARTH_V1_1_NANO: ("v1.1", "nano"),
    ModelID.OLMOEARTH_V1_1_TINY: ("v1.1", "tiny"),
    ModelID.OLMOEARTH_V1_1_BASE: ("v1.1", "base"),
    ModelID.OLMOEARTH_V1_2_NANO: ("v1.2", "nano"),
    ModelID.OLMOEARTH_V1_2_TINY: ("v1.2", "tiny"),
    ModelID.OLMOEARTH_V1_2_SMALL: ("v1.2", "small"),
    ModelID.OLMOEARTH_V1_2_BASE: ("v1.2", "base"),
    ModelID.OLMOEARTH_V1_3_BASE: ("v1.3", "base"),
}

# Encoder sizes: (embedding_size, depth, num_heads); mlp_ratio 4 for all.
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (128, 4, 8),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

# Every released encoder lists these modalities (patch embeddings exist for all of them).
DEFAULT_MODALITIES = [
    "sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm", "openstreetmap_raster", "wri_canopy_height_map", "cdl",
    "worldcereal",
]  # fmt: skip
DECODE_ONLY_MODALITIES = [m for m in DEFAULT_MODALITIES if m not in mod.RELEASED_ENCODER_INPUTS]

# v1.1+: one band group for Sentinel-2 and Landsat (the order inside sets the layout of the
# patch-embedding input).
SINGLE_GROUP_BANDS = {
    "sentinel2_l2a": [["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12", "B01", "B09"]],
    "landsat": [["B8", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"]],
}
PATCH_EMBED_HIDDEN_SIZES = {"nano": [12], "tiny": [64], "small": [64], "base": [64]}
POSITION_ENCODINGS = ("absolute", "rope", "rope_mixed", "rope_3d", "rope_3d_mixed", "none")


@dataclasses.dataclass
class EncoderConfig:
    """The architecture of an OlmoEarth encoder (olmoearth_pretrain ``EncoderConfig``).

    Fields keep the package's names and defaults; ``band_groups`` holds the tokenization
    overrides (``tokenization_config.overrides``: modality -> list of band-name groups) and
    ``encoder_input_modalities`` the modalities the encoder encodes (the supported ones
    minus the decode-only ones of the pretraining config). Fields that do not change the
    encoder's numbers at fine-tuning time (``max_sequence_length``, ``min_patch_size``,
    band dropout, ``log_token_norm_stats``, ``aggregate_then_project``) are kept only so
    that a config round-trips.
    """

    supported_modality_names: list[str]
    embedding_size: int = 16
    max_patch_size: int = 8
    min_patch_size: int = 1
    num_heads: int = 2
    mlp_ratio: float = 1.0
    depth: int = 2
    drop_path: float = 0.1
    max_sequence_length: int = 12
    num_register_tokens: int = 0
    learnable_channel_embeddings: bool = True
    random_channel_embeddings: bool = False
    num_projection_layers: int = 1
    aggregate_then_project: bool = True
    use_flash_attn: bool = False
    frozen_patch_embeddings: bool = False
    qk_norm: bool = False
    log_token_norm_stats: bool = False
    band_groups: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    use_linear_patch_embed: bool = False
    band_dropout_rate: float = 0.0
    random_band_dropout: bool = False
    band_dropout_modalities: list[str] | None = None
    patch_embed_hidden_sizes: list[int] | None = None
    post_proj_hidden_sizes: list[int] | None = None
    position_encoding: str = "absolute"
    rope_base: float = 10000.0
    rope_coordinate_scale: float = 1.0
    rope_mixed_base: float = 10.0
    temporal_rope_dim_frac: float = 0.25
    rope_temporal_base: float | None = None
    rope_temporal_coordinate_scale: float = 1.0
    attention_pooler_config: dict[str, Any] | None = None
    encoder_input_modalities: list[str] | None = None

    # ---- derived ----------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.embedding_size // self.num_heads

    def group_indices(self, modality: str) -> list[list[int]]:
        """Channel indexes of each token group (band set) of ``modality``."""
        spec = mod.get(modality)
        if modality in self.band_groups:
            return spec.group_indices(self.band_groups[modality])
        return spec.band_set_indices()

    def num_band_groups(self, modality: str) -> int:
        return len(self.group_indices(modality))

    def encoded_modalities(self) -> list[str]:
        """Modalities the encoder encodes (patch embeddings exist for all supported ones)."""
        if self.encoder_input_modalities is None:
            return list(self.supported_modality_names)
        return [m for m in self.supported_modality_names if m in self.encoder_input_modalities]

    def validate(self) -> None:
        """Raises ValueError (naming the field) for architectures rskeras cannot build."""
        for name in self.supported_modality_names:
            mod.get(name)
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"encoder_config.position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}")
        if self.embedding_size % self.num_heads:
            raise ValueError(f"encoder_config.embedding_size ({self.embedding_size}) must be divisible by num_heads ({self.num_heads})")
        if self.position_encoding in ("rope", "rope_mixed", "rope_3d_mixed") and self.head_dim % 4:
            raise ValueError(f"{self.position_encoding} needs head_dim divisible by 4, got {self.head_dim}")
        if self.position_encoding == "rope_3d":
            axial_3d_split(self.head_dim, self.temporal_rope_dim_frac)
        if (self.patch_embed_hidden_sizes or self.post_proj_hidden_sizes) and not self.use_linear_patch_embed:
            raise ValueError("encoder_config.patch_embed_hidden_sizes / post_proj_hidden_sizes need use_linear_patch_embed=True")
        if self.attention_pooler_config is not None:
            raise ValueError(
                "encoder_config.attention_pooler_config (OlmoEarth v1.3 location-token pooler) is not supported by rskeras"
            )
        for modality, groups in self.band_groups.items():
            mod.get(modality).group_indices(groups)

    # ---- serialization ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "encoder_config") -> "EncoderConfig":
        """From a bundle's ``model.encoder_config`` (``_CLASS_`` fields are ignored)."""
        d = {k: v for k, v in d.items() if k != "_CLASS_"}
        tokenization = d.pop("tokenization_config", None) or {}
        overrides = tokenization.get("overrides") or {}
        band_groups = {m: [list(g) for g in o["band_groups"]] for m, o in overrides.items()}
        spatial = d.pop("spatial_pos_encoding", None)
        if spatial is not None:  # deprecated alias, wins when set (as in olmoearth_pretrain)
            d["position_encoding"] = spatial
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} (not in olmoearth_pretrain's EncoderConfig)")
        if "supported_modality_names" not in d:
            raise ValueError(f"{where}: missing supported_modality_names")
        config = cls(**d, band_groups=band_groups)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The ``model.encoder_config`` of a bundle (olmoearth_pretrain's field names)."""
        d = dataclasses.asdict(self)
        d.pop("encoder_input_modalities")
        groups = d.pop("band_groups")
        if groups:
            d["tokenization_config"] = {
                "_CLASS_": "olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.tokenization.TokenizationConfig",
                "overrides": {
                    m: {
                        "_CLASS_": "olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.tokenization.ModalityTokenization",
                        "band_groups": g,
                    }
                    for m, g in groups.items()
                },
            }
        for key in ("band_dropout_modalities", "patch_embed_hidden_sizes", "post_proj_hidden_sizes", "rope_temporal_base", "attention_pooler_config"):
            if d[key] is None:
                d.pop(key)
        return {"_CLASS_": "olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.flexi_vit.EncoderConfig", **d}


def axial_3d_split(head_dim: int, temporal_dim_frac: float) -> tuple[int, int, int]:
    """(d_t, d_row, d_col) of axial 3D RoPE (olmoearth_pretrain ``axial_3d_dim_split``)."""
    d_t = round(head_dim * temporal_dim_frac / 2) * 2
    remaining = head_dim - d_t
    if d_t < 2 or remaining % 4:
        raise ValueError(f"axial 3D RoPE cannot split head_dim={head_dim} with temporal_rope_dim_frac={temporal_dim_frac}")
    return d_t, remaining // 2, remaining // 2


def arch_config(version: str, size: str) -> EncoderConfig:
    """The encoder of ``OlmoEarthPretrain_v1(model_size=size, model_version=version)``."""
    if size not in SIZES:
        raise ValueError(f"unknown OlmoEarth size {size!r}; expected one of {list(SIZES)}")
    supported = {"v1": ("nano", "tiny", "base", "large"), "v1.1": ("nano", "tiny", "base"), "v1.2": ("nano", "small", "tiny", "base"), "v1.3": ("base",)}
    if version not in supported:
        raise ValueError(f"unknown OlmoEarth version {version!r}; expected one of {list(supported)}")
    if size not in supported[version]:
        raise ValueError(f"OlmoEarth {version} has no {size!r} size (sizes: {list(supported[version])})")
    dim, depth, heads = SIZES[size]
    kwargs: dict[str, Any] = dict(
        supported_modality_names=list(DEFAULT_MODALITIES),
        embedding_size=dim,
        num_heads=heads,
        depth=depth,
        mlp_ratio=4.0,
        max_patch_size=8,
        drop_path=0.1,
        max_sequence_length=12,
        encoder_input_modalities=list(mod.RELEASED_ENCODER_INPUTS),
    )
    if version != "v1":
        kwargs.update(
            band_groups=copy.deepcopy(SINGLE_GROUP_BANDS),
            use_linear_patch_embed=True,
            patch_embed_hidden_sizes=list(PATCH_EMBED_HIDDEN_SIZES[size]),
            band_dropout_rate=0.2,
            random_band_dropout=True,
            band_dropout_modalities=["sentinel2_l2a", "landsat"],
        )
    if version in ("v1.2", "v1.3"):
        kwargs.update(position_encoding="rope_3d_mixed", rope_mixed_base=10000.0, rope_temporal_coordinate_scale=1.0 / 30.0)
    if version == "v1.3":
        kwargs["attention_pooler_config"] = {
            "pooler_dim": dim,
            "pooler_depth": 1,
            "per_depth_read_proj": True,
            "attn_dim": dim,
            "student_dims": [128, 64],
            "student_output_norm": True,
        }
    return EncoderConfig(**kwargs)


def model_id_config(model_id: ModelID | str) -> EncoderConfig:
    """The encoder architecture of a ModelID."""
    model_id = ModelID.parse(model_id)
    return arch_config(*MODEL_ARCHS[model_id])


def bundle_config(encoder: EncoderConfig) -> dict[str, Any]:
    """A bundle ``config.json`` for ``encoder`` (what ``model_path`` reads): the encoder
    config plus the decode-only modalities, in olmoearth_pretrain's layout. (A real
    pretraining config also holds the decoder and training settings; rskeras reads only
    these two entries.)"""
    decode_only = [m for m in encoder.supported_modality_names if m not in encoder.encoded_modalities()]
    return {
        "model": {
            "_CLASS_": "olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.latent_mim.LatentMIMConfig",
            "encoder_config": encoder.to_dict(),
        },
        "train_module": {"masking_config": {"strategy_config": {"only_decode_modalities": decode_only}}},
    }


def encoder_config_from_bundle(config: dict[str, Any], path: str = "config.json") -> EncoderConfig:
    """The encoder of a bundle ``config.json`` (dict), with its encoder input modalities.

    As olmoearth_pretrain's loader: the encoder encodes the supported modalities minus
    ``train_module`` (or ``data_loader``) ``.masking_config.strategy_config.only_decode_modalities``;
    a config without that entry is an error. A config without ``use_linear_patch_embed``
    predates the flag and used Conv2d patch embeddings (rslearn's legacy patch).
    """
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("encoder_config"), dict):
        raise ValueError(f"{path}: no model.encoder_config (not an OlmoEarth bundle config)")
    enc = dict(model["encoder_config"])
    enc.setdefault("use_linear_patch_embed", False)
    encoder = EncoderConfig.from_dict(enc, where=f"{path}: model.encoder_config")
    decode_only = None
    for section in ("train_module", "data_loader"):
        decode_only = (config.get(section) or {}).get("masking_config", {}).get("strategy_config", {}).get("only_decode_modalities")
        if decode_only is not None:
            break
    if decode_only is None:
        raise ValueError(
            f"{path}: cannot tell which modalities the encoder was trained on: the config has no "
            "train_module.masking_config.strategy_config.only_decode_modalities"
        )
    encoder.encoder_input_modalities = [m for m in encoder.supported_modality_names if m not in decode_only]
    return encoder


def encoder_state_dict_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the encoder's torch state dict, from the architecture alone (what
    ``Encoder.torch_params`` maps, without building any weights: full-size archs are
    checked this way). Order: olmoearth_pretrain's module registration order."""
    d, heads, hd = config.embedding_size, config.num_heads, config.head_dim
    n = int(d * 0.25)
    hidden = int(d * config.mlp_ratio)
    out: dict[str, tuple[int, ...]] = {}
    for i in range(config.depth):
        p = f"blocks.{i}."
        out[p + "norm1.weight"], out[p + "norm1.bias"] = (d,), (d,)
        if config.position_encoding in ("rope_mixed", "rope_3d_mixed"):
            out[p + "attn.rope_mixed_freqs"] = (3 if config.position_encoding == "rope_3d_mixed" else 2, heads, hd // 2)
        for name in ("q", "k", "v"):
            out[p + f"attn.{name}.weight"], out[p + f"attn.{name}.bias"] = (d, d), (d,)
        if config.qk_norm:
            for name in ("q_norm", "k_norm"):
                out[p + f"attn.{name}.weight"], out[p + f"attn.{name}.bias"] = (hd,), (hd,)
        out[p + "attn.proj.weight"], out[p + "attn.proj.bias"] = (d, d), (d,)
        out[p + "norm2.weight"], out[p + "norm2.bias"] = (d,), (d,)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (hidden, d), (hidden,)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, hidden), (d,)
    out["composite_encodings.month_embed.weight"] = (12, n)
    for m in config.supported_modality_names:
        out[f"composite_encodings.per_modality_channel_embeddings.{m}"] = (config.num_band_groups(m), n)
    if config.num_register_tokens:
        out["register_tokens"] = (config.num_register_tokens, d)
    p0 = config.max_patch_size
    for m in config.supported_modality_names:
        for i, indices in enumerate(config.group_indices(m)):
            p = f"patch_embeddings.per_modality_embeddings.{m}.{m}__{i}."
            if not config.use_linear_patch_embed:
                out[p + "proj.weight"], out[p + "proj.bias"] = (d, len(indices), p0, p0), (d,)
                continue
            prev = len(indices)
            for j, h in enumerate(config.patch_embed_hidden_sizes or []):
                out[p + f"pixel_proj.{2 * j}.weight"], out[p + f"pixel_proj.{2 * j}.bias"] = (h, prev), (h,)
                prev = h
            out[p + "proj.weight"], out[p + "proj.bias"] = (d, prev * p0 * p0), (d,)
            prev = d
            for j, h in enumerate(config.post_proj_hidden_sizes or []):
                out[p + f"post_proj.{2 * j + 1}.weight"], out[p + f"post_proj.{2 * j + 1}.bias"] = (h, prev), (h,)
                prev = h
    out["norm.weight"], out["norm.bias"] = (d,), (d,)
    for i in range(config.num_projection_layers):
        out[f"project_and_aggregate.projection.{2 * i}.weight"] = (d, d)
        out[f"project_and_aggregate.projection.{2 * i}.bias"] = (d,)
    return out
