"""Bad inputs built from the sample dataset, for the fuzz suite (tests/test_bad_input.py).

Each case copies the module's sample dataset into its own directory, writes the tiny
classification config there (run directory ``<case>/run``), breaks one thing, and returns
the command line to run and what must come out of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable

import numpy as np
import yaml

from training_scripts.tiny_config import CONFIG

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2_DIR = "_".join(BANDS)


def make_sample(root: str) -> str:
    """The suite's sample dataset: 16 windows of 32x32 (11 train, 3 val, 2 test) and one
    32x32 predict window."""
    from tools.make_sample_dataset import make_dataset

    return str(make_dataset(root, num_windows=16, size=32, seed=1, num_predict=1, predict_size=32, progress=False))


@dataclasses.dataclass
class Case:
    """A prepared bad input: run ``argv`` (tools/train.py's) in ``cwd``."""

    name: str
    dir: str
    dataset: str
    config: str
    run_dir: str
    victim: str  # the window directory that was broken (if any)
    argv: list[str]
    rc: int = 2
    names: tuple[str, ...] = ()  # substrings the error line must contain
    output_layer: str | None = None  # predict: the layer whose markers are checked


@dataclasses.dataclass
class Spec:
    """How to build a case: ``mutate(case)`` breaks the copy; ``names`` may use
    ``{victim}`` (group/name of the broken window) and ``{dir}``."""

    mutate: Callable[[Case], None]
    names: tuple[str, ...]
    command: str = "validate"
    rc: int = 2
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # data.init_args overrides
    extra_argv: tuple[str, ...] = ()
    hang: bool = False  # a case of the data-error hang (run repeatedly)


def val_windows(dataset: str) -> list[str]:
    root = os.path.join(dataset, "windows", "default")
    out = []
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name, "metadata.json")) as f:
            if json.load(f)["options"].get("split") == "val":
                out.append(os.path.join(root, name))
    return out


