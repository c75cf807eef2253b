"""TrainingSession with a tiny fake recipe: the bookkeeping every recipe gets, tested in milliseconds.

The fake recipe is written only against `gsv_accel.recipe`'s contract (a third recipe needs no change
of the session): one linear model, an ExponentialLR per epoch, a scripted validation that reports two
metrics, exports as plain torch files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from gsv_accel.checkpoint import CheckpointManager, verify_checkpoint
from gsv_accel.config import CheckpointConfig, ConfigError, RunConfig, ValidationConfig, load_config
from gsv_accel.data.sampler import LengthBucketBatchSampler
from gsv_accel.plateau import PlateauConfig
from gsv_accel.recipe import BATCH_SHARE, Recipe, RunOutcome, StepResult, ValidationResult
from gsv_accel.session import TrainingSession, run_recipe
from gsv_accel.stepper import make_stepper
from gsv_accel.tracking import TrackingConfig

from .conftest import reset_accelerate_state

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@dataclass
class FakeModel:
    width: int = 3


@dataclass
class FakeTrain:
    epochs: int = 4
    max_steps: int | None = None
    learning_rate: float = 0.05
    lr_decay: float = 0.9
    grad_clip: float | None = None
    grad_accum: int = 1
    batch_size: int = 2
    max_nonfinite_steps: int = 3
    on_nonfinite: str = "rollback"
    rollback_lr_factor: float = 0.5


@dataclass
class FakeConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(cpu_threads=1))
    model: FakeModel = field(default_factory=FakeModel)
    train: FakeTrain = field(default_factory=FakeTrain)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    plateau: PlateauConfig = field(default_factory=lambda: PlateauConfig(monitor="val/loss"))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(wandb=False, tensorboard=False))


class FakeRecipe:
    """Eight items, batches of two (train.batch_size): four steps per epoch. Validation returns the
    scripted values."""

    def __init__(self, cfg: FakeConfig, resume: str | None = None, script: dict[int, float] | None = None):
        self.cfg, self.resume = cfg, resume
        self.script = script or {}
        self.session = TrainingSession.from_config(cfg)

    def setup(self) -> None:
        acc = self.session.start(self.resume)
        torch.manual_seed(0)
        model = torch.nn.Linear(self.cfg.model.width, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.cfg.train.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.cfg.train.lr_decay)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.sampler = LengthBucketBatchSampler([10] * 8, self.cfg.train.batch_size, [0, 100],
                                                seed=self.cfg.run.seed)
        data = torch.arange(8 * self.cfg.model.width, dtype=torch.float32).view(8, -1) / 10
        self.loader = torch.utils.data.DataLoader(list(range(8)), batch_sampler=self.sampler,
                                                  collate_fn=lambda ids: {"x": data[ids]})
        self.stepper = make_stepper(acc, self.cfg.train.grad_clip)
        self.session.attach(self, models=[self.model], schedulers=[self.scheduler], sampler=self.sampler,
                            schedule_per_step=False)

    def train(self) -> int:
        return self.session.run(self.loader, grad_accum=self.cfg.train.grad_accum, log_every=1, desc="fake",
                                postfix=lambda logs: {})

    def reported_metrics(self) -> tuple[str, ...]:
        return ("val/loss", "val/acc")

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        # Mean losses: a piece of a batch cut after an out-of-memory error counts by its share of it.
        loss = sum((self.model(b["x"]) - 1).pow(2).mean() * b[BATCH_SHARE] for b in micro_batches)
        self.stepper.backward(self.model, loss, True)
        _, skipped = self.stepper.step(self.optimizer, self.model, bad_loss=not bool(torch.isfinite(loss)))
        lr = self.optimizer.param_groups[0]["lr"]
        return StepResult({"train/loss": float(loss.detach()), "train/lr": lr}, skipped)

    def validate(self) -> ValidationResult:
        value = self.script.get(self.session.progress.step, 1.0)
        return ValidationResult({"val/loss": value, "val/acc": 1.0 - value})

    def write_export(self, state_dict, name: str, epoch: int, step: int) -> Path:
        path = self.session.run_dir / "exports" / f"{name}_e{epoch}_s{step}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, path)
        return path


def config(tmp_path: Path, *overrides: str) -> FakeConfig:
    return load_config(FakeConfig, None, [f"run.output_dir={tmp_path / 'run'}", *overrides])


def train(cfg: FakeConfig, resume: str | None = None, script: dict[int, float] | None = None) -> FakeRecipe:
    reset_accelerate_state()
    recipe = FakeRecipe(cfg, resume, script)
    recipe.setup()
    recipe.exit_code = recipe.train()
    return recipe


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "train.log"}


def test_the_fake_recipe_satisfies_the_contract(tmp_path):
    assert isinstance(FakeRecipe(config(tmp_path)), Recipe)


def test_unknown_monitor_is_refused_before_training_naming_the_reported_metrics(tmp_path):
    recipe = FakeRecipe(config(tmp_path, "plateau.monitor=val/nonsense"))
    with pytest.raises(ConfigError, match=r"plateau.monitor='val/nonsense'.*val/loss, val/acc"):
        recipe.setup()
    assert not (tmp_path / "run").exists()  # bad input leaves no trace


def test_max_mode_monitor_stops_on_the_second_metric_and_exports_its_best(tmp_path):
    # val/acc = 1 - val/loss: the best accuracy (0.8) is at step 8, then two evaluations without it.
    cfg = config(tmp_path, "plateau.monitor=val/acc", "plateau.mode=max", "plateau.patience=2",
                 "plateau.max_reductions=0", "validation.every_n_steps=4", "validation.every_n_epochs=null",
                 "train.epochs=10")
    recipe = train(cfg, script={4: 0.5, 8: 0.2, 12: 0.3, 16: 0.25})
    session = recipe.session
    assert recipe.exit_code == 0 and session.progress.finished == RunOutcome.EARLY_STOP.value
    assert session.plateau.best_step == 8 and session.progress.step == 16
    best = session.best_checkpoint()
    assert best.step == 8 and best.metrics == {"val/loss": 0.2, "val/acc": 0.8} and best.manifest["best"]
    final = verify_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000016")
    assert final.metrics == {} and final.manifest["extra"]["weights_of_step"] == 8
    exported = torch.load(tmp_path / "run" / "exports" / f"demo_best_e{best.epoch}_s8.pt")
    weights = session.model_weights(best.path, recipe.model)
    assert all(torch.equal(exported[k], weights[k]) for k in weights)
    # The restored weights are the ones exported as the final model too.
    final_export = torch.load(tmp_path / "run" / "exports" / f"demo_e{final.epoch}_s16.pt")
    assert all(torch.equal(final_export[k], weights[k]) for k in weights)


def test_min_delta_decides_best_everywhere(tmp_path):
    # 0.495 beats 0.5 by less than min_delta: the controller keeps step 4, and so do retention and exports.
    cfg = config(tmp_path, "plateau.min_delta=0.01", "validation.every_n_steps=4",
                 "validation.every_n_epochs=null", "checkpoint.keep_last=1", "checkpoint.keep_best=1",
                 "train.epochs=3")
    recipe = train(cfg, script={4: 0.5, 8: 0.495, 12: 0.6})
    assert recipe.session.best_checkpoint().step == 4
    steps = [c.step for c in CheckpointManager(tmp_path / "run").complete()]
    assert steps == [12, 4]
    assert [p.name for p in (tmp_path / "run" / "exports").glob("*best*")] == ["demo_best_e1_s4.pt"]


@pytest.mark.parametrize("limit", ["train.max_steps=6", "train.epochs=2"])
def test_relaunching_a_finished_run_changes_nothing_and_a_higher_limit_continues_exactly(tmp_path, limit,
                                                                                          capsys):
    cfg = config(tmp_path, limit)
    first = train(cfg)
    run_dir = tmp_path / "run"
    before = tree_digest(run_dir)
    capsys.readouterr()
    again = train(config(tmp_path, limit), resume="auto")
    assert again.exit_code == 0 and tree_digest(run_dir) == before
    out = capsys.readouterr().out  # the console log (information goes to stdout)
    assert "is finished" in out and ("raise train.max_steps" in out or "raise train.epochs" in out)
    assert first.session.progress.step == again.session.progress.step
    # A higher limit continues, and ends where a run started with it ends, bitwise.
    raised = "train.max_steps=10" if "max_steps" in limit else "train.epochs=3"
    continued = train(config(tmp_path, raised), resume="auto")
    straight = train(config(tmp_path / "straight", raised))
    a = continued.session.model_weights(CheckpointManager(run_dir).latest_valid().path, continued.model)
    b = straight.session.model_weights(CheckpointManager(tmp_path / "straight" / "run").latest_valid().path,
                                       straight.model)
    assert continued.session.progress.step == straight.session.progress.step
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_learning_rate_change_on_resume_applies_from_the_next_step(tmp_path, capsys):
    train(config(tmp_path, "train.max_steps=5"))
    capsys.readouterr()
    resumed = train(config(tmp_path, "train.max_steps=6", "train.learning_rate=0.01"), resume="auto")
    out = capsys.readouterr().out
    # Step 6 runs in epoch 1: the per-epoch decay continues from the new base LR.
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9)
    assert "train.learning_rate changed from 0.05 to 0.01" in out
    assert "initial_lr 0.05 -> 0.01" in out


def test_bad_input_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    code = run_recipe("fake", "fake recipe", FakeConfig, FakeRecipe, tmp_path / "missing.yaml",
                      [f"run.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_what_changed_since_the_checkpoint_is_named_in_train_log(tmp_path):
    train(config(tmp_path, "train.max_steps=2"))
    train(config(tmp_path, "train.max_steps=3", "run.cpu_threads=2"), resume="auto")
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "resume: CPU threads 1 -> 2" in log
    assert "resume: train.max_steps changed from 2 to 3" in log
    assert "resume: run.cpu_threads changed from 1 to 2" in log


def test_background_checkpoints_hold_what_synchronous_ones_hold(tmp_path):
    runs = {}
    for mode in ("true", "false"):
        recipe = train(config(tmp_path / mode, f"checkpoint.async_save={mode}", "checkpoint.every_n_steps=3",
                              "checkpoint.keep_last=10"), script={8: 0.5})
        assert recipe.exit_code == 0 and not recipe.session.checkpoints.in_background
        saved = CheckpointManager(tmp_path / mode / "run").complete()
        runs[mode] = {c.step: c.manifest["files"] for c in saved}
    assert sorted(runs["true"]) == sorted(runs["false"]) == [3, 4, 6, 8, 9, 12, 15, 16]
    for step, files in runs["true"].items():
        # Identical bytes except the registered objects' file, which holds each run's own W&B run id.
        same = {name: entry for name, entry in files.items() if not name.startswith("custom_checkpoint")}
        assert same == {name: entry for name, entry in runs["false"][step].items()
                        if not name.startswith("custom_checkpoint")}, step
        assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(same)


def test_progress_lines_print_the_official_trainers_epoch_lines(tmp_path, capsys):
    # Four steps an epoch, two epochs, a log row every step: "Train Epoch: N [P%]" counts epochs from 1
    # and P is the share of the epoch done after the step; "====> Epoch: N" closes each epoch.
    train(config(tmp_path, "run.progress=lines", "train.epochs=2", "validation.every_n_epochs=null"))
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(("Train Epoch", "====>"))]
    assert lines == [f"Train Epoch: 1 [{p}%] step {s}/8" for p, s in ((25, 1), (50, 2), (75, 3), (100, 4))] \
        + ["====> Epoch: 1"] \
        + [f"Train Epoch: 2 [{p}%] step {s}/8" for p, s in ((25, 5), (50, 6), (75, 7), (100, 8))] \
        + ["====> Epoch: 2"]


def test_unknown_progress_style_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="run.progress must be one of bar, lines"):
        config(tmp_path, "run.progress=fancy")
