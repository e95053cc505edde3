"""The prediction writer against hostile datasets and full disks: no file outside the
dataset is created or truncated through a symlink, a window is ``completed`` only after its
output was fully written, and a failed write stops prediction naming the window."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from data_helpers import RawTask, add_raster, add_window, make_config

from conftest import ROOT
from rskeras.train.data_module import RslearnDataModule
from rskeras.train.dataset import DataInput, SplitConfig
from rskeras.train.prediction_writer import PredictionWriteError, RslearnWriter, run_predict
from rskeras.utils import fileio


class Echo(RawTask):
    def process_output(self, raw_output, metadata):
        return np.transpose(np.asarray(raw_output), (2, 0, 1))


def make_dataset(root):
    make_config(
        root,
        {
            "img": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["v"]}]},
            "out": {"type": "raster", "band_sets": [{"dtype": "uint8", "bands": ["v"]}]},
            "pts": {"type": "vector"},
        },
    )
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        w = add_window(root, name, [0, 0, 12, 10], group="pred")
        add_raster(w, "img", ["v"], rng.integers(0, 250, size=(1, 10, 12)).astype(np.uint8), [0, 0, 12, 10])
    return root


def predict(root, writer_layer="out"):
    dm = RslearnDataModule({"image": DataInput("raster", ["img"], bands=["v"], passthrough=True)}, Echo(), root, batch_size=2, predict_config=SplitConfig(groups=["pred"]))
    lm = types.SimpleNamespace(model=lambda inputs, training=False: {"outputs": inputs["image"][:, 0]}, task=Echo())
    writer = RslearnWriter(writer_layer)
    run_predict(types.SimpleNamespace(callbacks=[writer], steps=lambda dm, stage: None), lm, dm)
    return writer


def layer_dir(root, name, layer="out"):
    return os.path.join(root, "windows/pred", name, "layers", layer)


def temporary_files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith(".") and ".tmp" in f]


def test_symlinked_marker_is_replaced_not_followed(tmp_path):
    root = make_dataset(str(tmp_path / "ds"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.makedirs(layer_dir(root, "a"))
    os.symlink(victim, os.path.join(layer_dir(root, "a"), "completed"))
    tif = os.path.join(layer_dir(root, "b"), "v", "geotiff.tif")
    os.makedirs(os.path.dirname(tif))
    os.symlink(victim, tif)
    writer = predict(root)
    assert sorted(writer.windows_written) == ["pred/a", "pred/b", "pred/c"]
    assert victim.read_text() == "precious"
    for name in "abc":
        marker = os.path.join(layer_dir(root, name), "completed")
        assert os.path.isfile(marker) and not os.path.islink(marker)
    assert not os.path.islink(tif) and os.path.getsize(tif) > 0


def test_layer_directory_symlinked_out_of_the_dataset_is_refused(tmp_path):
    root = make_dataset(str(tmp_path / "ds"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "completed").write_text("precious")
    os.symlink(outside, layer_dir(root, "b"))
    with pytest.raises(PredictionWriteError, match=r"window pred/b: cannot write output layer out: .*outside"):
        predict(root)
    assert sorted(os.listdir(outside)) == ["completed"] and (outside / "completed").read_text() == "precious"
    assert not temporary_files(root)
    # A vector layer the same.
    os.symlink(outside, layer_dir(root, "a", "pts"))
    with pytest.raises(PredictionWriteError, match="window pred/a: cannot write output layer pts"):
        writer = RslearnWriter("pts")
        writer.setup(root)
        from rskeras.dataset.window import Window

        writer.write(Window.load(os.path.join(root, "windows/pred/a")), [])
    assert sorted(os.listdir(outside)) == ["completed"]


def test_write_failure_stops_with_the_window_named_and_no_marker(tmp_path, monkeypatch):
    """A full disk injected at the write layer (fsync of the finished temporary file)."""
    root = make_dataset(str(tmp_path / "ds"))
    calls = []
    real = fileio.fsync_path

    def failing(path):
        calls.append(path)
        if "geotiff.tif" in path and len([c for c in calls if "geotiff.tif" in c]) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path)

    monkeypatch.setattr(fileio, "fsync_path", failing)
    with pytest.raises(PredictionWriteError) as info:
        predict(root)
    message = str(info.value)
    assert message.startswith("window pred/") and "No space left on device" in message
    failed = message.split()[1].rstrip(":").split("/")[1]
    assert not os.path.exists(os.path.join(layer_dir(root, failed), "completed"))
    assert not os.path.exists(os.path.join(layer_dir(root, failed), "v", "geotiff.tif"))
    done = [n for n in "abc" if os.path.exists(os.path.join(layer_dir(root, n), "completed"))]
    assert len(done) == 1 and failed not in done  # the run stopped at the failing window
    assert not temporary_files(root)


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import os, sys, types
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_predict_writer_safety as t
    from rskeras.train.prediction_writer import PredictionWriteError
    root = t.make_dataset(os.path.join({mount!r}, "ds"))
    fd = os.open(os.path.join({mount!r}, "filler"), os.O_CREAT | os.O_WRONLY)   # fill the file system
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.close(fd)
    try:
        t.predict(root)
    except PredictionWriteError as e:
        print("ERROR", e)
    markers = [n for n in "abc" if os.path.exists(os.path.join(t.layer_dir(root, n), "completed"))]
    print("MARKERS", markers, "TEMP", t.temporary_files(root))
    """
)


def test_real_full_disk_during_predict(tmp_path):
    """A real ENOSPC: a small tmpfs mounted in a private user/mount namespace (skipped where
    unprivileged namespaces are not available). GDAL writes small GeoTIFFs on a full disk
    as 0-byte files without an error: the read-back catches it."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), mount=str(mount)))
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged namespaces unavailable: {probe.stderr.decode().strip()}")
    shell = f"mount -t tmpfs -o size=512k tmpfs {mount} && exec {sys.executable} {script}"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell], capture_output=True, text=True, timeout=300)
    if "mount:" in done.stderr and done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR window pred/" in done.stdout and "No space left on device" in done.stdout, done.stdout
    assert "MARKERS [] TEMP []" in done.stdout, done.stdout