def prepare(name: str, spec: Spec, sample: str, base: str) -> Case:
    case_dir = os.path.join(base, name)
    dataset = os.path.join(case_dir, "ds")
    shutil.copytree(sample, dataset)
    config = yaml.safe_load(CONFIG.replace("DATASET", dataset))
    run_dir = os.path.join(case_dir, "run")
    config["trainer"].update(default_root_dir=run_dir, logger=False, max_epochs=1)
    config["data"]["init_args"].update(spec.data)
    config_path = os.path.join(case_dir, "config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    victim = val_windows(dataset)[0]
    argv = [spec.command, "--config", config_path, *spec.extra_argv]
    case = Case(name, case_dir, dataset, config_path, run_dir, victim, argv, spec.rc)
    spec.mutate(case)
    label = "default/" + os.path.basename(case.victim)
    case.names = tuple(n.format(victim=label, dir=case_dir) for n in spec.names)
    return case


# ---- the mutations --------------------------------------------------------------------


def s2_tif(case: Case) -> str:
    return os.path.join(case.victim, "layers", "sentinel2", S2_DIR, "geotiff.tif")


def write_s2(case: Case, array: np.ndarray, crs: str | None = None, shift: tuple[int, int] = (0, 0)) -> None:
    """Rewrites the victim's Sentinel-2 GeoTIFF with ``array`` [12, H, W] (any dtype)."""
    import rasterio

    path = s2_tif(case)
    with rasterio.open(path) as src:
        profile = dict(src.profile)
    transform = profile["transform"]
    profile.update(dtype=array.dtype.name, nodata=None, crs=crs or profile["crs"])
    profile["transform"] = transform * transform.translation(*shift)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def read_s2(case: Case) -> np.ndarray:
    import rasterio

    with rasterio.open(s2_tif(case)) as src:
        return src.read()


def set_s2_dtype(case: Case, dtype: str) -> None:
    path = os.path.join(case.dataset, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["layers"]["sentinel2"]["band_sets"][0]["dtype"] = dtype
    with open(path, "w") as f:
        json.dump(config, f)


def float_pixels(value: float) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        set_s2_dtype(case, "float32")
        array = read_s2(case).astype(np.float32)
        array[3, 5, 7] = value
        write_s2(case, array)

    return mutate


def text_geotiff(case: Case) -> None:
    with open(s2_tif(case), "w") as f:
        f.write("this is not a GeoTIFF\n")


def zero_byte_geotiff(case: Case) -> None:
    open(s2_tif(case), "w").close()


def truncated_geotiff(case: Case) -> None:
    with open(s2_tif(case), "rb") as f:
        data = f.read()
    with open(s2_tif(case), "wb") as f:
        f.write(data[: len(data) // 2])


def missing_band_set(case: Case) -> None:
    shutil.rmtree(os.path.dirname(s2_tif(case)))


def float64_as_uint16(case: Case) -> None:
    write_s2(case, read_s2(case).astype(np.float64) * 1e6)


def wrong_crs(case: Case) -> None:
    write_s2(case, read_s2(case), crs="EPSG:4326")


def transform_elsewhere(case: Case) -> None:
    write_s2(case, read_s2(case), shift=(100000, 0))


def metadata_bounds(bounds: list[int]) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        path = os.path.join(case.victim, "metadata.json")
        with open(path) as f:
            md = json.load(f)
        x0, y0 = md["bounds"][:2]
        md["bounds"] = [x0 + bounds[0], y0 + bounds[1], x0 + bounds[2], y0 + bounds[3]]
        with open(path, "w") as f:
            json.dump(md, f)

    return mutate


def label_path(case: Case) -> str:
    return os.path.join(case.victim, "layers", "label", "data.geojson")


def malformed_geojson(case: Case) -> None:
    with open(label_path(case), "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')


def label_text(edit: Callable[[str], str]) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        with open(label_path(case)) as f:
            text = f.read()
        with open(label_path(case), "w") as f:
            f.write(edit(text))

    return mutate


def first_coordinate(literal: str) -> Callable[[str], str]:
    """Replaces the first x coordinate of the label polygon by a JSON literal."""

    def edit(text: str) -> str:
        fc = json.loads(text)
        fc["features"][0]["geometry"]["coordinates"][0][0][0] = "@@"
        return json.dumps(fc).replace('"@@"', literal)

    return edit


def unknown_class(text: str) -> str:
    fc = json.loads(text)
    fc["features"][0]["properties"]["category"] = "cloud"
    return json.dumps(fc)


def empty_split(case: Case) -> None:
    with open(case.config) as f:
        config = yaml.safe_load(f)
    config["data"]["init_args"]["val_config"] = {"tags": {"split": "nonexistent"}}
    with open(case.config, "w") as f:
        yaml.safe_dump(config, f)


def rename_victim(new_name: str) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        target = os.path.join(os.path.dirname(case.victim), new_name)
        os.rename(case.victim, target)
        case.victim = target

    return mutate


def nothing(case: Case) -> None:
    pass


# ---- the data cases (validate on the val split) ---------------------------------------

DATA_CASES: dict[str, Spec] = {
    # 13/17.3: the data errors that hung at exit.
    "nan_pixels_check_nan": Spec(float_pixels(float("nan")), ("{victim}", "sentinel2", "1 NaN pixel values"), data={"check_nan": True}, hang=True),
    "text_file_geotiff": Spec(text_geotiff, ("{victim}", "sentinel2", "geotiff.tif"), hang=True),
    "zero_byte_geotiff": Spec(zero_byte_geotiff, ("{victim}", "sentinel2", "geotiff.tif"), hang=True),
    "missing_band_set_dir": Spec(missing_band_set, ("{victim}", "sentinel2", "geotiff.tif"), hang=True),
    "negative_size_bounds": Spec(metadata_bounds([0, 0, -32, 32]), ("{victim}", "bounds", "negative size"), hang=True),
    "malformed_geojson": Spec(malformed_geojson, ("{victim}", "label", "data.geojson"), hang=True),
    "unknown_class_name": Spec(label_text(unknown_class), ("{victim}", "cloud", "category"), hang=True),
    # 13: silently accepted before.
    "inf_pixels_check_nan": Spec(float_pixels(float("inf")), ("{victim}", "sentinel2", "+Inf pixel values"), data={"check_nan": True}),
    "float64_stored_as_uint16": Spec(float64_as_uint16, ("{victim}", "geotiff.tif", "float64", "uint16")),
    "zero_size_bounds": Spec(metadata_bounds([0, 0, 0, 32]), ("{victim}", "bounds", "zero or negative size")),
    "geojson_1e308": Spec(label_text(first_coordinate("1e308")), ("{victim}", "data.geojson", "feature 0", "out of range")),
    "geojson_infinity": Spec(label_text(first_coordinate("Infinity")), ("{victim}", "data.geojson", "feature 0", "non-finite")),
    "wrong_crs_strict": Spec(wrong_crs, ("{victim}", "geotiff.tif", "covers 0%", "EPSG:4326"), data={"strict": True}),
    "transform_elsewhere_strict": Spec(transform_elsewhere, ("{victim}", "geotiff.tif", "covers 0%"), data={"strict": True}),
    "empty_val_split": Spec(empty_split, ("val split", "no examples")),
    # Cases of our own.
    "truncated_geotiff": Spec(truncated_geotiff, ("{victim}", "sentinel2", "geotiff.tif")),
    "missing_metadata_json": Spec(lambda c: os.remove(os.path.join(c.victim, "metadata.json")), ("{victim}", "metadata.json")),
}
