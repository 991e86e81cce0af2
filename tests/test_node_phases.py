"""Single-model search phases on several local processes (DDP, gloo, CPU): with 2 processes x
2 images the BFBox supernet (SPOS) gives the weights of 1 process x 4 images over a whole run,
and ASFD's DARTS search takes the step (weights, architecture parameters, Adam state) of 1 x 4
from the same state; both resume exactly with another number of processes; hooks not made for
several processes are still refused in one line; a failed rank is one line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detectors import distributed  # noqa: E402
from detectors.checkpoint import load_checkpoint  # noqa: E402
from detectors.config import TrainConfig, recipe_from_dict  # noqa: E402
from detectors.errors import UserError  # noqa: E402
from detectors.train import TrainHooks, check_world  # noqa: E402
from nas.strategies import darts, spos  # noqa: E402
from nas.strategies.heldout import split_train  # noqa: E402
from search_spaces.asfd.supernet import SupernetConfig  # noqa: E402
from search_spaces.bfbox.space import BFBoxSpace  # noqa: E402
from test_asfd_search import BASE  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = BFBoxSpace(widths=(16, 16, 32, 32, 32, 16), stem_width=16, neck_channels=16,
                   head_channels=16, depths=(1, 1, 1, 1, 1, 1))
# batch 4 as 1 x 4 or 2 x 2; SyncBN: the BatchNorm statistics of the global batch either way
SPOS_RECIPE = {"train_size": 96, "batch_size": 4, "workers": 0, "seed": 3, "sync_bn": True,
               "schedule": {"unit": "iterations", "total": 4, "milestones": [3],
                            "warmup_iters": 1, "lr": 0.01},
               "assigner": {"type": "iou", "pos_iou": 0.35}, "augmentation": {"min_face": 4.0}}
DARTS_RECIPE = {"train_size": 64, "batch_size": 4, "workers": 0, "seed": 2, "sync_bn": True,
                "augmentation": {"crop_choices": [1.0]},
                "schedule": {"unit": "iterations", "total": 4, "milestones": [3],
                             "warmup_iters": 1, "lr": 0.01},
                "loss": {"type": "drmc", "margin": 0.2}, "assigner": {"type": "iou"}}
SUPERNET = SupernetConfig(nodes=2, partial=4, mode="hard")
# one architecture step, at the last of 4 iterations
SETTINGS = darts.DartsSettings(warmup_fraction=0.75, tau_start=5.0, tau_end=1.0, seed=1,
                               arch_lr=0.05)
OPTIONS = dict(fp32=True, progress=False, num_threads=1)


def _launch(nproc: int, fn, *args):
    # fork: the elastic agent of run_local (which spawns), without re-importing torch per rank
    return distributed.launch(nproc, distributed.free_port(), fn, *args, start_method="fork")[0]


def _assert_close_states(a: dict, b: dict, what: str) -> None:
    for key, tensor in a.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(b[key], tensor, rtol=1e-4, atol=1e-4, msg=f"{what}: {key}")


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["total"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from detectors.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "root", num_train=16, num_val=1,
                    image_size=128, progress=False)


def test_spos_two_processes_equal_one_and_resume_with_one(data, tmp_path):
    """1 x 4 images against 2 x 2 over 4 iterations (each a different uniform path), and a
    run of 2 processes stopped after 2 iterations, resumed with 1 process."""
    recipe = recipe_from_dict(SPOS_RECIPE)
    paths = {spos.path_of_iteration(SPACE, 5, i) for i in range(4)}
    assert len(paths) > 1  # the test covers a subgraph that changes between steps
    spos.train_supernet(SPACE, recipe, data, tmp_path / "one", seed=5, **OPTIONS)
    _launch(2, spos._train_rank, SPACE, recipe, str(data), str(tmp_path / "two"), 5, OPTIONS)
    _launch(2, spos._train_rank, SPACE, recipe, str(data), str(tmp_path / "mixed"), 5,
            {**OPTIONS, "max_iterations": 2})
    spos.train_supernet(SPACE, recipe, data, tmp_path / "mixed", seed=5, resume=True, **OPTIONS)
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    for run in ("two", "mixed"):
        state = load_checkpoint(tmp_path / run / "checkpoint.pt")
        assert state["iteration"] == 4
        _assert_close_states(one["model"], state["model"], run)
        assert _losses(tmp_path / run) == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    # the weights moved (the comparison is not between two untouched initialisations)
    torch.manual_seed(recipe.seed)  # the trainer seeds torch before building the model
    init = spos.build_supernet(SPACE).state_dict()
    assert any(not torch.allclose(one["model"][k], init[k]) for k in init if "stages" in k)


def _darts_config() -> TrainConfig:
    return TrainConfig(BASE, recipe_from_dict(DARTS_RECIPE))


def test_darts_step_of_two_processes_equals_one_and_resumes_across_n(data, tmp_path):
    """The bilevel search: 2 processes train 3 iterations (SGD only); from that checkpoint
    the 4th iteration (an SGD step, then the architecture step on the held-out batch) with 1
    process x 4 images and with 2 x 2 gives the same weights, architecture parameters, Adam
    state (its first moment is half the alphas' gradient: the averaged one over the ranks)
    and history. (Whole runs drift apart by more than 1e-4 after a few steps, even between 1
    and 2 threads of one process: the search amplifies float reduction-order noise, e.g. a
    ReLU or hard-negative ranking flipped by 1e-7; so the comparison starts each from the
    same state.)"""
    config = _darts_config()
    weights, held = split_train(data, tmp_path / "split", SETTINGS.seed)
    total = darts._total_iterations(config, weights)
    args = (config, str(weights), str(held))
    base = tmp_path / "base"
    _launch(2, darts._search_rank, *args, str(base), SUPERNET, SETTINGS, total,
            {**OPTIONS, "max_iterations": 3})
    assert not (base / darts.HISTORY).exists()  # warm-up: no architecture step yet
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(base, one)
    shutil.copytree(base, two)
    darts._search_rank(*args, str(one), SUPERNET, SETTINGS, total, {**OPTIONS, "resume": True})
    _launch(2, darts._search_rank, *args, str(two), SUPERNET, SETTINGS, total,
            {**OPTIONS, "resume": True})
    ref, state = (load_checkpoint(r / "checkpoint.pt") for r in (one, two))
    arch = [k for k in ref["model"] if "arch_" in k]
    assert ref["iteration"] == state["iteration"] == 4
    assert arch and ref["hooks"]["arch_steps"] == state["hooks"]["arch_steps"] == 1
    before = load_checkpoint(base / "checkpoint.pt")["model"]
    assert sum(not torch.equal(ref["model"][k], before[k]) for k in arch) >= len(arch) // 2
    _assert_close_states(ref["model"], state["model"], "two")
    assert torch.equal(state["hooks"]["generator"], ref["hooks"]["generator"])
    # within 1e-4 of the largest architecture gradient (some are ~1e-8: sums that cancel)
    moments = ref["hooks"]["adam"]["state"]
    scale = max(float(m["exp_avg"].abs().max()) for m in moments.values())
    for p, adam in moments.items():
        torch.testing.assert_close(state["hooks"]["adam"]["state"][p]["exp_avg"], adam["exp_avg"],
                                   rtol=1e-4, atol=1e-4 * scale)
    rows = [[json.loads(l) for l in (r / darts.HISTORY).read_text().splitlines()] for r in (one, two)]
    assert [r["arch_step"] for r in rows[1]] == [1]  # rank 0 alone wrote it, once
    assert rows[1][0]["arch_loss"] == pytest.approx(rows[0][0]["arch_loss"], rel=1e-4)
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4)
    assert darts.derive_from_checkpoint(two / "checkpoint.pt") == darts.derive_from_checkpoint(
        one / "checkpoint.pt")


def test_hooks_not_made_for_several_processes_are_refused():
    class OneProcessHooks(TrainHooks):
        pass

    recipe = recipe_from_dict(SPOS_RECIPE)
    with pytest.raises(UserError, match="OneProcessHooks trains in one process only"):
        check_world(recipe, 2, OneProcessHooks())
    check_world(recipe, 1, OneProcessHooks())
    check_world(recipe, 2, spos.SPOSHooks(SPACE))  # made for several
    assert darts.DartsHooks.distributed and darts.DartsHooks.dynamic_graph


def test_a_failed_rank_is_one_line():
    with pytest.raises(distributed.RanksFailed, match=r"^2-process training: rank 1 failed "
                                                      r"\(exit code 1\); the others were stopped$"):
        distributed.run_local(2, _fail_on_rank_1, start_method="fork")
    with pytest.raises(UserError, match="processes must be >= 1"):
        distributed.run_local(0, _fail_on_rank_1)


def _fail_on_rank_1() -> int:
    if distributed.env_world().rank == 1:
        raise SystemExit(1)
    return 0


def _raise_on_rank_1(kind: str) -> int:
    if distributed.env_world().rank == 1:
        if kind == "oom":  # what torch raises when a CUDA allocation fails
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise UserError("recipe.batch_size 6 (the global batch) does not divide into 2 process(es) "
                        "x recipe.grad_accumulation 2")
    return 0


def test_a_rank_s_bad_input_and_out_of_memory_come_back_as_such():
    """A rank's UserError is the job's one line (not 'rank 1 failed (exit code 1)'), and its
    CUDA out-of-memory error an OutOfMemoryError in the trial's process, which the driver's
    out-of-memory retry recognises (nas.trial.is_cuda_oom)."""
    from nas.trial import is_cuda_oom

    with pytest.raises(UserError, match=r"^recipe.batch_size 6 \(the global batch\) does not divide"):
        distributed.run_local(2, _raise_on_rank_1, "user", start_method="fork")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="^2-process training: CUDA out of memory: "
                                                          "CUDA out of memory. Tried") as caught:
        distributed.run_local(2, _raise_on_rank_1, "oom", start_method="fork")
    assert is_cuda_oom(caught.value)
