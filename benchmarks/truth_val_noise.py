"""How much of the ranking truth's seed noise is the val set's draw (issue 25).

Two seeds of one spec reach different val AP. Part of that difference is the models' (one
trained better), part is which images the val set holds: two equally good models make different
mistakes, and 250 images weigh those mistakes unevenly. The paired image bootstrap
(detectors.evaluate.image_bootstrap_ap) resamples the val images, the same draws for every
run, and scores each run on each resample; the spread of AP_seed_a - AP_seed_b over the
resamples is what the val set's draw alone puts into a seed difference.

`rows` gives, per spec and pair of seeds: both runs' AP on the full val set, their difference
and the bootstrap sd of the difference. `summary` compares the seed variance (E[d^2] / 2 over
specs, d the seed difference) with its val-set part (E[sd^2] / 2): their ratio is the share of
the seed noise that a larger val set would remove. ranking_truth.py --val-noise writes the
rows (ranking_truth_val_noise.csv); --report prints them.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

VAL_NOISE_CSV = "ranking_truth_val_noise.csv"
VAL_NOISE_COLUMNS = ["spec_id", "seed_a", "seed_b", "setting", "ap_a", "ap_b", "diff", "boot_sd",
                     "samples"]
PREDICTIONS = "val_predictions"  # in a run directory: its final checkpoint's val predictions


def run_predictions(run: Path, data_root: str | Path) -> Path:
    """The run's val predictions in the official layout (run/val_predictions/), predicted from
    its final checkpoint at its recipe's test protocol if not there yet (written to a temporary
    directory, then renamed: a killed prediction leaves nothing half-written)."""
    from detectors.config import load_config
    from detectors.test import test

    out = run / PREDICTIONS
    if out.is_dir():
        return out
    tmp = run / (PREDICTIONS + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = load_config(run / "train" / "config.yaml")
    test(config, run / "train" / "checkpoint.pt", data_root, split="val", pred_dir=tmp, progress=False)
    tmp.rename(out)
    return out


def rows(predictions: dict[tuple[str, int], Any], ground_truth, setting: str = "hard",
         samples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per spec and pair of its seeds (VAL_NOISE_COLUMNS). `predictions`: (spec_id,
    seed) -> a prediction directory or {image_id: (N, 5)}; every run is scored on the same
    `samples` resamples of the val images (seeded by `seed`)."""
    from detectors.evaluate import evaluate, image_bootstrap_ap, read_predictions

    keys = sorted(predictions)
    predictions = {k: v if isinstance(v, dict) else read_predictions(v, progress=False)
                   for k, v in predictions.items()}  # a directory is read once, not per use
    boot = image_bootstrap_ap([predictions[k] for k in keys], ground_truth, setting, samples, seed)
    full = {k: evaluate(predictions[k], ground_truth, progress=False).ap[setting] for k in keys}
    column = {k: i for i, k in enumerate(keys)}
    out = []
    for spec_id in dict.fromkeys(k[0] for k in keys):
        seeds = sorted(s for sid, s in keys if sid == spec_id)
        for a, b in itertools.combinations(seeds, 2):
            d = boot[:, column[(spec_id, a)]] - boot[:, column[(spec_id, b)]]
            out.append({"spec_id": spec_id, "seed_a": a, "seed_b": b, "setting": setting,
                        "ap_a": float(full[(spec_id, a)]), "ap_b": float(full[(spec_id, b)]),
                        "diff": float(full[(spec_id, a)] - full[(spec_id, b)]),
                        "boot_sd": float(d.std(ddof=1)), "samples": samples})
    return out


def summary(table) -> dict[str, Any]:
    """Seed variance of one run's AP (E[d^2] / 2 over the rows), its val-set part
    (E[boot_sd^2] / 2) and their ratio; `table` a DataFrame of VAL_NOISE_COLUMNS."""
    seed_var = float((table["diff"] ** 2).mean() / 2)
    val_var = float((table["boot_sd"] ** 2).mean() / 2)
    return {"pairs": int(len(table)), "setting": str(table["setting"].iloc[0]),
            "seed_sd": float(np.sqrt(seed_var)), "val_set_sd": float(np.sqrt(val_var)),
            "val_set_share": val_var / seed_var if seed_var > 0 else float("nan")}
