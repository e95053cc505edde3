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


# ---- whole scenes in bounded memory -------------------------------------------------------

@dataclasses.dataclass
class SceneSource:
    """The input GeoTIFFs of a scene (same grid), read crop by crop: nothing of the scene
    is held in memory but GDAL's block cache (``GDAL_CACHEMAX``)."""

    datasets: dict[str, Any]
    indexes: dict[str, list[int]]
    crs: Any
    transform: Affine
    height: int
    width: int

    projection = Scene.projection
    pixel_offset = Scene.pixel_offset

    def bands(self, name: str) -> int:
        return len(self.indexes[name])

    def read(self, name: str, col: int, row: int, height: int, width: int) -> np.ndarray:
        """``[bands, height, width]`` of input ``name`` at (col, row), zeros past the scene."""
        src = self.datasets[name]
        out = np.zeros((len(self.indexes[name]), height, width), dtype=src.dtypes[0])
        c1, r1 = min(col + width, self.width), min(row + height, self.height)
        if c1 > col and r1 > row:
            window = rasterio.windows.Window(col, row, c1 - col, r1 - row)
            try:
                out[:, : r1 - row, : c1 - col] = src.read(self.indexes[name], window=window)
            except rasterio.errors.RasterioError as e:
                raise ValueError(f"{src.name}: cannot read pixels {c1 - col}x{r1 - row} at ({col}, {row}): {e}") from None
        return out

    def close(self) -> None:
        for src in self.datasets.values():
            src.close()

    def __enter__(self) -> "SceneSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_scene(paths: dict[str, str], band_indexes: dict[str, list[int]] | None = None) -> SceneSource:
    """Opens one GeoTIFF per input (1-based ``band_indexes`` optional) without reading
    pixels; all must share size, CRS and transform, and hold real-valued bands."""
    datasets: dict[str, Any] = {}
    indexes: dict[str, list[int]] = {}
    ref = None
    try:
        for name, path in paths.items():
            try:
                src = rasterio.open(path)
            except rasterio.errors.RasterioError as e:
                raise ValueError(f"{path}: cannot open input {name!r} as a raster: {e}") from None
            datasets[name] = src
            grid = (src.height, src.width, src.crs, src.transform)
            if ref is None:
                ref = grid
            elif (grid[0], grid[1]) != (ref[0], ref[1]) or grid[2] != ref[2] or not grid[3].almost_equals(ref[3]):
                raise ValueError(f"{path}: input {name!r} is not on the grid of the first input (size, CRS and transform must match)")
            wanted = list((band_indexes or {}).get(name) or range(1, src.count + 1))
            bad = [i for i in wanted if not 1 <= i <= src.count]
            if bad:
                raise ValueError(f"{path}: band index {bad[0]} does not exist (the file has bands 1..{src.count})")
            dtypes = {src.dtypes[i - 1] for i in wanted}
            for dtype in dtypes:
                kind = np.dtype(dtype).kind if dtype in np.sctypeDict else "?"
                if kind not in "uif":
                    raise ValueError(f"{path}: input {name!r} has {dtype} pixels; the model takes real-valued bands (integer or float)")
            if len(dtypes) > 1:
                raise ValueError(f"{path}: input {name!r} mixes band dtypes {sorted(dtypes)}")
            indexes[name] = wanted
    except BaseException:
        for src in datasets.values():
            src.close()
        raise
    assert ref is not None
    return SceneSource(datasets, indexes, ref[2], ref[3], ref[0], ref[1])


def output_paths(description: dict[str, Any], output: str) -> dict[str, str]:
    """Per task ("" for a single task) the file it writes: ``output`` itself for a single
    task (.tif for raster tasks, .geojson for vector ones), ``output/<task>.tif|.geojson``
    for a multi-task model."""
    tasks = single_tasks(description["task"])
    multi = len(tasks) > 1 or next(iter(tasks)) != ""
    out = {}
    for name, task in tasks.items():
        ext = ".tif" if merge_of(task) == "raster" else ".geojson"
        if multi:
            out[name] = os.path.join(output, f"{name}{ext}")
        else:
            if (ext == ".tif") != output.lower().endswith((".tif", ".tiff")):
                raise ValueError(f"--output {output}: this model writes a {'GeoTIFF (.tif)' if ext == '.tif' else 'GeoJSON (.geojson)'}")
            out[name] = output
    return out


