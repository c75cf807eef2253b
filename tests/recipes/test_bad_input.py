"""Every kind of bad input to the recipes' command line: exit 2, exactly one line on stderr that names
the file or key, no traceback, and nothing written to the run folder.

The rows run the recipes' `main` in this process (seconds for the whole table); one row runs a real
process, to see stderr exactly as a user does (library warnings included).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import reset_accelerate_state
from .conftest import DEMO_CONFIG, REPO, S1_DEMO_CONFIG, S1_RECIPE, S2_RECIPE, recipe_env


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


RECIPES = {"s2": (S2_RECIPE, DEMO_CONFIG), "s1": (S1_RECIPE, S1_DEMO_CONFIG)}


@pytest.fixture(scope="module")
def recipe_modules():
    return {name: _load(path) for name, (path, _) in RECIPES.items()}


@pytest.fixture
def inputs(tmp_path, demo_dataset, demo_dataset_s1):
    """Files the rows point at: bad YAML, a folder that is no dataset, a file that is no weights, ..."""
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: 3\n   learning_rate: [\n", encoding="utf-8")
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (tmp_path / "not_a_dataset").mkdir()
    (tmp_path / "not_a_dataset" / "readme.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "weights.pth").write_bytes(b"this is not a torch file")
    (tmp_path / "not_a_checkpoint").mkdir()
    return {"tmp": tmp_path, "dataset": demo_dataset, "dataset_s1": demo_dataset_s1}


# (recipe, arguments with {tmp}/{dataset} placeholders, text the one stderr line must contain)
ROWS = [
    ("s2", ["--config", "{tmp}/bad.yaml"], "bad.yaml:3"),
    ("s2", ["--config", "{tmp}/list.yaml"], "list.yaml"),
    ("s2", ["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    ("s2", ["train.lr=0.1"], "train.lr"),
    ("s2", ["train.learning_rate=abc"], "train.learning_rate"),
    ("s2", ["train.epochs=0"], "train.epochs"),
    ("s2", ["data.dataset={tmp}/missing_dataset"], "data.dataset"),
    ("s2", ["data.dataset={tmp}/not_a_dataset"], "not_a_dataset"),
    ("s2", ["train.pretrained_s2G={tmp}/missing.pth"], "train.pretrained_s2G"),
    ("s2", ["train.pretrained_s2D={tmp}/weights.pth"], "weights.pth"),
    ("s2", ["--resume", "{tmp}/not_a_checkpoint"], "not_a_checkpoint"),
    ("s2", ["plateau.monitor=val/nonsense"], "val/mel_loss"),
    ("s1", ["data.dataset={dataset}"], "semantic"),
    ("s1", ["train.pretrained_s1={tmp}/missing.ckpt"], "train.pretrained_s1"),
    ("s1", ["plateau.monitor=val/nonsense"], "val/loss, val/top3_acc"),
]


def _arguments(row_args: list[str], inputs: dict, run_dir: Path, recipe: str) -> list[str]:
    args = [a.format(**inputs) for a in row_args]
    config = ["--config", str(RECIPES[recipe][1])] if "--config" not in args else []
    base = [f"run.output_dir={run_dir}", "tracking.wandb=false", "tracking.tensorboard=false",
            "run.cpu_threads=1"]
    if not any(a.startswith("data.dataset=") for a in args):
        base.append(f"data.dataset={inputs['dataset' if recipe == 's2' else 'dataset_s1']}")
    return [*config, *args, *base]


@pytest.mark.parametrize(("recipe", "row_args", "named"), ROWS,
                         ids=[f"{r}:{' '.join(a)}" for r, a, _ in ROWS])
def test_bad_input_is_one_line_exit_2_and_leaves_no_trace(recipe, row_args, named, inputs, recipe_modules,
                                                          capsys):
    run_dir = inputs["tmp"] / "run"
    args = _arguments(row_args, inputs, run_dir, recipe)
    reset_accelerate_state()
    code = recipe_modules[recipe].main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{recipe}: error: ") and named in lines[0], lines[0]
    assert "Traceback" not in err
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


def test_a_user_sees_one_stderr_line_from_a_real_process(inputs, tmp_path):
    """The same through a real process: no library warning or log line joins the error on stderr."""
    run_dir = tmp_path / "run"
    args = _arguments(["train.pretrained_s2G={tmp}/missing.pth"], inputs, run_dir, "s2")
    result = subprocess.run([sys.executable, str(S2_RECIPE), *args], cwd=REPO, env=recipe_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"s2: error: train.pretrained_s2G={tmp_path}/missing.pth: expected a file, found nothing there"]
    assert not run_dir.exists()
