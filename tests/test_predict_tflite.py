"""tools/predict_tflite.py: sliding-window TFLite prediction over GeoTIFFs without
TensorFlow, rslearn's crop placement and RasterMerger rule, georeferenced outputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import ROOT
from export_helpers import BANDS, SIZE, tiny_exportable
from rskeras.export.litert import LiteRTModel
from rskeras.export.sliding_window import crop_origins, merge_rasters, owned_ranges, predict_scene, read_scene
from rskeras.export.tflite import convert_tflite, write_tflite

CRS = "EPSG:32610"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)


def test_crop_origins_follow_rslearn():
    assert crop_origins(15, 8, 2) == [0, 6, 7]
    assert crop_origins(16, 8, 0) == [0, 8]
    assert crop_origins(5, 8, 0) == [0]
    assert crop_origins(70, 32, 8) == [0, 24, 38]
    with pytest.raises(ValueError, match="overlap"):
        crop_origins(10, 4, 4)


def test_merge_trims_half_the_overlap_and_later_crops_win():
    # Extent 15, crops of 8 at 0, 6, 7 with overlap 2: each crop is filled with its index.
    outputs = [((col, 0), np.full((1, 8, 8), i + 1, np.uint8)) for i, col in enumerate([0, 6, 7])]
    merged = merge_rasters(outputs[::-1], height=8, width=15, overlap_pixels=2, dtype=np.uint8)
    assert merged[0, 0].tolist() == [1] * 7 + [2] + [3] * 7
    assert owned_ranges([0, 6, 7], 15, 2) == [(0, 7), (7, 8), (8, 15)]
    # Coarser outputs (e.g. embeddings at 1/2): pasted at origin // 2.
    coarse = merge_rasters([((0, 0), np.ones((2, 4, 4))), ((8, 0), 2 * np.ones((2, 4, 4)))], 8, 16, None, downsample_factor=2)
    assert coarse.shape == (2, 4, 8) and coarse[0, 0].tolist() == [1] * 4 + [2] * 4


def write_scene(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    bands = (1500 + rng.normal(size=(len(BANDS), height, width)).cumsum(1) * 30).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=len(BANDS), dtype="float32", crs=CRS, transform=TRANSFORM) as dst:
        dst.write(bands)
    return bands


@pytest.fixture(scope="module")
def segmentation_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    exportable = tiny_exportable("segmentation")
    path = str(root / "seg.tflite")
    write_tflite(exportable, convert_tflite(exportable, (SIZE, SIZE)), path, (SIZE, SIZE), "none")
    return path


def test_tool_writes_a_georeferenced_class_map_without_tensorflow(segmentation_model, tmp_path):
    bands = write_scene(tmp_path / "scene.tif", height=50, width=70)
    out = tmp_path / "classes.tif"
    argv = ["predict_tflite.py", "--model", segmentation_model, "--input", str(tmp_path / "scene.tif"), "--output", str(out), "--overlap", "8"]
    script = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'tools' / 'predict_tflite.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stdout
    with rasterio.open(out) as src:
        assert src.crs.to_string() == CRS and src.transform == TRANSFORM
        assert (src.count, src.height, src.width) == (1, 50, 70) and src.dtypes[0] == "uint8"
        merged = src.read(1)
    # Columns: crops at 0, 24, 38 (overlap 8, trim 4) -> owned [0, 28), [28, 42), [42, 70);
    # rows: crops at 0, 18 -> owned [0, 22), [22, 50).
    lite = LiteRTModel(segmentation_model)
    image = bands.transpose(1, 2, 0)

    def crop_classes(col, row):
        return lite(image=image[None, row : row + SIZE, col : col + SIZE])["class_ids"][0]

    for (r, c), (crop_col, crop_row) in {(5, 5): (0, 0), (5, 40): (24, 0), (30, 41): (24, 18), (30, 42): (38, 18), (21, 69): (38, 0)}.items():
        assert merged[r, c] == crop_classes(crop_col, crop_row)[r - crop_row, c - crop_col], (r, c)


def test_classification_points_in_rslearn_pixel_coordinates(tmp_path):
    exportable = tiny_exportable("classification")
    path = str(tmp_path / "cls.tflite")
    write_tflite(exportable, convert_tflite(exportable, (SIZE, SIZE)), path, (SIZE, SIZE), "none")
    write_scene(tmp_path / "scene.tif", height=40, width=40)
    scene = read_scene({"image": str(tmp_path / "scene.tif")})
    result = predict_scene(LiteRTModel(path), scene)[""]
    assert result.raster is None and len(result.features) == 4  # crops at 0 and 8 per axis
    origin = (TRANSFORM.c / 10.0, TRANSFORM.f / -10.0)
    corners = sorted((f.geometry.x - origin[0], f.geometry.y - origin[1]) for f in result.features)
    assert corners == [(0, 0), (0, 8), (8, 0), (8, 8)]
    props = result.features[0].properties
    assert props["category"] in ("a", "b", "c") and len(props["probs"]) == 3
    assert result.projection.crs == CRS and result.projection.y_resolution == -10.0

    from rskeras.export.sliding_window import write_prediction

    out = tmp_path / "points.geojson"
    write_prediction(result, str(out), scene.crs)
    fc = json.loads(out.read_text())
    assert fc["properties"] == {"crs": CRS, "x_resolution": 10.0, "y_resolution": -10.0} and len(fc["features"]) == 4


class StubDetector:
    """A stand-in LiteRT model whose every crop sees one object at crop pixel (10, 10)."""

    path = "stub.tflite"
    input_size = (16, 16)
    input_details = {"image": ((1, 16, 16, len(BANDS)), np.dtype(np.float32))}
    description = {
        "inputs": [{"name": "image", "bands": list(BANDS), "dtype": "float32", "num_timesteps": 1}],
        "task": {
            "kind": "detection",
            "outputs": {k: k for k in ("boxes", "scores", "labels", "num_detections")},
            "property_name": "category",
            "classes": ["bg", "boat"],
            "score_threshold": 0.5,
        },
    }

    def __call__(self, image):
        boxes = np.zeros((1, 3, 4), np.float32)
        boxes[0, 0] = [8, 8, 12, 12]
        boxes[0, 1] = [0, 0, 2, 2]  # below the threshold
        return {"boxes": boxes, "scores": np.array([[0.9, 0.4, 0.0]], np.float32), "labels": np.array([[1, 1, 0]], np.int32), "num_detections": np.array([2], np.int32)}


def test_detections_in_overlaps_are_kept_once(tmp_path):
    write_scene(tmp_path / "scene.tif", height=16, width=28)
    scene = read_scene({"image": str(tmp_path / "scene.tif")})
    # Columns at 0 and 12 (overlap 4, trim 2): owned [0, 14) and [14, 28); object centres at
    # x = 10 (crop 0) and x = 22 (crop 12) are both owned by their crop.
    owned = predict_scene(StubDetector(), scene, overlap_pixels=4)[""].features
    everything = predict_scene(StubDetector(), scene, overlap_pixels=4, vector_merge="all")[""].features
    assert len(owned) == len(everything) == 2
    scene16 = read_scene({"image": str(tmp_path / "scene.tif")})
    scene16.arrays["image"] = scene16.arrays["image"][:, :, :20]
    scene16.width = 20
    # Columns at 0 and 4 (trim 6): owned [0, 10) and [10, 20); crop 0's object (x = 10) lies in
    # crop 4's region, so only crop 4 keeps its own (x = 14); "all" keeps both (rslearn's merger).
    owned = predict_scene(StubDetector(), scene16, overlap_pixels=12)[""].features
    assert len(owned) == 1 and owned[0].properties == {"score": pytest.approx(0.9), "category": "boat"}
    assert len(predict_scene(StubDetector(), scene16, overlap_pixels=12, vector_merge="all")[""].features) == 2
