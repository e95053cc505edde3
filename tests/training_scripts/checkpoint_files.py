"""Reading checkpoint files in tests."""

import h5py


def h5_datasets(path):
    """Every dataset of an HDF5 file (e.g. a ``.weights.h5`` checkpoint): name -> value."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out
