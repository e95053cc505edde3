"""Sliding-window prediction of a TFLite model over GeoTIFFs, without TensorFlow.

The edge-device counterpart of ``train.py predict``: a scene (one GeoTIFF per raw input,
bands in the model's band order) is cut into crops of the model's fixed input size with
rslearn's crop placement, each crop runs in the LiteRT interpreter, and the outputs are
merged:

* raster outputs (segmentation class ids or probabilities, per-pixel regression values,
  embeddings) with rslearn's ``RasterMerger`` rule — crops sorted by (x, y) and pasted in
  that order, ``overlap_pixels // 2`` columns / rows trimmed from the left / top of crops
  not at the scene's left / top edge — and written as a GeoTIFF with the input's CRS and
  transform (scaled when the output is coarser, e.g. embeddings);
* vector outputs as GeoJSON in rslearn's pixel-coordinate format (coordinates in the
  scene CRS's pixel grid, i.e. CRS coordinate / resolution, with the projection in the
  collection's ``properties``): classification / regression give a Point at each crop's
  top-left corner (as rslearn's tasks do); detection gives box polygons with ``score``
  and the class property for scores above the task's threshold. With overlapping crops a
  detection is kept only by the crop that owns its centre (the region the raster merge
  takes from that crop), so overlaps do not duplicate objects; ``vector_merge="all"``
  keeps every crop's detections, as rslearn's VectorMerger.

Only numpy, rasterio, shapely and ai_edge_litert are imported.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine

from rskeras.export.description import merge_of, raster_output, single_tasks
from rskeras.export.litert import LiteRTModel
from rskeras.utils.feature import Feature
from rskeras.utils.geometry import Projection
from rskeras.utils.vector_format import write_geojson


def crop_origins(extent: int, size: int, overlap: int) -> list[int]:
    """Crop start offsets along one axis of length ``extent`` (rslearn's all-crops rule):
    ``[0] + range(step, extent - size, step)`` plus ``extent - size`` when positive,
    step = size - overlap."""
    step = size - overlap
    if step <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the crop size ({size})")
    origins = [0] + list(range(step, extent - size, step))
    if extent - size > 0:
        origins.append(extent - size)
    return origins


def copy_spatial(src: np.ndarray, dst: np.ndarray, col: int, row: int) -> None:
    """Pastes ``src`` ``[C, h, w]`` into ``dst`` ``[C, H, W]`` at (col, row), clipped."""
    h, w = src.shape[-2:]
    H, W = dst.shape[-2:]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, H), min(col + w, W)
    if r1 > r0 and c1 > c0:
        dst[:, r0:r1, c0:c1] = src[:, r0 - row : r1 - row, c0 - col : c1 - col]


def merge_rasters(
    outputs: list[tuple[tuple[int, int], np.ndarray]],
    height: int,
    width: int,
    overlap_pixels: int | None,
    downsample_factor: int = 1,
    dtype: Any = np.float32,
) -> np.ndarray:
    """rslearn's ``RasterMerger``: ``outputs`` are ((col, row) crop origin, ``[C, h, w]``)
    in scene pixels; returns ``[C, height // f, width // f]``."""
    channels = outputs[0][1].shape[0]
    merged = np.zeros((channels, height // downsample_factor, width // downsample_factor), dtype=dtype)
    trim = overlap_pixels // 2 if overlap_pixels is not None else None
    for (col, row), array in sorted(outputs, key=lambda o: (o[0][0], o[0][1])):
        src = array
        dst_col, dst_row = col // downsample_factor, row // downsample_factor
        if trim is not None and col != 0:
            src = src[:, :, trim:]
            dst_col += trim
        if trim is not None and row != 0:
            src = src[:, trim:, :]
            dst_row += trim
        copy_spatial(src, merged, dst_col, dst_row)
    return merged


def owned_ranges(origins: list[int], extent: int, overlap: int) -> list[tuple[int, int]]:
    """Per crop along one axis, the half-open pixel range the raster merge takes from it."""
    trim = overlap // 2
    starts = [o + (trim if o != 0 else 0) for o in origins]
    ends = starts[1:] + [max(extent, origins[-1] + 1)]
    return list(zip(starts, ends))


@dataclasses.dataclass
class Scene:
    """Input rasters of one scene (same grid): name -> ``[T*C, H, W]``, plus georeference."""

    arrays: dict[str, np.ndarray]
    crs: Any
    transform: Affine
    height: int
    width: int

    @property
    def projection(self) -> Projection:
        """The scene's projection (CRS + resolution); the transform must be north-up."""
        t = self.transform
        if t.b != 0 or t.d != 0:
            raise ValueError(f"rotated GeoTIFF transforms are not supported for GeoJSON output: {t}")
        return Projection(self.crs.to_string(), t.a, t.e)

    def pixel_offset(self) -> tuple[float, float]:
        """(col, row) of the scene origin in the projection's global pixel grid."""
        return self.transform.c / self.transform.a, self.transform.f / self.transform.e


def read_scene(paths: dict[str, str], band_indexes: dict[str, list[int]] | None = None) -> Scene:
    """Reads one GeoTIFF per input (1-based ``band_indexes`` optional); all must share
    size, CRS and transform."""
    arrays = {}
    ref = None
    for name, path in paths.items():
        with rasterio.open(path) as src:
            grid = (src.height, src.width, src.crs, src.transform)
            if ref is None:
                ref = grid
            elif (grid[0], grid[1]) != (ref[0], ref[1]) or grid[2] != ref[2] or not grid[3].almost_equals(ref[3]):
                raise ValueError(f"{path}: input {name!r} is not on the grid of the first input (size, CRS and transform must match)")
            indexes = (band_indexes or {}).get(name)
            arrays[name] = src.read(indexes) if indexes else src.read()
    assert ref is not None
    return Scene(arrays, ref[2], ref[3], ref[0], ref[1])


def _model_input(array: np.ndarray, spec: dict[str, Any], shape: tuple[int, ...], col: int, row: int) -> np.ndarray:
    """The crop at (col, row) of a ``[T*C, H, W]`` array in the input's layout (zero
    padded past the scene)."""
    t = int(spec.get("num_timesteps", 1))
    c = len(spec["bands"])
    h, w = (shape[1], shape[2]) if t == 1 else (shape[2], shape[3])
    part = array[:, row : row + h, col : col + w]
    if part.shape[1:] != (h, w):
        part = np.pad(part, [(0, 0), (0, h - part.shape[1]), (0, w - part.shape[2])])
    x = part.reshape(t, c, h, w).transpose(0, 2, 3, 1)  # [T, h, w, C]
    return x[None, 0] if t == 1 else x[None]


@dataclasses.dataclass
class Prediction:
    """What one task of a scene produced: a raster ``[C, H', W']`` with its transform,
    or vector features (pixel coordinates of ``projection``)."""

    task: str
    raster: np.ndarray | None = None
    transform: Affine | None = None
    features: list[Feature] | None = None
    projection: Projection | None = None


def _as_chw(value: np.ndarray) -> np.ndarray:
    """One example's raster output ``[h, w]`` or ``[h, w, C]`` -> ``[C, h, w]``."""
    v = np.asarray(value)[0]
    return v[None] if v.ndim == 2 else v.transpose(2, 0, 1)


def _class_value(task: dict[str, Any], class_id: int) -> Any:
    return class_id if task.get("read_class_id") else task["classes"][class_id]


@dataclasses.dataclass
class CropPlace:
    """Where a crop's vector outputs go: its origin (``col``, ``row``) in scene pixels, the
    scene's ``offset`` in the projection's pixel grid, the ((c0, c1), (r0, r1)) region it
    ``owned`` (None: keep everything) and a score threshold overriding the task's."""

    col: int
    row: int
    offset: tuple[float, float]
    owned: tuple[tuple[int, int], tuple[int, int]] | None = None
    score_threshold: float | None = None


def _point_features(task: dict[str, Any], out: dict[str, np.ndarray], place: CropPlace) -> list[Feature]:
    """``point`` merge: a Point at the crop origin whose property is the class of
    ``class_ids`` (with the ``prob_property`` probabilities) or the single value output."""
    names = task["outputs"]
    ox, oy = place.offset
    if "class_ids" in names:
        props: dict[str, Any] = {task["property_name"]: _class_value(task, int(np.asarray(out[names["class_ids"]]).reshape(-1)[0]))}
        if task.get("prob_property"):
            props[task["prob_property"]] = np.asarray(out[names["probabilities"]])[0].tolist()
    else:
        (value_name,) = names.values()
        props = {task["property_name"]: float(np.asarray(out[value_name]).reshape(-1)[0])}
    return [Feature(shapely.Point(ox + place.col, oy + place.row), props)]


def _box_features(task: dict[str, Any], out: dict[str, np.ndarray], place: CropPlace) -> list[Feature]:
    """``boxes`` merge: the detections' boxes above the score threshold, only those
    centred in the region the crop owns when given."""
    names = task["outputs"]
    col, row = place.col, place.row
    ox, oy = place.offset
    threshold = task.get("score_threshold", 0.5) if place.score_threshold is None else place.score_threshold
    n = int(np.asarray(out[names["num_detections"]]).reshape(-1)[0])
    boxes = np.asarray(out[names["boxes"]])[0, :n]
    scores = np.asarray(out[names["scores"]])[0, :n]
    labels = np.asarray(out[names["labels"]])[0, :n]
    features = []
    for box, score, label in zip(boxes, scores, labels):
        if not score > threshold:
            continue
        if place.owned is not None:
            cx, cy = col + (box[0] + box[2]) / 2, row + (box[1] + box[3]) / 2
            (c0, c1), (r0, r1) = place.owned
            if not (c0 <= cx < c1 and r0 <= cy < r1):
                continue
        geom = shapely.box(ox + col + box[0], oy + row + box[1], ox + col + box[2], oy + row + box[3])
        features.append(Feature(geom, {"score": float(score), task["property_name"]: _class_value(task, int(label))}))
    return features


# The vector merges of predict_scene, by a task description's ``merge`` (``raster``
# outputs are pasted into one map per task instead).
VECTOR_MERGERS = {"point": _point_features, "boxes": _box_features}


def predict_scene(
    model: LiteRTModel,
    scene: Scene,
    overlap_pixels: int = 0,
    probabilities: bool = False,
    score_threshold: float | None = None,
    vector_merge: str = "owned",
) -> dict[str, Prediction]:
    """Runs ``model`` over the scene with sliding windows; returns per task name ("" for
    a single task) the merged raster or the features."""
    description = model.description
    if description is None:
        raise ValueError(f"{model.path}: no {model.path}.json description beside the model (export it with tools/export.py)")
    if vector_merge not in ("owned", "all"):
        raise ValueError(f"vector_merge must be 'owned' or 'all', got {vector_merge!r}")
    specs = {spec["name"]: spec for spec in description["inputs"]}
    if sorted(specs) != sorted(scene.arrays):
        raise ValueError(f"the model takes inputs {sorted(specs)}, got rasters for {sorted(scene.arrays)}")
    for name, spec in specs.items():
        expected = len(spec["bands"]) * int(spec.get("num_timesteps", 1))
        if scene.arrays[name].shape[0] != expected:
            raise ValueError(
                f"input {name!r}: the raster has {scene.arrays[name].shape[0]} bands, the model takes {expected} "
                f"({', '.join(spec['bands'])}{' per timestep' if expected != len(spec['bands']) else ''}); select bands with --band-indexes"
            )
    crop_h, crop_w = model.input_size
    cols = crop_origins(scene.width, crop_w, overlap_pixels)
    rows = crop_origins(scene.height, crop_h, overlap_pixels)
    col_owned = dict(zip(cols, owned_ranges(cols, scene.width, overlap_pixels)))
    row_owned = dict(zip(rows, owned_ranges(rows, scene.height, overlap_pixels)))
    tasks = single_tasks(description["task"])
    rasters: dict[str, list] = {t: [] for t, d in tasks.items() if merge_of(d) == "raster"}
    features: dict[str, list[Feature]] = {t: [] for t in tasks if t not in rasters}
    ox, oy = scene.pixel_offset() if features else (0.0, 0.0)
    for col in cols:
        for row in rows:
            feed = {name: _model_input(scene.arrays[name], specs[name], model.input_details[name][0], col, row) for name in specs}
            out = model(**feed)
            owned = (col_owned[col], row_owned[row]) if vector_merge == "owned" else None
            place = CropPlace(col, row, (ox, oy), owned, score_threshold)
            for task_name, task in tasks.items():
                if task_name in rasters:
                    rasters[task_name].append(((col, row), _as_chw(out[raster_output(task, probabilities)])))
                else:
                    features[task_name] += VECTOR_MERGERS[merge_of(task)](task, out, place)
    results: dict[str, Prediction] = {}
    for task_name, outputs in rasters.items():
        h_out = outputs[0][1].shape[1]
        factor = max(crop_h // h_out, 1) if h_out else 1
        dtype = outputs[0][1].dtype
        task = tasks[task_name]
        if raster_output(task, probabilities) == task["outputs"].get("class_ids"):  # a class map
            dtype = np.uint8 if int(task["num_classes"]) <= 256 else np.int32
        merged = merge_rasters(outputs, scene.height, scene.width, overlap_pixels, factor, dtype)
        results[task_name] = Prediction(task_name, raster=merged, transform=scene.transform @ Affine.scale(factor))
    for task_name, feats in features.items():
        results[task_name] = Prediction(task_name, features=feats, projection=scene.projection)
    return results


def write_prediction(prediction: Prediction, path: str, crs: Any) -> str:
    """Writes a raster prediction as an LZW GeoTIFF (CRS / transform of the scene) or
    features as GeoJSON (rslearn pixel-coordinate format)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if prediction.raster is not None:
        array = prediction.raster
        profile = {
            "driver": "GTiff",
            "count": array.shape[0],
            "height": array.shape[1],
            "width": array.shape[2],
            "dtype": array.dtype.name,
            "crs": crs,
            "transform": prediction.transform,
            "compress": "lzw",
        }
        if array.shape[1] > 512 or array.shape[2] > 512:
            profile.update(tiled=True, blockxsize=512, blockysize=512)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    else:
        write_geojson(path, prediction.features or [], prediction.projection)
    return path
