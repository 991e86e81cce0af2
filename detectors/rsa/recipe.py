"""The RSA baseline's training stages as a recipe section (`recipe.rsa`; docs/rsa.md).

Plain data: detectors.config.Recipe holds it and omits it from YAML at its default, so recipes
and checkpoints of other families never mention it.
"""

from __future__ import annotations

from dataclasses import dataclass

from detectors.errors import UserError

__all__ = ["RSA_STAGES", "RSARecipe"]

RSA_STAGES = ("all", "forecast", "rsa_lrn")


@dataclass(frozen=True)
class RSARecipe:
    """Training stages of the RSA baseline (models of head type 'rsa_lrn'; ignored by others;
    docs/rsa.md). stage: 'forecast' (scale-forecast network, Eq. 2), 'rsa_lrn' (RSA unit +
    LRN end-to-end, Eq. 7 + 11), 'all' (both objectives each step: their parameters are
    disjoint); init_weights: a checkpoint of the same spec from an earlier stage, loaded at
    the first step; require_landmarks: a sample with faces but no landmark labels is a
    UserError (else its faces train the score and box only); rsa_weight multiplies Eq. 7."""

    stage: str = "all"
    init_weights: str | None = None
    require_landmarks: bool = False
    rsa_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.stage not in RSA_STAGES:
            raise UserError(f"recipe.rsa.stage {self.stage!r} is not one of {', '.join(RSA_STAGES)}")
