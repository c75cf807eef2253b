"""The guarded optimizer step: skips agreed across processes, one fp16 scaler update per iteration."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from gsv_accel.stepper import OptimizerStepper


class ScaledOptimizer:
    """What Accelerate's optimizer wrapper does under fp16: `step` = scaler.step + scaler.update."""

    def __init__(self, optimizer, scaler) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()


class FakeAccelerator:
    """One process of `num_processes`; `others_bad` is what the other processes report."""

    def __init__(self, scaler=None, num_processes: int = 1, others_bad: bool = False) -> None:
        self.scaler, self.num_processes, self.others_bad = scaler, num_processes, others_bad
        self.device = torch.device("cpu")
        self.reductions = 0

    def reduce(self, tensor, reduction: str):
        assert reduction == "sum"
        self.reductions += 1
        return tensor + (1.0 if self.others_bad else 0.0)

    def backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def no_sync(self, model):  # noqa: ARG002
        return nullcontext()


def _model_and_optimizer(scaler=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return model, ScaledOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scaler)


def test_step_clips_and_reports_the_norm_before_clipping():
    model, optimizer = _model_and_optimizer()
    stepper = OptimizerStepper(FakeAccelerator(), grad_clip=0.01)
    stepper.backward(model, model(torch.ones(2, 3)).pow(2).sum() * 100, True)
    expected = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))
    before = [p.detach().clone() for p in model.parameters()]
    norm, skipped = stepper.step(optimizer, model, bad_loss=False)
    assert not skipped and math.isclose(norm, expected, rel_tol=1e-6)
    moved = torch.linalg.vector_norm(torch.cat([(p.detach() - b).flatten()
                                                for p, b in zip(model.parameters(), before, strict=True)]))
    assert math.isclose(float(moved), 0.1 * 0.01, rel_tol=1e-4)  # lr x clipped norm


def test_a_nonfinite_step_on_another_process_is_skipped_here_too():
    model, optimizer = _model_and_optimizer()
    accelerator = FakeAccelerator(num_processes=2, others_bad=True)
    stepper = OptimizerStepper(accelerator, grad_clip=None)
    stepper.backward(model, model(torch.ones(2, 3)).sum(), True)
    before = [p.detach().clone() for p in model.parameters()]
    _, skipped = stepper.step(optimizer, model, bad_loss=False)
    assert skipped and accelerator.reductions == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_infinite_gradient_without_a_scaler_is_skipped():
    model, optimizer = _model_and_optimizer()
    stepper = OptimizerStepper(FakeAccelerator(), grad_clip=None)
    stepper.backward(model, model(torch.full((2, 3), float("inf"))).sum(), True)
    _, skipped = stepper.step(optimizer, model, bad_loss=False)
    assert skipped


def test_fp16_scaler_is_updated_once_per_gan_iteration_also_when_g_is_skipped():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    accelerator = FakeAccelerator(scaler=scaler)
    stepper = OptimizerStepper(accelerator, grad_clip=None)
    disc, optim_d = _model_and_optimizer(scaler)
    gen, optim_g = _model_and_optimizer(scaler)
    scales = []
    for g_loss_bad in (False, True, False):
        stepper.backward(disc, disc(torch.ones(2, 3)).sum(), True)
        _, skipped_d = stepper.step(optim_d, disc, bad_loss=False, update_scaler=False)
        stepper.backward(gen, gen(torch.ones(2, 3)).sum(), True)
        _, skipped_g = stepper.step(optim_g, gen, bad_loss=g_loss_bad, update_scaler=True)
        assert not skipped_d and skipped_g == g_loss_bad
        scales.append(scaler.get_scale())
    # growth_interval=1: each iteration with finite gradients doubles the scale exactly once.
    assert scales == [2.0**11, 2.0**12, 2.0**13]
