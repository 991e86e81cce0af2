"""Checkpoints: one file per save, written atomically, loadable without pickled code.

A checkpoint is a plain dict saved with `torch.save`:

- `spec`: the detector spec as a dict (`DetectorSpec.to_dict()`),
- `model`: the model's `state_dict`,
- for resuming a training run: `optimizer`, `scheduler` (state dicts), `iteration` (int,
  iterations completed), `rng` (torch / numpy / python / loader generator states, see
  `detectors.train`), `recipe` (dict).

Only tensors, numbers, strings, lists, tuples and dicts go in, so `load_checkpoint` uses
`torch.load(weights_only=True)` and never unpickles code from a file a user handed us.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from detectors.errors import UserError

__all__ = ["save_checkpoint", "load_checkpoint", "load_model_weights"]


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file in the same directory + os.replace).

    A crash mid-write leaves the previous checkpoint (if any) intact and no partial file under
    the final name. Returns the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (or any dict of tensors saved by torch).

    A missing file or a file that is not a torch checkpoint raises UserError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types (and cryptic messages) for a non-checkpoint
        raise UserError(f"{path} is not a facenas checkpoint (torch.load cannot read it)") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a facenas checkpoint (holds a {type(state).__name__})")
    return state


def _state_dict_of(path_or_state: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping, str]:
    if isinstance(path_or_state, Mapping):
        state, where = path_or_state, "the given weights"
    else:
        state, where = load_checkpoint(path_or_state), str(path_or_state)
    # A full checkpoint keeps the weights under "model"; a bare state_dict is accepted too.
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where} holds no model weights (no 'model' state_dict of tensors)")
    return state, where


def _describe(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_model_weights(model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Any]) -> None:
    """Load weights into `model`, or raise UserError naming the mismatch.

    `path_or_state` is a checkpoint path, a checkpoint dict (weights under "model") or a bare
    state_dict. The keys and every tensor's shape must match the model exactly: weights of
    another spec give a one-line message listing missing / unexpected keys or the first tensor
    whose shape differs.
    """
    weights, where = _state_dict_of(path_or_state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_describe(unexpected)}")
    for key, tensor in expected.items():
        if key in weights and tuple(weights[key].shape) != tuple(tensor.shape):
            problems.append(
                f"tensor {key} has shape {tuple(weights[key].shape)} in the weights but "
                f"{tuple(tensor.shape)} in the model"
            )
            break
    if problems:
        raise UserError(f"weights in {where} do not fit this spec: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)
