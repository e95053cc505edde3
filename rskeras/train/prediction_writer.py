"""Writing predictions back into an rslearn dataset (rslearn ``RslearnWriter``).

``tools/train.py predict`` calls :func:`run_predict`: the predict split is iterated with
its metadata, the model runs as a ``tf.function``, every example's output goes through
``task.process_output`` and the writer's ``selector``, outputs are buffered per window,
and when a window's last crop arrives they are merged and written:

* raster layers: ``layers/<output_layer>/<band-set dir of the first band set>/geotiff.tif``
  (LZW GeoTIFF on the window's grid, dtype of the first band set, no nodata tag);
* vector layers: ``layers/<output_layer>/data.geojson`` (the layer's GeoJSON
  coordinate mode, pixel by default).

Durability and safety: every file is written to a temporary file, read back (GDAL reports
some write failures, e.g. a full disk, only by leaving a truncated file), flushed to disk
(fsync) and renamed; the ``completed`` marker is written the same way and only after the
output, so a crash or a full disk never leaves a completed-but-partial layer. A write
failure stops the run with :class:`PredictionWriteError` naming the window. Every
directory written into must resolve inside the output dataset (a symlink leading out of
it is refused) and a symlink at a file's name is replaced, never written through.

Windows larger than the data module's ``large_window_pixels`` (all-crops predict splits)
are read crop by crop and written block by block: the writer plans the crop order
(``rskeras.utils.block_merge``: vertical stripes of ``stream_stripe_width`` output
columns, crop rows in order inside each) and writes each finished block row of the
GeoTIFF, so memory does not grow with the window. The pixels are those of the
whole-window merge.

``run_predict`` also handles sharding (``train.py predict --shard i/N`` / ``TF_CONFIG``:
each worker writes only its windows, see ``rskeras.train.sharding``) and resuming
(windows whose output layer is completed are skipped when
``output_layer_name_skip_inference_if_exists`` is set, which sharded runs default to).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from rskeras.config.dataset import DatasetConfig, DatasetConfigError, LayerConfig, _parse_layer
from rskeras.dataset.window import Window
from rskeras.train.model_context import SampleMetadata
from rskeras.utils.block_merge import StripeMerger, StripePlan
from rskeras.utils.feature import Feature
from rskeras.utils.fileio import UnsafePathError, is_inside, remove_stale_temporaries
from rskeras.utils.geometry import PixelBounds, Projection
from rskeras.utils.raster_format import RASTER_ERRORS, GeoTIFFWriter, geotiff_profile, write_geotiff
from rskeras.utils.vector_format import geojson_coordinate_mode, write_geojson

if TYPE_CHECKING:
    from rskeras.train.data_module import RslearnDataModule
    from rskeras.train.lightning_module import RslearnLightningModule
    from rskeras.train.trainer import Trainer

logger = logging.getLogger(__name__)


class PredictionWriteError(ValueError):
    """An output could not be written (the message names the window, the layer and the
    file); prediction stops, and the window has no ``completed`` marker."""


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


def adjust_projection_and_bounds_for_array(projection: Projection, bounds: PixelBounds, array: Any) -> tuple[Projection, PixelBounds]:
    """Projection/bounds covering the same extent as ``bounds`` at the array's size
    (``array``: an array or its shape)."""
    shape = tuple(array) if isinstance(array, tuple) else np.shape(array)
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    if shape[2] == width and shape[1] == height:
        return projection, bounds
    fx, fy = shape[2] / width, shape[1] / height
    adjusted = Projection(projection.crs, projection.x_resolution / fx, projection.y_resolution / fy)
    x0, y0 = round(bounds[0] * fx), round(bounds[1] * fy)
    return adjusted, (x0, y0, x0 + shape[2], y0 + shape[1])


@dataclasses.dataclass
class StreamedWindow:
    """A large window written block by block (see the module docstring)."""

    plan: StripePlan | None  # None for vector layers (crops deduplicated, then merged)
    num_items: int
    crops: list[PixelBounds]
    merger: StripeMerger | None = None
    file: GeoTIFFWriter | None = None
    seen: set = dataclasses.field(default_factory=set)


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
        stream_stripe_width: rskeras extension: output columns per stripe when a large
            window is written block by block (rounded up to the GeoTIFF block size).
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
        stream_stripe_width: int = 4096,
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
        if stream_stripe_width < 1:
            raise ValueError(f"stream_stripe_width must be >= 1, got {stream_stripe_width}")
        self.stream_stripe_width = stream_stripe_width
        self._streams: dict[str, StreamedWindow] = {}

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

    # ---- large windows, block by block -----------------------------------------------

    def _block_size(self) -> int:
        return int(self.format_args.get("block_size", 512))

    def stream_plan(self, window: Window, crops: list[PixelBounds]) -> StripePlan | None:
        """The block-by-block plan of a large raster window (``crops``: the window's
        all-crops bounds, column-major as ``all_crop_bounds`` makes them); None for vector
        layers."""
        assert self.layer_config is not None
        if self.layer_config.type != "raster":
            return None
        merger = self.merger
        if not isinstance(merger, RasterMerger):
            raise PredictionWriteError(
                f"window {window.label}: large windows are written block by block, which needs a RasterMerger (got {type(merger).__name__})"
            )
        f = merger.downsample_factor
        trim = merger.overlap_pixels // 2 if merger.overlap_pixels is not None else 0
        xs = sorted({c[0] for c in crops})
        ys = sorted({c[1] for c in crops})
        crop_w, crop_h = crops[0][2] - crops[0][0], crops[0][3] - crops[0][1]
        w0, h0 = window.bounds[0], window.bounds[1]
        block = self._block_size()
        stripe = -(-max(self.stream_stripe_width, block) // block) * block
        return StripePlan(
            [x // f - w0 // f for x in xs],
            [y // f - h0 // f for y in ys],
            [0 if x == w0 else trim for x in xs],
            [0 if y == h0 else trim for y in ys],
            crop_w // f,
            crop_h // f,
            window.width // f,
            window.height // f,
            stripe,
        )

    @staticmethod
    def plan_crop_order(plan: StripePlan | None, crops: list[PixelBounds]) -> list[int]:
        """Indexes into ``crops`` (column-major) in the order ``plan`` consumes them."""
        if plan is None:
            return list(range(len(crops)))
        rows = len(plan.y_offsets)
        return [kx * rows + ky for _, kx, ky in plan.items()]

    def expect_stream(self, window_label: str, plan: StripePlan | None, order: list[int], crops: list[PixelBounds]) -> None:
        """Announces that the crops of ``window_label`` arrive in ``order`` (their
        ``crop_idx`` is the position in it) and are to be written block by block."""
        self._streams[window_label] = StreamedWindow(plan, len(order), [crops[k] for k in order])

    def _stream_output(self, stream: StreamedWindow, window: Window, crop_idx: int, num_crops: int, bounds: PixelBounds, output: Any) -> None:
        if num_crops != stream.num_items or tuple(bounds) != tuple(stream.crops[crop_idx]):
            raise PredictionWriteError(f"window {window.label}: crop {crop_idx} {tuple(bounds)} does not follow the block-by-block plan")
        assert self.layer_config is not None and self.merger is not None
        if stream.plan is None:  # vector layer: each crop once, merged in column-major order
            if tuple(bounds) not in stream.seen:
                stream.seen.add(tuple(bounds))
                self.pending_outputs.setdefault(window.name, []).append(PendingCropOutput(tuple(bounds), output))
            if crop_idx == num_crops - 1:
                self._streams.pop(window.label)
                pending = sorted(self.pending_outputs.pop(window.name, []), key=lambda o: (o.bounds[0], o.bounds[1]))
                self.write(window, self.merger.merge(window, pending, self.layer_config))
            return
        array = np.asarray(output)
        try:
            if stream.merger is None:
                stream.file, stream.merger = self._open_stream(window, stream.plan, array)
            stripe, kx, ky = stream.plan.item(crop_idx)
            stream.merger.add(stripe, kx, ky, array)
            if crop_idx == num_crops - 1:
                stream.merger.finish()
                file, stream.file = stream.file, None
                self._streams.pop(window.label)
                file.__exit__(None, None, None)
                window.mark_layer_completed(self.output_layer, root=self.output_root)
                self.windows_written.append(window.label)
        except Exception as e:
            self._abort_stream(window.label)
            if isinstance(e, PredictionWriteError):
                raise
            raise self._write_error(window, e) from None

    def _open_stream(self, window: Window, plan: StripePlan, first: np.ndarray) -> tuple[GeoTIFFWriter, StripeMerger]:
        """The output GeoTIFF (temporary until complete) and the merger of a large window."""
        assert self.layer_config is not None
        self._clean(window)
        band_set = self.layer_config.band_sets[0]
        if first.ndim != 3 or first.shape[0] != len(band_set.bands):
            raise ValueError(
                f"the output has shape {list(first.shape)} but output layer {self.output_layer} band set has {len(band_set.bands)} bands {band_set.bands}"
            )
        shape = (first.shape[0], plan.height, plan.width)
        projection, out_bounds = adjust_projection_and_bounds_for_array(window.projection, window.bounds, shape)
        profile = geotiff_profile(
            shape[0],
            shape[1],
            shape[2],
            band_set.numpy_dtype,
            projection.rasterio_crs,
            projection.transform_for(out_bounds),
            block_size=self._block_size(),
            tiled=True,
            geotiff_options=self.format_args.get("geotiff_options"),
        )
        file = GeoTIFFWriter(window.raster_path(self.output_layer, band_set.bands), profile, self.output_root).__enter__()
        return file, StripeMerger(plan, shape[0], band_set.numpy_dtype, file.write, self._block_size())

    def _abort_stream(self, label: str) -> None:
        """Drops a large window's partial output (its temporary file is removed)."""
        stream = self._streams.pop(label, None)
        if stream is not None and stream.file is not None:
            file, stream.file = stream.file, None
            error = RuntimeError("aborted")
            try:
                file.__exit__(RuntimeError, error, None)
            except Exception:  # noqa: BLE001 - the temporary file is gone either way
                pass

    # ---- whole windows ----------------------------------------------------------------

    def process_output(self, window: Window, crop_idx: int, num_crops: int, bounds: PixelBounds, output: Any) -> None:
        """Buffers one crop's output; merges and writes the window at its last crop."""
        stream = self._streams.get(window.label)
        if stream is not None:
            self._stream_output(stream, window, crop_idx, num_crops, bounds, output)
            return
        self.pending_outputs.setdefault(window.name, []).append(PendingCropOutput(tuple(bounds), output))
        if crop_idx < num_crops - 1:
            return
        pending = self.pending_outputs.pop(window.name)
        if len(pending) != num_crops:
            logger.warning("window %s: writing %d of %d crops (some crops were not predicted)", window.label, len(pending), num_crops)
        assert self.layer_config is not None and self.merger is not None
        self.write(window, self.merger.merge(window, pending, self.layer_config))

    def _write_error(self, window: Window, error: BaseException) -> PredictionWriteError:
        detail = str(error)
        if isinstance(error, OSError) and error.strerror and error.filename:
            detail = f"{error.filename}: {error.strerror}"
        return PredictionWriteError(f"window {window.label}: cannot write output layer {self.output_layer}: {detail}")

    def write(self, window: Window, merged: Any) -> None:
        """Writes a window's merged output durably, then marks the layer completed; a
        failure to write raises :class:`PredictionWriteError` naming the window."""
        try:
            self._write(window, merged)
        except (OSError, UnsafePathError) + RASTER_ERRORS as e:
            raise self._write_error(window, e) from None

    def _output_file(self, window: Window) -> str:
        assert self.layer_config is not None
        if self.layer_config.type == "raster":
            return window.raster_path(self.output_layer, self.layer_config.band_sets[0].bands)
        return os.path.join(window.layer_dir(self.output_layer), "data.geojson")

    def _clean(self, window: Window) -> None:
        """Removes what a killed earlier run left half-written for this window (no other
        process writes it: windows are split between workers)."""
        for path in (self._output_file(window), os.path.join(window.layer_dir(self.output_layer), "completed")):
            if os.path.isdir(os.path.dirname(path)) and is_inside(os.path.dirname(path), self.output_root):
                remove_stale_temporaries(path)

    def _write(self, window: Window, merged: Any) -> None:
        assert self.layer_config is not None
        self._clean(window)
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
                block_size=self._block_size(),
                always_enable_tiling=bool(self.format_args.get("always_enable_tiling", False)),
                geotiff_options=self.format_args.get("geotiff_options"),
                root=self.output_root,
            )
        else:
            write_geojson(os.path.join(layer_dir, "data.geojson"), list(merged), window.projection, self.coordinate_mode, root=self.output_root)
        window.mark_layer_completed(self.output_layer, root=self.output_root)
        self.windows_written.append(window.label)

    def finish(self) -> None:
        """Warns about windows whose last crop never arrived (nothing written for them)."""
        for name, pending in self.pending_outputs.items():
            logger.warning("window %s: only %d crops arrived, its output was not written", name, len(pending))
        for label in list(self._streams):
            if self._streams[label].file is not None or self._streams[label].seen:
                logger.warning("window %s: not all crops arrived, its output was not written", label)
            self._abort_stream(label)


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


