"""Writing predictions back into an rslearn dataset (rslearn ``RslearnWriter``).

``tools/train.py predict`` calls :func:`run_predict`: the predict split is iterated with
its metadata, the model runs as a ``tf.function``, every example's output goes through
``task.process_output`` and the writer's ``selector``, outputs are buffered per window,
and when a window's last crop arrives they are merged and written:

* raster layers: ``layers/<output_layer>/<band-set dir of the first band set>/geotiff.tif``
  (LZW GeoTIFF on the window's grid, dtype of the first band set, no nodata tag);
* vector layers: ``layers/<output_layer>/data.geojson`` (the layer's GeoJSON
  coordinate mode, pixel by default).

The ``completed`` marker is written last and every file is written atomically, so a
crashed run never leaves a completed-but-partial layer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from rskeras.config.dataset import DatasetConfig, DatasetConfigError, LayerConfig, _parse_layer
from rskeras.dataset.window import Window
from rskeras.train.model_context import SampleMetadata
from rskeras.utils.feature import Feature
from rskeras.utils.geometry import PixelBounds, Projection
from rskeras.utils.raster_format import write_geotiff
from rskeras.utils.vector_format import geojson_coordinate_mode, write_geojson

if TYPE_CHECKING:
    from rskeras.train.data_module import RslearnDataModule
    from rskeras.train.lightning_module import RslearnLightningModule
    from rskeras.train.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PendingCropOutput:
    """One crop's processed output waiting for the rest of its window."""

    bounds: PixelBounds
    output: Any


class CropPredictionMerger:
    """Base class of mergers of per-crop outputs into one window output."""

    def merge(self, window: Window, outputs: list[PendingCropOutput], layer_config: LayerConfig) -> Any:
        raise NotImplementedError


class VectorMerger(CropPredictionMerger):
    """Concatenates the features of all crops (in arrival order)."""

    def merge(self, window: Window, outputs: list[PendingCropOutput], layer_config: LayerConfig) -> list[Feature]:
        return [feature for output in outputs for feature in output.output]


def copy_spatial_array(src: np.ndarray, dst: np.ndarray, src_offset: tuple[int, int], dst_offset: tuple[int, int]) -> None:
    """Copies the part of ``src`` (``[..., H, W]``, top-left at absolute ``src_offset``
    (col, row)) that overlaps ``dst`` (top-left at ``dst_offset``) into ``dst``."""
    src_h, src_w = src.shape[-2:]
    dst_h, dst_w = dst.shape[-2:]
    src_col = max(dst_offset[0] - src_offset[0], 0)
    src_row = max(dst_offset[1] - src_offset[1], 0)
    dst_col = max(src_offset[0] - dst_offset[0], 0)
    dst_row = max(src_offset[1] - dst_offset[1], 0)
    cols = min(src_w - src_col, dst_w - dst_col)
    rows = min(src_h - src_row, dst_h - dst_row)
    if cols <= 0 or rows <= 0:
        return
    dst[..., dst_row : dst_row + rows, dst_col : dst_col + cols] = src[..., src_row : src_row + rows, src_col : src_col + cols]


