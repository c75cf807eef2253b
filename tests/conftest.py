"""Shared test fixtures.

The official-GPT-SoVITS reference files are found through GSV_REFERENCE_DIR (default
`../shared/reference` next to the repository). Tests that need them skip, saying so, when absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path:
    return Path(os.environ.get("GSV_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _reference_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"GPT-SoVITS reference fixtures not found at {path} (set GSV_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def reference_file(reference_dir):
    """Return a function giving the path of one reference file, skipping if it is missing."""

    def get(name: str) -> Path:
        path = reference_dir / name
        if not path.is_file():
            pytest.skip(f"reference file {name} not found in {reference_dir}")
        return path

    return get


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, so that the next Accelerator starts fresh (tests
    build several in one process)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate's state reset before and after the test."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def small_s2_model_config(reference_file) -> dict:
    """Model config of the small official export: the default v2 config with the fixture's overrides."""
    with open(reference_file("s2_small_v2_model_config.json")) as f:
        return json.load(f)