def plan_large_windows(writers: list[RslearnWriter], data: RslearnDataModule) -> int:
    """Large windows of the predict split (``data.large_window_pixels``): their crops are
    read one by one, in the block-by-block order of the raster writer, and every writer
    is told to expect them so. Returns the number of such windows."""
    md = data.model_dataset("predict")
    large = data.large_windows(md) if md.all_crops else []
    if not large:
        return 0
    orders: dict[int, list[int]] = {}
    raster = [w for w in writers if w.layer_config is not None and w.layer_config.type == "raster"]
    for wi in large:
        window = md.windows[wi]
        crops = md.window_crops[wi]
        plans = [w.stream_plan(window, crops) for w in raster]
        for other, plan in zip(raster[1:], plans[1:]):
            if plan.stripes != plans[0].stripes or plan.x_offsets != plans[0].x_offsets or plan.y_offsets != plans[0].y_offsets:
                raise PredictionWriteError(
                    f"window {window.label} is written block by block, but raster writers {raster[0].output_layer} and "
                    f"{other.output_layer} need different crop orders (different downsample_factor, overlap or block size)"
                )
        plan = plans[0] if plans else None
        order = RslearnWriter.plan_crop_order(plan, crops)
        orders[wi] = order
        for writer in writers:
            writer.expect_stream(window.label, writer.stream_plan(window, crops), order, crops)
    md.read_crops_separately(orders)
    logger.info("predict: %d large window(s) read crop by crop and written block by block", len(large))
    return len(large)


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
    plan_large_windows(writers, data)
    task = lm.task
    if hasattr(trainer, "configure_jit"):  # (tests drive this with a stand-in trainer)
        trainer.configure_jit(lm)
    limit = trainer.steps(data, "predict")
    count = 0
    start = time.perf_counter()
    try:
        for _, _, outputs, metadata in iterate_with_outputs(lm, data, "predict", limit, desc="predict"):
            size = int(tf.shape(metadata["window_index"])[0])
            outputs_np = tf.nest.map_structure(lambda t: t.numpy(), outputs)
            per_example = split_batch(outputs_np, size)
            metas = [SampleMetadata.from_tensors(metadata, i) for i in range(size)]
            for writer in writers:
                writer.process_output_batch(task, per_example, metas)
            count += size
    finally:
        for writer in writers:
            writer.finish()
    for writer in writers:
        logger.info("predict: wrote layer %s for %d windows", writer.output_layer, len(writer.windows_written))
    bad = data.bad_windows
    if bad:
        logger.warning("predict: %d bad windows were skipped: %s", len(bad), ", ".join(w for w, _ in bad[:10]))
    shard = f" (shard {data.predict_shard})" if data.predict_shard is not None else ""
    elapsed = time.perf_counter() - start
    print(
        f"predicted {count} examples{shard} in {elapsed:.1f}s"
        + "".join(f"; wrote {w.output_layer} for {len(w.windows_written)} windows" for w in writers)
    )
    return writers
