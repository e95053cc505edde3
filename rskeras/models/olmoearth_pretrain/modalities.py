"""The OlmoEarth modalities: canonical band order, band sets and kind of each.

The data match ``olmoearth_pretrain`` (``utils/constants.py``): a model input's channels
must be in the canonical band order below (e.g. Sentinel-2 L2A is B02, B03, B04, B08, B05,
B06, B07, B8A, B11, B12, B01, B09). The *band sets* are the default tokenization groups (v1
tokenizes Sentinel-2 as 3 tokens per patch and timestep); v1.1 and later override the
Sentinel-2 and Landsat groups with a single group of all bands (``config.py``).

Only the spatial modalities that the released models know are listed (those in
``supported_modality_names`` of every released encoder config).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    Args:
        name: the modality name (also the model-input key).
        band_sets: the bands of each band set, in canonical order; the concatenation is
            the modality's channel order.
        is_multitemporal: the modality varies in time (temporal and month encodings apply).
    """

    name: str
    band_sets: tuple[tuple[str, ...], ...]
    is_multitemporal: bool

    @property
    def band_order(self) -> list[str]:
        return [band for band_set in self.band_sets for band in band_set]

    @property
    def num_bands(self) -> int:
        return len(self.band_order)

    def band_set_indices(self) -> list[list[int]]:
        """Channel indexes of each band set."""
        out, offset = [], 0
        for band_set in self.band_sets:
            out.append(list(range(offset, offset + len(band_set))))
            offset += len(band_set)
        return out

    def group_indices(self, groups: list[list[str]]) -> list[list[int]]:
        """Channel indexes of custom band groups (a tokenization override)."""
        index = {band: i for i, band in enumerate(self.band_order)}
        out = []
        for group in groups:
            missing = [b for b in group if b not in index]
            if missing:
                raise ValueError(f"band(s) {missing} not in modality {self.name!r}; valid bands: {self.band_order}")
            out.append([index[b] for b in group])
        return out


_OSM_BANDS = (
    "aerialway_pylon", "aerodrome", "airstrip", "amenity_fuel", "building", "chimney", "communications_tower", "crane",
    "flagpole", "fountain", "generator_wind", "helipad", "highway", "leisure", "lighthouse", "obelisk", "observatory",
    "parking", "petroleum_well", "power_plant", "power_substation", "power_tower", "river", "runway", "satellite_dish",
    "silo", "storage_tank", "taxiway", "water_tower", "works",
)  # fmt: skip

_WORLDCEREAL_BANDS = (
    "tc-annual-temporarycrops-classification",
    "tc-maize-main-irrigation-classification",
    "tc-maize-main-maize-classification",
    "tc-maize-second-irrigation-classification",
    "tc-maize-second-maize-classification",
    "tc-springcereals-springcereals-classification",
    "tc-wintercereals-irrigation-classification",
    "tc-wintercereals-wintercereals-classification",
)

MODALITIES: dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec(
            "sentinel2_l2a",
            (("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A", "B11", "B12"), ("B01", "B09")),
            True,
        ),
        ModalitySpec("sentinel1", (("vv", "vh"),), True),
        ModalitySpec("landsat", (("B8",), ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")), True),
        ModalitySpec("worldcover", (("B1",),), False),
        ModalitySpec("srtm", (("srtm",),), False),
        ModalitySpec("openstreetmap_raster", (_OSM_BANDS,), False),
        ModalitySpec("wri_canopy_height_map", (("B1",),), False),
        ModalitySpec("cdl", (("cdl",),), False),
        ModalitySpec("worldcereal", (_WORLDCEREAL_BANDS,), False),
    )
}

# The modalities rslearn's wrapper prepares from the model inputs, in its fixed order (the
# order of the unpooled token dimension): rslearn ``MODALITY_NAMES``.
WRAPPER_MODALITIES = ["sentinel2_l2a", "sentinel1", "worldcover", "openstreetmap_raster", "landsat"]

# The modalities every released encoder was trained to encode (the others are decode-only
# during pretraining; olmoearth_pretrain drops them from the encoder input).
RELEASED_ENCODER_INPUTS = ["sentinel2_l2a", "sentinel1", "landsat"]


def get(name: str) -> ModalitySpec:
    """The spec of modality ``name`` (clear error for unknown names)."""
    if name not in MODALITIES:
        raise ValueError(f"unknown OlmoEarth modality {name!r}; known: {sorted(MODALITIES)}")
    return MODALITIES[name]
