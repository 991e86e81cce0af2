"""The bilevel strategy through the one trainer: SGD leaves the architecture alone, Adam steps
start after the warm-up, a resumed search is exact, derive() writes a buildable spec."""

from __future__ import annotations

import json

import pytest
import torch

from _cost_check import assert_cost_matches
from detectors.checkpoint import load_checkpoint
from detectors.config import TrainConfig, recipe_from_dict
from detectors.errors import UserError
from detectors.spec import DetectorSpec
from nas.strategies.darts import HISTORY, DartsSettings, run_search
from nas.strategies.heldout import split_train
from search_spaces.asfd.supernet import SupernetConfig
from tests.test_asfd_search import BASE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = {"train_size": 64, "batch_size": 2, "workers": 0, "seed": 2,
          "augmentation": {"crop_choices": [1.0]},
          "schedule": {"unit": "iterations", "total": 6, "milestones": [5], "warmup_iters": 1},
          "loss": {"type": "drmc", "margin": 0.2}, "assigner": {"type": "iou"}}
SUPERNET = SupernetConfig(nodes=2, partial=4, mode="hard")
SETTINGS = DartsSettings(warmup_fraction=0.34, tau_start=5.0, tau_end=1.0, seed=1)


def _config() -> TrainConfig:
    return TrainConfig(BASE, recipe_from_dict(RECIPE))


def test_heldout_split_is_disjoint_and_complete(widerface_mini, tmp_path):
    from detectors.data.widerface import load_split

    a, b = split_train(widerface_mini, tmp_path, seed=0)
    ids = lambda r: {x.image_id for x in load_split(r, "train").records}  # noqa: E731
    full = ids(widerface_mini)
    assert ids(a) | ids(b) == full and not ids(a) & ids(b)
    assert abs(len(ids(a)) - len(ids(b))) <= 1
    boxes = {x.image_id: x.boxes for x in load_split(widerface_mini, "train").records}
    for r in load_split(b, "train").records:
        assert (r.boxes == boxes[r.image_id]).all()


def test_search_resume_is_exact_and_derives(widerface_mini, tmp_path):
    whole = run_search(_config(), widerface_mini, tmp_path / "a", SUPERNET, SETTINGS,
                       num_threads=1)
    run_search(_config(), widerface_mini, tmp_path / "b", SUPERNET, SETTINGS, num_threads=1,
               max_iterations=3)
    resumed = run_search(_config(), widerface_mini, tmp_path / "b", SUPERNET, SETTINGS,
                         num_threads=1, resume=True)
    ca, cb = (load_checkpoint(tmp_path / r / "checkpoint.pt") for r in ("a", "b"))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert ca["hooks"]["arch_steps"] == cb["hooks"]["arch_steps"] == 4  # iterations 3..6
    hist = [(tmp_path / r / HISTORY).read_text() for r in ("a", "b")]
    assert hist[0] == hist[1] and len(hist[0].splitlines()) == 4
    rows = [json.loads(l) for l in hist[0].splitlines()]
    assert [r["iteration"] for r in rows] == [3, 4, 5, 6]
    assert rows[0]["tau"] == pytest.approx(5.0 - 4.0 * 2 / 5)  # linear over 6 iterations
    assert whole == resumed
    assert DetectorSpec.from_yaml(tmp_path / "a" / "derived_spec.yaml") == whole
    assert (tmp_path / "a" / "architecture.png").stat().st_size > 0
    hw = (64, 64)
    assert_cost_matches(whole, hw)


def test_sgd_never_moves_the_architecture(widerface_mini, tmp_path):
    """Before the warm-up ends only SGD runs: every architecture parameter keeps its value."""
    settings = DartsSettings(warmup_fraction=0.99, seed=1)
    torch.manual_seed(RECIPE["seed"])
    run_search(_config(), widerface_mini, tmp_path / "w", SUPERNET, settings, num_threads=1,
               max_iterations=3)
    state = load_checkpoint(tmp_path / "w" / "checkpoint.pt")
    from search_spaces.asfd.supernet import build_supernet

    torch.manual_seed(RECIPE["seed"])  # the trainer seeds before building: the same init
    init = build_supernet(BASE, SUPERNET).state_dict()
    arch = [k for k in init if "arch_" in k]
    assert arch and all(torch.equal(state["model"][k], init[k]) for k in arch)
    assert not all(torch.equal(state["model"][k], init[k]) for k in init if "arch_" not in k)
    assert not (tmp_path / "w" / HISTORY).exists()


def _resolve(budget: str, seeds: int | None = None, seed: int = 0, gflops: float = 70.0) -> dict:
    from nas.options import SearchOptions
    from nas.search_config import resolve_config

    return resolve_config(SearchOptions(space="asfd", budget=budget, seed=seed, gflops=gflops,
                                        space_options={"seeds": seeds}))


def test_one_planned_search_per_seed():
    from nas.spaces.asfd import seed_of, seed_specs

    cfg = _resolve("smoke", seeds=3, seed=5)
    specs = seed_specs(cfg)
    assert [seed_of(s) for s in specs] == [5, 6, 7] and len({s.id for s in specs}) == 3
    assert all(s.neck.in_levels == (2, 3, 4, 5, 6, 7) for s in specs)
    assert _resolve("paper", gflops=70)["base"] == {"backbone": "resnet50", "channels": 256,
                                                    "head_convs": 2}  # the paper's supernet


def test_preset_errors():
    with pytest.raises(UserError, match="unknown budget 'huge'; valid: smoke, quick, paper"):
        _resolve("huge")
    with pytest.raises(UserError, match="--seeds must be an integer >= 1"):
        _resolve("smoke", seeds=0)
