"""Learning-rate schedulers against torch's formulas (closed forms and a reference
ReduceLROnPlateau), stepped once per epoch like Lightning."""

import importlib.util
import math

import numpy as np
import pytest

from rskeras.train import scheduler as S


class GroupsOptimizer:
    """Minimal optimizer with parameter groups (the interface schedulers use)."""

    def __init__(self, *lrs):
        self.lrs = list(lrs)

    def param_group_lrs(self):
        return list(self.lrs)

    def set_param_group_lr(self, i, lr):
        self.lrs[i] = lr


def lr_sequence(factory, epochs, metrics=None, lr0=0.1):
    """Learning rate used in each epoch, stepping at each epoch end."""
    opt = GroupsOptimizer(lr0)
    sched = factory.build(opt)
    out = []
    for e in range(epochs):
        out.append(opt.lrs[0])
        sched.step(None if metrics is None else metrics[e])
    return out


def test_multistep():
    got = lr_sequence(S.MultiStepScheduler(milestones=[2, 5, 5]), 8)
    want = [0.1 * 0.1 ** sum(m <= e for m in [2, 5, 5]) for e in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got = lr_sequence(S.MultiStepScheduler(milestones=[0, 3], gamma=0.5), 5)
    np.testing.assert_allclose(got, [0.05, 0.05, 0.05, 0.025, 0.025], rtol=1e-12)


def test_cosine_annealing_closed_form_and_beyond_t_max():
    t_max, eta = 5, 0.01
    got = lr_sequence(S.CosineAnnealingScheduler(T_max=t_max, eta_min=eta), 23)
    # torch's recursive form equals the closed form at every epoch, also past T_max
    # (the learning rate climbs back to lr0 at 2*T_max and keeps oscillating).
    want = [eta + (0.1 - eta) * (1 + math.cos(math.pi * e / t_max)) / 2 for e in range(23)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[10] == pytest.approx(0.1) and got[5] == pytest.approx(eta)


def test_cosine_warm_restarts():
    got = lr_sequence(S.CosineAnnealingWarmRestartsScheduler(T_0=3, T_mult=2, eta_min=0.001), 25)
    want, t_i, t_cur = [], 3, 0
    for _ in range(25):
        want.append(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur, t_i = 0, t_i * 2
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="T_mult"):
        S.CosineAnnealingWarmRestartsScheduler(T_0=3, T_mult=0).build(GroupsOptimizer(0.1))


def plateau_reference(metrics, lr, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
    """ReduceLROnPlateau as documented by torch, written out independently."""
    best = math.inf if mode == "min" else -math.inf
    bad = cool = 0
    out = []
    for value in metrics:
        out.append(lr)
        if mode == "min":
            better = value < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        else:
            better = value > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        if better:
            best, bad = value, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factor=0.5, patience=2, cooldown=1, min_lr=0.003),
        dict(mode="max", threshold_mode="abs", threshold=0.05, patience=1),
        dict(patience=0, eps=0.02, factor=0.9),
        dict(),
    ],
)
def test_plateau(kwargs):
    rng = np.random.default_rng(0)
    metrics = list(5 + np.cumsum(rng.normal(size=60) * 0.1))
    got = lr_sequence(S.PlateauScheduler(**kwargs), 60, metrics)
    np.testing.assert_allclose(got, plateau_reference(metrics, 0.1, **kwargs), rtol=1e-12)


def test_plateau_monitors_train_loss_and_validates():
    sched = S.PlateauScheduler().build(GroupsOptimizer(0.1))
    assert sched.monitor == "train_loss"
    assert S.MultiStepScheduler(milestones=[1]).build(GroupsOptimizer(0.1)).monitor is None
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        S.PlateauScheduler(factor=1.0).build(GroupsOptimizer(0.1))


def test_groups_added_later_follow_the_schedule():
    opt = GroupsOptimizer(0.1)
    plateau = S.PlateauScheduler(patience=0, factor=0.5, min_lr=0.01).build(opt)
    opt.lrs.append(0.02)  # a group added by FreezeUnfreeze
    plateau.extend_min_lrs()
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement -> both groups halved (min_lr per group)
    assert opt.lrs == pytest.approx([0.05, 0.01])
    opt = GroupsOptimizer(0.1)
    multistep = S.MultiStepScheduler(milestones=[1]).build(opt)
    opt.lrs.append(0.02)
    multistep.step()
    assert opt.lrs == pytest.approx([0.01, 0.002])


def test_state_dict_round_trip():
    opt = GroupsOptimizer(0.1)
    sched = S.CosineAnnealingWarmRestartsScheduler(T_0=2, T_mult=2).build(opt)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    opt2 = GroupsOptimizer(opt.lrs[0])
    sched2 = S.CosineAnnealingWarmRestartsScheduler(T_0=2, T_mult=2).build(opt2)
    sched2.load_state_dict(state)
    for _ in range(4):
        sched.step()
        sched2.step()
        assert opt.lrs == opt2.lrs


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_cross_check_with_torch():
    import torch

    def torch_sequence(make, epochs, metrics=None):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        out = []
        for e in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step(metrics[e]) if metrics is not None else sched.step()
        return out

    lrs = torch.optim.lr_scheduler
    metrics = list(3 + np.cumsum(np.random.default_rng(1).normal(size=40) * 0.1))
    cases = [
        (lambda o: lrs.MultiStepLR(o, [1, 4, 4]), S.MultiStepScheduler(milestones=[1, 4, 4]), None),
        (lambda o: lrs.CosineAnnealingLR(o, 4, 0.01), S.CosineAnnealingScheduler(T_max=4, eta_min=0.01), None),
        (lambda o: lrs.CosineAnnealingWarmRestarts(o, 2, 3, 0.001), S.CosineAnnealingWarmRestartsScheduler(T_0=2, T_mult=3, eta_min=0.001), None),
        (lambda o: lrs.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=2), S.PlateauScheduler(factor=0.5, patience=1, cooldown=2), metrics),
    ]
    for make, factory, m in cases:
        np.testing.assert_allclose(lr_sequence(factory, 40, m), torch_sequence(make, 40, m), rtol=1e-12)