class RasterMerger(CropPredictionMerger):
    """Pastes crop rasters into a window-sized array (rslearn ``RasterMerger``).

    The output is zeros of ``(C, window_h / f, window_w / f)`` in the dtype of the output
    layer's first band set; crops are pasted sorted by (x origin, y origin) (later ones
    overwrite earlier ones; rslearn's order, x before y); values are cast by assignment.

    Args:
        overlap_pixels: the sliding-window overlap; ``overlap_pixels // 2`` columns
            (rows) are trimmed from every crop not touching the window's left (top) edge.
            Must match the predict split's ``overlap_pixels``.
        downsample_factor: how much coarser the task's rasters are than the window.
        padding: deprecated (``overlap_pixels = 2 * padding``).
    """

    def __init__(self, overlap_pixels: int | None = None, downsample_factor: int = 1, padding: int | None = None):
        if padding is not None:
            warnings.warn("padding is deprecated, use overlap_pixels instead (overlap_pixels = padding * 2)", FutureWarning, stacklevel=2)
            if overlap_pixels is not None:
                raise ValueError("Cannot specify both padding and overlap_pixels")
            overlap_pixels = padding * 2
        if overlap_pixels is not None and overlap_pixels < 0:
            raise ValueError(f"overlap_pixels must be >= 0, got {overlap_pixels}")
        if downsample_factor < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {downsample_factor}")
        self.overlap_pixels = overlap_pixels
        self.downsample_factor = downsample_factor

    def merge(self, window: Window, outputs: list[PendingCropOutput], layer_config: LayerConfig) -> np.ndarray:
        f = self.downsample_factor
        first = np.asarray(outputs[0].output)
        if first.ndim != 3:
            raise ValueError(f"window {window.label}: raster outputs must be [C, H, W] arrays, got shape {first.shape}")
        merged = np.zeros((first.shape[0], window.height // f, window.width // f), dtype=layer_config.band_sets[0].numpy_dtype)
        trim = self.overlap_pixels // 2 if self.overlap_pixels is not None else None
        for output in sorted(outputs, key=lambda o: (o.bounds[0], o.bounds[1])):
            src = np.asarray(output.output)
            offset = (output.bounds[0] // f, output.bounds[1] // f)
            if trim is not None and output.bounds[0] != window.bounds[0]:
                src = src[:, :, trim:]
                offset = (offset[0] + trim, offset[1])
            if trim is not None and output.bounds[1] != window.bounds[1]:
                src = src[:, trim:, :]
                offset = (offset[0], offset[1] + trim)
            copy_spatial_array(src, merged, offset, (window.bounds[0] // f, window.bounds[1] // f))
        return merged


def adjust_projection_and_bounds_for_array(projection: Projection, bounds: PixelBounds, array: np.ndarray) -> tuple[Projection, PixelBounds]:
    """Projection/bounds covering the same extent as ``bounds`` at the array's size."""
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    if array.shape[2] == width and array.shape[1] == height:
        return projection, bounds
    fx, fy = array.shape[2] / width, array.shape[1] / height
    adjusted = Projection(projection.crs, projection.x_resolution / fx, projection.y_resolution / fy)
    x0, y0 = round(bounds[0] * fx), round(bounds[1] * fy)
    return adjusted, (x0, y0, x0 + array.shape[2], y0 + array.shape[1])


class RslearnWriter:
    """Writes predictions into an output layer of the dataset (rslearn ``RslearnWriter``).

    Configured as a trainer callback::

        trainer:
          callbacks:
            - class_path: rslearn.train.prediction_writer.RslearnWriter
              init_args: {output_layer: output, merger: {class_path:
                rslearn.train.prediction_writer.RasterMerger, init_args: {overlap_pixels: 8}}}

    Args:
        output_layer: the layer to write (must be in the dataset config unless
            ``layer_config`` is given).
        path: dataset root (default: the data module's path).
        path_options: accepted for compatibility (local paths only).
        selector: keys applied to each processed output (e.g. ["segment"] for a
            MultiTask).
        merger: RasterMerger / VectorMerger (default by layer type).
        output_path: write under this dataset root instead.
        layer_config: the output layer's config (a dataset config layer object) instead
            of reading ``config.json``.
        storage_config, window_data_storage_config: accepted for compatibility; only
            the default file layout is written.
    """

    def __init__(
        self,
        output_layer: str,
        path: str | None = None,
        path_options: dict[str, Any] | None = None,
        selector: list[str] | None = None,
        merger: CropPredictionMerger | None = None,
        output_path: str | None = None,
        layer_config: dict[str, Any] | None = None,
        storage_config: dict[str, Any] | None = None,
        window_data_storage_config: dict[str, Any] | None = None,
    ):
        if "." in output_layer:
            raise ValueError(f"output_layer must be a layer name without '.', got {output_layer!r}")
        self.output_layer = output_layer
        self._path = path
        self._output_path = output_path
        self.selector = list(selector or [])
        self.merger = merger
        self._layer_config_raw = layer_config
        self.layer_config: LayerConfig | None = None
        self.pending_outputs: dict[str, list[PendingCropOutput]] = {}
        self.windows_written: list[str] = []
        self._windows: dict[tuple[str, str], Window] = {}
        self._initialized = False

    def setup(self, datamodule_path: str) -> None:
        """Resolves paths, the layer config, its format and the merger."""
        if self._initialized:
            return
        self.dataset_path = str(self._path if self._path is not None else datamodule_path)
        self.output_root = str(self._output_path if self._output_path is not None else self.dataset_path)
        if self._layer_config_raw is not None:
            raw = self._layer_config_raw
            if isinstance(raw, LayerConfig):
                self.layer_config = raw
            else:
                try:
                    self.layer_config = _parse_layer(self.output_layer, dict(raw), f"RslearnWriter.layer_config ({self.output_layer})")
                except DatasetConfigError as e:
                    raise ValueError(str(e)) from None
        else:
            config = DatasetConfig.load(self.dataset_path)
            if self.output_layer not in config.layers:
                raise KeyError(f"Output layer '{self.output_layer}' not found in dataset layers {sorted(config.layers)} ({self.dataset_path}/config.json)")
            self.layer_config = config.layers[self.output_layer]
        if self.layer_config.type == "raster":
            fmt = self.layer_config.band_sets[0]
            if fmt.format_name != "geotiff":
                raise ValueError(f"output layer {self.output_layer}: raster format {fmt.format_name!r} is not supported (only GeoTIFF)")
            self.format_args = dict((fmt.format.get("init_args") or {}) if "class_path" in fmt.format else {})
            if self.merger is None:
                self.merger = RasterMerger()
        else:
            self.coordinate_mode = geojson_coordinate_mode(self.layer_config.vector_format, f"layer {self.output_layer} vector_format")
            if self.merger is None:
                self.merger = VectorMerger()
        self._initialized = True

    def window_for(self, metadata: SampleMetadata) -> Window:
        """The dataset's window of an example (projection from its metadata.json), rooted
        at the output path."""
        key = (metadata.window_group, metadata.window_name)
        if key not in self._windows:
            src = Window.load(os.path.join(self.dataset_path, "windows", metadata.window_group, metadata.window_name))
            path = os.path.join(self.output_root, "windows", metadata.window_group, metadata.window_name)
            self._windows[key] = dataclasses.replace(src, path=path, bounds=tuple(metadata.window_bounds))
        return self._windows[key]

    def process_output_batch(self, task: Any, outputs: list[Any], metadatas: list[SampleMetadata]) -> None:
        """Processes the per-example (numpy) model outputs of a batch and writes finished
        windows."""
        if not self._initialized:
            raise ValueError("RslearnWriter is not set up; call setup(dataset_path) first")
        for output, metadata in zip(outputs, metadatas):
            processed = task.process_output(output, metadata)
            for key in self.selector:
                processed = processed[key]
            self.process_output(self.window_for(metadata), metadata.crop_idx, metadata.num_crops_in_window, metadata.crop_bounds, processed)

    def process_output(self, window: Window, crop_idx: int, num_crops: int, bounds: PixelBounds, output: Any) -> None:
        """Buffers one crop's output; merges and writes the window at its last crop."""
        self.pending_outputs.setdefault(window.name, []).append(PendingCropOutput(tuple(bounds), output))
        if crop_idx < num_crops - 1:
            return
        pending = self.pending_outputs.pop(window.name)
        if len(pending) != num_crops:
            logger.warning("window %s: writing %d of %d crops (some crops were not predicted)", window.label, len(pending), num_crops)
        assert self.layer_config is not None and self.merger is not None
        merged = self.merger.merge(window, pending, self.layer_config)
        self.write(window, merged)

    def write(self, window: Window, merged: Any) -> None:
        """Writes a window's merged output, then marks the layer completed."""
        assert self.layer_config is not None
        layer_dir = window.layer_dir(self.output_layer)
        if self.layer_config.type == "raster":
            array = np.asarray(merged)
            projection, bounds = adjust_projection_and_bounds_for_array(window.projection, window.bounds, array)
            band_set = self.layer_config.band_sets[0]
            if array.shape[0] != len(band_set.bands):
                raise ValueError(
                    f"window {window.label}: the output has {array.shape[0]} channels but output layer "
                    f"{self.output_layer} band set has {len(band_set.bands)} bands {band_set.bands}"
                )
            write_geotiff(
                window.raster_path(self.output_layer, band_set.bands),
                array,
                projection,
                bounds,
                block_size=int(self.format_args.get("block_size", 512)),
                always_enable_tiling=bool(self.format_args.get("always_enable_tiling", False)),
                geotiff_options=self.format_args.get("geotiff_options"),
            )
        else:
            write_geojson(os.path.join(layer_dir, "data.geojson"), list(merged), window.projection, self.coordinate_mode)
        window.mark_layer_completed(self.output_layer)
        self.windows_written.append(window.label)

    def finish(self) -> None:
        """Warns about windows whose last crop never arrived (nothing written for them)."""
        for name, pending in self.pending_outputs.items():
            logger.warning("window %s: only %d crops arrived, its output was not written", name, len(pending))


def split_batch(value: Any, size: int) -> list[Any]:
    """A batched nested structure of numpy arrays -> per-example structures."""
    import tensorflow as tf

    flat = tf.nest.flatten(value)
    return [tf.nest.pack_sequence_as(value, [np.asarray(x)[i] for x in flat]) for i in range(size)]


def model_outputs_fn(lm: Any):
    """A ``tf.function`` running the model in inference mode on an input batch (under XLA
    when the trainer's ``jit_compile`` chose it, see ``RslearnLightningModule.forward``)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(inputs):
        forward = getattr(lm, "forward", None)
        out = forward(inputs, training=False) if forward is not None else lm.model(inputs, training=False)
        return out["outputs"]

    return run


def iterate_with_outputs(lm: Any, data: Any, stage: str, limit: int | None = None, desc: str | None = None):
    """Yields (inputs, targets, outputs, metadata) numpy batches of ``stage``."""
    from tqdm import tqdm

    from rskeras.train.host_calls import surface_errors

    run = model_outputs_fn(lm)
    ds = data.tf_dataset(stage, with_metadata=True, shuffle=False)
    if limit is not None:
        ds = ds.take(limit)
    total = data.num_batches(stage) if limit is None else min(limit, data.num_batches(stage))
    with surface_errors():  # a window that cannot be read: its DataReadError
        for inputs, targets, metadata in tqdm(ds, total=total, desc=desc or stage, unit="batch", disable=None):  # no bar off a terminal
            outputs = run(inputs)
            yield inputs, targets, outputs, metadata


def run_predict(trainer: Trainer, lm: RslearnLightningModule, data: RslearnDataModule) -> list[RslearnWriter]:
    """``train.py predict``: runs the model over the predict split (up to
    ``trainer.limit_predict_batches``) and feeds every RslearnWriter among the trainer
    callbacks. Returns the writers."""
    import tensorflow as tf

    writers = [c for c in trainer.callbacks if isinstance(c, RslearnWriter)]
    if not writers:
        logger.warning("predict: no RslearnWriter in trainer.callbacks; predictions are computed and discarded")
    for writer in writers:
        writer.setup(data.path)
    task = lm.task
    trainer.configure_jit(lm)
    limit = trainer.steps(data, "predict")
    count = 0
    for _, _, outputs, metadata in iterate_with_outputs(lm, data, "predict", limit, desc="predict"):
        size = int(tf.shape(metadata["window_index"])[0])
        outputs_np = tf.nest.map_structure(lambda t: t.numpy(), outputs)
        per_example = split_batch(outputs_np, size)
        metas = [SampleMetadata.from_tensors(metadata, i) for i in range(size)]
        for writer in writers:
            writer.process_output_batch(task, per_example, metas)
        count += size
    for writer in writers:
        writer.finish()
        logger.info("predict: wrote layer %s for %d windows", writer.output_layer, len(writer.windows_written))
    bad = data.bad_windows
    if bad:
        logger.warning("predict: %d bad windows were skipped: %s", len(bad), ", ".join(w for w, _ in bad[:10]))
    print(f"predicted {count} examples" + "".join(f"; wrote {w.output_layer} for {len(w.windows_written)} windows" for w in writers))
    return writers
