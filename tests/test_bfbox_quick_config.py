"""experiments/bfbox_quick.yaml: the quick BFBox search's best path as a retraining config
(docs/learning-curves.md trains it). It is a path of the quick frame (the template of its own
path gives it back), inside the search's --gflops 2.5 band, costed as built, and its quick
budget is the search preset's quick retraining recipe at the learning curves' 320 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _cost_check import assert_cost_matches
from detectors.config import apply_budget, load_config
from nas.options import SearchOptions
from nas.search_config import resolve_config
from nas.spaces.bfbox import space_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_quick_searchs_best_path_retrains_as_exported():
    config = load_config(REPO / "experiments" / "bfbox_quick.yaml")
    assert config.spec.id == "81f9b63a2c23"  # the id the search exported and the docs cite
    search = resolve_config(SearchOptions(space="bfbox", gflops=2.5, budget="quick", max_failures=0))
    space = space_of(search)
    path = space.from_spec(config.spec)
    assert space.template(path).id == config.spec.id
    genes = space.encode(path)[None]
    assert space.in_band(genes, 2.5, search["tolerance"]).all()
    assert float(space.vga_gflops(genes)[0]) == pytest.approx(2.42, abs=0.01)
    assert_cost_matches(config.spec, (128, 128))
    quick = apply_budget(config, "quick").recipe
    retrain = search["retrain_recipe"]
    assert (quick.train_size, quick.batch_size, quick.schedule.lr) == (320, 8, retrain["schedule"]["lr"])
    assert quick.schedule.weight_decay == pytest.approx(5e-5) and quick.augmentation.min_face == 8.0
    assert quick.augmentation.data_anchor_sampling == 0.0 and quick.assigner.type == "iou"
    assert np.isclose(quick.assigner.pos_iou, 0.35)
