"""Detectors: specs, building, cost, data, training and evaluation.

`detectors.build(spec)` and `detectors.cost(spec)` are the public entry points. They are
resolved lazily so that torch-free code (analysis/, detectors.errors, detectors.spec) can
import this package without importing torch.
"""

from typing import Any

__all__ = ["build", "cost", "DetectorSpec", "UserError"]


def __getattr__(name: str) -> Any:
    if name == "build":
        from detectors.model import build

        return build
    if name == "cost":
        from detectors.cost import cost

        return cost
    if name == "DetectorSpec":
        from detectors.spec import DetectorSpec

        return DetectorSpec
    if name == "UserError":
        from detectors.errors import UserError

        return UserError
    raise AttributeError(f"module 'detectors' has no attribute {name!r}")