def _check_inputs(model: LiteRTModel, source: SceneSource) -> dict[str, dict[str, Any]]:
    description = model.description
    if description is None:
        raise ValueError(f"{model.path}: no {model.path}.json description beside the model (export it with tools/export.py)")
    specs = {spec["name"]: spec for spec in description["inputs"]}
    if sorted(specs) != sorted(source.datasets):
        raise ValueError(f"the model takes inputs {sorted(specs)}, got rasters for {sorted(source.datasets)}")
    for name, spec in specs.items():
        expected = len(spec["bands"]) * int(spec.get("num_timesteps", 1))
        if source.bands(name) != expected:
            raise ValueError(
                f"input {name!r}: the raster has {source.bands(name)} bands, the model takes {expected} "
                f"({', '.join(spec['bands'])}{' per timestep' if expected != len(spec['bands']) else ''}); select bands with --band-indexes"
            )
    return specs


def predict_scene_to_files(
    model: LiteRTModel,
    source: SceneSource,
    paths: dict[str, str],
    overlap_pixels: int = 0,
    probabilities: bool = False,
    score_threshold: float | None = None,
    vector_merge: str = "owned",
    stripe_width: int = 4096,
    cog: bool = False,
    progress: Any = None,
) -> dict[str, str]:
    """:func:`predict_scene` for scenes of any size: crops are read one by one from the
    input files, raster outputs are merged stripe by stripe (``rskeras.utils.block_merge``)
    and written block by block into tiled, compressed GeoTIFFs (``cog``: converted to Cloud
    Optimized GeoTIFFs at the end), vector features are written as GeoJSON at the end. The
    files are those :func:`predict_scene` + :func:`write_prediction` give (same pixels,
    features in the same order); memory does not grow with the scene.

    Args:
        paths: per task name ("" for a single task) the output file (:func:`output_paths`).
        stripe_width: output columns merged at a time (a multiple of 512; a crop at a
            stripe boundary is predicted once per stripe).
        progress: called as ``progress(crops done, crops planned)``.

    Returns per task a description of what was written.
    """
    from rskeras.utils.block_merge import StripeMerger, StripePlan
    from rskeras.utils.raster_format import GeoTIFFWriter, geotiff_profile

    if vector_merge not in ("owned", "all"):
        raise ValueError(f"vector_merge must be 'owned' or 'all', got {vector_merge!r}")
    specs = _check_inputs(model, source)
    description = model.description
    assert description is not None
    tasks = single_tasks(description["task"])
    if sorted(paths) != sorted(tasks):
        raise ValueError(f"output paths for tasks {sorted(paths)}, the model has tasks {sorted(tasks)}")
    crop_h, crop_w = model.input_size
    cols = crop_origins(source.width, crop_w, overlap_pixels)
    rows = crop_origins(source.height, crop_h, overlap_pixels)
    col_owned = owned_ranges(cols, source.width, overlap_pixels)
    row_owned = owned_ranges(rows, source.height, overlap_pixels)
    raster_tasks = [t for t, d in tasks.items() if merge_of(d) == "raster"]
    vector_tasks = [t for t in tasks if t not in raster_tasks]
    offset = source.pixel_offset() if vector_tasks else (0.0, 0.0)
    trim = overlap_pixels // 2

    def run_crop(kx: int, ky: int) -> dict[str, np.ndarray]:
        col, row = cols[kx], rows[ky]
        feed = {}
        for name, spec in specs.items():
            shape = model.input_details[name][0]
            h, w = (shape[1], shape[2]) if len(shape) == 4 else (shape[2], shape[3])
            feed[name] = _model_input(source.read(name, col, row, h, w), spec, shape, 0, 0)
        return model(**feed)

    # One crop tells each raster output's channels, dtype and downsample factor.
    probe = run_crop(0, 0)
    groups: dict[int, list[tuple[str, int, Any]]] = {}
    for name in raster_tasks:
        task = tasks[name]
        value = _as_chw(probe[raster_output(task, probabilities)])
        factor = max(crop_h // value.shape[1], 1) if value.shape[1] else 1
        dtype = value.dtype
        if raster_output(task, probabilities) == task["outputs"].get("class_ids"):  # a class map
            dtype = np.uint8 if int(task["num_classes"]) <= 256 else np.int32
        groups.setdefault(factor, []).append((name, value.shape[0], dtype))
    features: list[tuple[int, int, str, list[Feature]]] = []

    def collect(kx: int, ky: int, out: dict[str, np.ndarray]) -> None:
        owned = (col_owned[kx], row_owned[ky]) if vector_merge == "owned" else None
        place = CropPlace(cols[kx], rows[ky], offset, owned, score_threshold)
        for name in vector_tasks:
            features.append((kx, ky, name, VECTOR_MERGERS[merge_of(tasks[name])](tasks[name], out, place)))

    plans = []
    for factor, members in groups.items():
        h_out = _as_chw(probe[raster_output(tasks[members[0][0]], probabilities)]).shape[1:]
        plans.append(
            (
                factor,
                members,
                StripePlan(
                    [c // factor for c in cols],
                    [r // factor for r in rows],
                    [0 if c == 0 else trim for c in cols],
                    [0 if r == 0 else trim for r in rows],
                    h_out[1],
                    h_out[0],
                    source.width // factor,
                    source.height // factor,
                    max(-(-stripe_width // 512) * 512, 512),
                ),
            )
        )
    total = sum(len(plan) for _, _, plan in plans) if plans else len(cols) * len(rows)
    done = 0
    results: dict[str, str] = {}
    if not plans:
        for kx in range(len(cols)):
            for ky in range(len(rows)):
                collect(kx, ky, probe if kx == ky == 0 else run_crop(kx, ky))
                done += 1
                if progress is not None:
                    progress(done, total)
    for pass_index, (factor, members, plan) in enumerate(plans):
        files = []
        try:
            mergers = []
            for name, channels, dtype in members:
                profile = geotiff_profile(
                    channels, plan.height, plan.width, dtype, source.crs, source.transform @ Affine.scale(factor), tiled=True
                )
                file = GeoTIFFWriter(paths[name], profile, cog=cog).__enter__()
                files.append(file)
                mergers.append((name, StripeMerger(plan, channels, dtype, file.write)))
            for stripe, kx, ky in plan.items():
                out = probe if (kx, ky) == (0, 0) and stripe == 0 else run_crop(kx, ky)
                for name, merger in mergers:
                    merger.add(stripe, kx, ky, _as_chw(out[raster_output(tasks[name], probabilities)]))
                if pass_index == 0 and plan.is_first(stripe, kx):
                    collect(kx, ky, out)
                done += 1
                if progress is not None:
                    progress(done, total)
            for _, merger in mergers:
                merger.finish()
        except BaseException as e:
            for file in files:
                try:
                    file.__exit__(type(e), e, e.__traceback__)
                except BaseException:  # noqa: BLE001 - the temporary files are removed either way
                    pass
            raise
        for file, (name, channels, _) in zip(files, members):
            file.__exit__(None, None, None)
            results[name] = f"{channels}-band raster"
    features.sort(key=lambda f: (f[0], f[1]))
    for name in vector_tasks:
        feats = [feat for _, _, task, fs in features if task == name for feat in fs]
        write_geojson(paths[name], feats, source.projection)
        results[name] = f"{len(feats)} features"
    return results
