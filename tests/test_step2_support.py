"""Step 2 widens a step-1 range to min_range_width only when step 1's population is too small
to support it (fewer than min_support successful step-1 specs inside), records it in
plan/step2_narrow.csv and the analysis report says so."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.report import _step2_ranges_section
from detectors.spec import DetectorSpec
from experiments import MODELS_DIR
from nas.results import RunStore, cost_columns
from nas.strategies.two_step import NARROW_FILE, step2_ranges

QUANTITIES = ("ratio_stem", "ratio_c2")
STEM = [0.10, 0.11, 0.12, 0.13, 0.14, 0.30]  # five inside 0.10-0.14
C2 = [0.20, 0.51, 0.25, 0.30, 0.35, 0.40]  # one inside 0.50-0.52


def _store(tmp_path, statuses=("ok",) * 6) -> RunStore:
    store = RunStore(tmp_path)
    spec = DetectorSpec.from_yaml(MODELS_DIR / "scrfd_2.5g.yaml")
    for i, (stem, c2, status) in enumerate(zip(STEM, C2, statuses)):
        store.add_row({"spec_id": f"s{i}", "step": 1, "trial_id": f"t{i}", "seed": 0,
                       "spec_yaml": spec.to_yaml(), **cost_columns(spec), "ratio_stem": stem,
                       "ratio_c2": c2, "status": status, "error": "", "wall_time_s": 1.0,
                       "ap_easy": 0.5, "ap_medium": 0.5, "ap_hard": 0.1 * i})
    (tmp_path / "plan").mkdir(exist_ok=True)
    pd.DataFrame([{"quantity": "ratio_stem", "low": 0.10, "best": 0.12, "high": 0.14, "n_models": 6},
                  {"quantity": "ratio_c2", "low": 0.50, "best": 0.51, "high": 0.52, "n_models": 6}]
                 ).to_csv(tmp_path / "plan" / "step2_ranges.csv", index=False)
    return store


def test_only_unsupported_narrow_ranges_are_widened_and_recorded(tmp_path):
    store = _store(tmp_path)
    ranges = step2_ranges(store, 0, 0.06, QUANTITIES, min_support=5)
    assert ranges["ratio_stem"] == pytest.approx((0.10, 0.14))  # 5 specs inside: kept, 0.04 wide
    assert ranges["ratio_c2"] == pytest.approx((0.48, 0.54))  # 1 spec inside: widened to 0.06
    narrow = pd.read_csv(tmp_path / "plan" / NARROW_FILE)
    assert narrow["quantity"].tolist() == ["ratio_c2"]
    assert (int(narrow["support"][0]), int(narrow["min_support"][0])) == (1, 5)
    # the report says which ranges were widened and why
    (tmp_path / "plan" / "step2.yaml").write_text("[]\n")
    text = "\n".join(_step2_ranges_section(tmp_path))
    assert "too small to support" in text and "ratio_c2: 0.500–0.520, 1 specs inside -> 0.480–0.540" in text
    assert "ratio_stem" not in text
    # a population that supports both: nothing widened, and the record goes away
    kept = step2_ranges(store, 0, 0.06, QUANTITIES, min_support=1)
    assert kept["ratio_c2"] == pytest.approx((0.50, 0.52))
    assert not (tmp_path / "plan" / NARROW_FILE).exists()
    assert "too small" not in "\n".join(_step2_ranges_section(tmp_path))


def test_failed_step1_specs_do_not_support_a_range(tmp_path):
    store = _store(tmp_path, statuses=("ok", "failed", "ok", "ok", "ok", "ok"))
    ranges = step2_ranges(store, 0, 0.06, QUANTITIES, min_support=5)
    assert ranges["ratio_stem"] == pytest.approx((0.09, 0.15))  # 4 ok specs inside now
