"""TorchAdamW's checkpoint layout: per-variable step counts and parameter groups as two
vectors, and checkpoints of the first layout (one scalar per variable each) still resume."""

import sys

import h5py
import numpy as np
import pytest

from conftest import FIXTURES
from rskeras.train.callbacks.checkpointing import load_training_checkpoint, save_training_checkpoint
from rskeras.train.optimizer import TorchAdamW
from rskeras.weights.errors import CheckpointError

sys.path.insert(0, str(FIXTURES))
from make_optimizer_v1_checkpoint import build_model, run_steps  # noqa: E402

V1 = str(FIXTURES / "optimizer_v1.weights.h5")


def trained():
    model = build_model()
    optimizer = TorchAdamW(learning_rate=0.01, weight_decay=0.1)
    model.compile(optimizer=optimizer)
    run_steps(model, optimizer)
    return model, optimizer


def fresh():
    model = build_model()
    optimizer = TorchAdamW(learning_rate=0.01, weight_decay=0.1)
    model.compile(optimizer=optimizer)
    optimizer.build(model.weights)
    return model, optimizer


def state(model, optimizer):
    return [v.numpy() for v in model.weights] + [v.numpy() for v in optimizer.variables]


def test_steps_and_groups_are_two_vectors():
    model, optimizer = trained()
    assert optimizer._param_steps.numpy().tolist() == [4.0, 4.0, 2.0, 2.0]
    assert optimizer._param_groups.numpy().tolist() == [0, 0, 1, 1]
    # iterations, learning rate, two moments per variable, the two vectors, group lrs, group count
    assert len(optimizer.variables) == 2 + 2 * 4 + 2 + 2


def test_first_layout_checkpoint_resumes_identically():
    """optimizer_v1.weights.h5 was written by the first layout (commit ca55c67) after the
    same steps: loaded now, every model and optimizer value equals this code's own run."""
    with h5py.File(V1) as f:
        assert len(f["optimizer/vars"]) == 2 + 4 * 4 + 2  # the scalars it was written with
    want_model, want_opt = trained()
    model, optimizer = fresh()
    assert load_training_checkpoint(model, V1, with_optimizer=True) == {"epoch": 0, "global_step": 4}
    for got, want in zip(state(model, optimizer), state(want_model, want_opt), strict=True):
        np.testing.assert_array_equal(got, want)
    assert optimizer.param_group_lrs() == pytest.approx([0.01, 0.002])


def test_round_trip_and_foreign_optimizer_state(tmp_path):
    want_model, want_opt = trained()
    path = str(tmp_path / "now.weights.h5")
    save_training_checkpoint(want_model, path, {"epoch": 1})
    model, optimizer = fresh()
    load_training_checkpoint(model, path, with_optimizer=True)
    for got, want in zip(state(model, optimizer), state(want_model, want_opt), strict=True):
        np.testing.assert_array_equal(got, want)
    # An optimizer state of another size is an error, not a silent fresh start.
    with h5py.File(path, "a") as f:
        del f["optimizer/vars"][str(len(optimizer.variables) - 1)]
    with pytest.raises(CheckpointError, match=r"(?s)does not fit.*saved optimizer has 13 variables, this one 14"):
        load_training_checkpoint(fresh()[0], path, with_optimizer=True)
