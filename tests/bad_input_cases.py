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

from training_scripts.tiny_config import tiny_config

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
    trainer: dict[str, Any] = dataclasses.field(default_factory=dict)  # trainer overrides
    extra_argv: tuple[str, ...] = ()
    hang: bool = False  # a case of the data-error hang (run repeatedly)


def windows_of(dataset: str, split: str) -> list[str]:
    """The window directories of a split of the sample dataset, in name order."""
    root = os.path.join(dataset, "windows", "default")
    out = []
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name, "metadata.json")) as f:
            if json.load(f)["options"].get("split") == split:
                out.append(os.path.join(root, name))
    return out


def prepare(name: str, spec: Spec, sample: str, base: str) -> Case:
    case_dir = os.path.join(base, name)
    dataset = os.path.join(case_dir, "ds")
    shutil.copytree(sample, dataset)
    config = tiny_config(dataset)
    run_dir = os.path.join(case_dir, "run")
    config["trainer"].update(default_root_dir=run_dir, logger=False, max_epochs=1)
    config["data"]["init_args"].update(spec.data)
    config["trainer"].update(spec.trainer)
    config_path = os.path.join(case_dir, "config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    victim = windows_of(dataset, "train" if spec.command == "fit" else "val")[0]
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
    profile["transform"] = transform @ transform.translation(*shift)
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

# Suspicious but readable input: the command succeeds and the log names the window.
WARN_CASES: dict[str, Spec] = {
    "wrong_crs_warns": Spec(wrong_crs, ("{victim}", "covers 0%", "EPSG:4326"), rc=0),
    "transform_elsewhere_warns": Spec(transform_elsewhere, ("{victim}", "covers 0%"), rc=0),
    "float32_stored_as_uint16_warns": Spec(lambda c: write_s2(c, read_s2(c).astype(np.float32)), ("geotiff.tif", "float32", "uint16"), rc=0),
    "non_ascii_window_name": Spec(rename_victim("praça 01 ü"), ("val_accuracy",), rc=0),
}


# ---- weights files (validate --ckpt_path FILE) ----------------------------------------


def weights_argv(case: Case, path: str) -> None:
    case.argv += ["--ckpt_path", path]


def weights_file(make: Callable[[str], None], name: str) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        path = os.path.join(case.dir, name)
        make(path)
        weights_argv(case, path)

    return mutate


def write_bytes(data: bytes) -> Callable[[str], None]:
    def make(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)

    return make


def truncated_copy(source: str) -> Callable[[str], None]:
    def make(path: str) -> None:
        with open(source, "rb") as f:
            data = f.read()
        write_bytes(data[: len(data) // 2])(path)

    return make


def foreign_h5(path: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("something/else", data=np.zeros(3))


def npz_with_objects(path: str) -> None:
    np.savez(path, **{"encoder.0.weight": np.array([{"a": 1}], dtype=object)})


def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> Callable[[str], None]:
    import struct

    def make(path: str) -> None:
        text = json.dumps(header).encode()
        write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)(path)

    return make


def weights_cases(checkpoint: str) -> dict[str, Spec]:
    """Cases on a real checkpoint of the tiny model (``checkpoint``)."""
    named = ("{dir}",)
    return {
        "weights_h5_zero_byte": Spec(weights_file(write_bytes(b""), "zero.weights.h5"), named + ("zero.weights.h5", "empty")),
        "weights_h5_truncated": Spec(weights_file(truncated_copy(checkpoint), "trunc.weights.h5"), named + ("trunc.weights.h5",)),
        "weights_h5_random": Spec(weights_file(write_bytes(np.random.default_rng(0).bytes(4096)), "random.weights.h5"), ("random.weights.h5", "not a readable HDF5")),
        "weights_h5_foreign": Spec(weights_file(foreign_h5, "foreign.weights.h5"), ("foreign.weights.h5",)),
        "fit_ckpt_path_truncated": Spec(weights_file(truncated_copy(checkpoint), "trunc.weights.h5"), ("trunc.weights.h5",), command="fit"),
        "npz_object_arrays": Spec(weights_file(npz_with_objects, "objects.npz"), ("objects.npz", "object array", "encoder.0.weight")),
        "safetensors_header_2_62": Spec(weights_file(safetensors_bytes({}, length=2**62), "huge.safetensors"), ("huge.safetensors", "header claims")),
        "safetensors_offsets_past_end": Spec(
            weights_file(safetensors_bytes({"encoder.0.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}, b"\0" * 16), "short.safetensors"),
            ("short.safetensors", "encoder.0.weight", "past the end"),
        ),
        "state_dict_on_rskeras_only_component": Spec(
            weights_file(safetensors_bytes({"encoder.0.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "plain.safetensors"),
            ("plain.safetensors", "SimpleCNN", "no PyTorch counterpart"),
        ),
        "random_torch_file": Spec(weights_file(write_bytes(np.random.default_rng(1).bytes(4096)), "random.pth"), ("random.pth",)),
    }
