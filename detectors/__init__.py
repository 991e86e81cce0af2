"""Detectors: specs, building, cost, data, training and evaluation.

`detectors.build(spec)`, `detectors.cost(spec)` and `detectors.latency(spec, table)` are the
public entry points. They are resolved lazily, so that `import detectors` (or
detectors.errors) does not import torch; docs/architecture.md shows the package's layout.
"""

from typing import Any

__all__ = ["build", "cost", "latency", "DetectorSpec", "UserError"]


def __getattr__(name: str) -> Any:
    if name == "build":
        from detectors.model import build

        return build
    if name == "cost":
        from detectors.cost import cost

        return cost
    if name == "latency":
        import detectors.latency as module  # a callable module: detectors.latency(spec, table)

        return module
    if name == "DetectorSpec":
        from detectors.spec import DetectorSpec

        return DetectorSpec
    if name == "UserError":
        from detectors.errors import UserError

        return UserError
    raise AttributeError(f"module 'detectors' has no attribute {name!r}")
