"""Loading what the model commands (import-weights, export-onnx, detect) share: a CONFIG that
is either a detector spec YAML or a retraining config (spec + recipe), and weights."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from detectors.config import TestConfig, load_config
from detectors.errors import UserError
from detectors.spec import DetectorSpec

__all__ = ["load_spec", "load_detector"]


def load_spec(path: str | os.PathLike) -> tuple[DetectorSpec, TestConfig]:
    """A spec YAML or a retraining config -> (spec, test settings; defaults for a bare spec)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        data = None  # let the spec parser report the line
    if isinstance(data, dict) and "spec" in data:
        config = load_config(path)
        return config.spec, config.recipe.test
    return DetectorSpec.from_yaml(path), TestConfig()


def load_detector(config: str | os.PathLike, weights: str | os.PathLike):
    """Build CONFIG's detector and load WEIGHTS (a checkpoint) into it, in eval mode.

    Weights of another spec raise UserError naming the first mismatching tensor.
    Returns (model, test settings).
    """
    from detectors.checkpoint import load_model_weights
    from detectors.model import build

    spec, test = load_spec(config)
    model = build(spec)
    load_model_weights(model, weights)
    return model.eval(), test
