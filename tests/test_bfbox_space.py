"""The BFBox space: paths <-> specs, exact cost tables, FLOPs-band sampling; the supernet
computes for a path exactly what that path's standalone model computes with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _cost_check import assert_cost_matches
from detectors.cost import vga_gflops
from detectors.errors import UserError
from detectors.model import build
from detectors.spec import DetectorSpec
from search_spaces.bfbox.space import BFBoxSpace
from search_spaces.bfbox.supernet import build_supernet

SMALL = dict(widths=(32, 32, 64, 64, 64, 32), stem_width=16, neck_channels=16, head_channels=16)
TINY = BFBoxSpace(depths=(2, 2, 1, 1, 1, 1), **SMALL)


def test_choices_follow_fig2_and_fdb():
    space = BFBoxSpace()
    shallow, deep = space.layer_choices()[0], space.layer_choices()[-1]
    assert len(shallow) == 4 + 4 + 2 + 2 and "bf_conv9" in shallow and "bf_dense3x16" in shallow
    assert len(deep) == 3 + 3 + 2 and "bf_conv9" not in deep and not any("dense" in n for n in deep)
    assert len(BFBoxSpace(fdb=3).layer_choices()[0]) == 10
    assert BFBoxSpace(fdb=6).layer_choices()[0][-2:] == ("basic", "depthwise")
    # merge k may read every lateral but its own and every earlier merge output
    assert space.merge_inputs(0) == (1, 2, 3, 4, 5) and space.merge_inputs(4) == (0, 1, 2, 3, 5, 6, 7, 8, 9)


@pytest.mark.parametrize("space", [BFBoxSpace(), BFBoxSpace(fdb=6, depths=(1, 3, 1, 2, 1, 1), **SMALL),
                                   BFBoxSpace(attention=False, merges=3, shallow_stages=3, **SMALL)])
def test_gene_table_equals_spec_cost_and_round_trips(space):
    rng = np.random.default_rng(0)
    for genes in space.random_genes(rng, 8):
        path = space.decode(genes)
        spec = space.template(path)
        assert DetectorSpec.from_yaml(spec.to_yaml()) == spec
        assert DetectorSpec.from_yaml(spec.to_yaml()).id == spec.id
        assert space.from_spec(spec) == path and list(space.encode(path)) == list(genes)
        assert space.vga_gflops(genes)[0] == pytest.approx(vga_gflops(spec), rel=1e-12)


def test_range_is_attained_by_the_cheapest_and_dearest_paths():
    space = BFBoxSpace(**SMALL)
    fixed, tables = space._macs_tables
    lo_path = space.decode([int(t.argmin()) for t in tables])
    hi_path = space.decode([int(t.argmax()) for t in tables])
    lo, hi = space.gflops_range()
    assert vga_gflops(space.template(lo_path)) == pytest.approx(lo, rel=1e-12)
    assert vga_gflops(space.template(hi_path)) == pytest.approx(hi, rel=1e-12)
    genes = space.random_genes(np.random.default_rng(1), 2000)
    g = space.vga_gflops(genes)
    assert lo <= g.min() and g.max() <= hi


def test_path_cost_equals_hook_count(one_torch_thread):
    path = TINY.sample_uniform(np.random.default_rng(3))
    spec = TINY.template(path)
    assert_cost_matches(spec, (96, 96))


def test_band_sampling_meets_the_band_and_is_distinct():
    space = BFBoxSpace(**SMALL)
    lo, hi = space.gflops_range()
    target = (lo + hi) / 2
    genes = space.sample(40, np.random.default_rng(0), gflops=target, tolerance=0.03)
    assert len({tuple(r) for r in genes}) == 40
    for row in genes:
        g = vga_gflops(space.template(space.decode(row)))
        assert target * 0.97 <= g <= target * 1.03


def test_infeasible_band_names_the_space_range():
    space = BFBoxSpace(**SMALL)
    lo, hi = space.gflops_range()
    for bad in (lo / 2, hi * 2):
        with pytest.raises(UserError, match=f"spans {lo:.3f} to {hi:.3f}"):
            space.sample(1, np.random.default_rng(0), gflops=bad)


def test_from_spec_rejects_specs_of_another_space():
    spec = BFBoxSpace(**SMALL).template(BFBoxSpace(**SMALL).default_path())
    with pytest.raises(UserError, match="differs"):
        BFBoxSpace(**{**SMALL, "neck_channels": 24}).from_spec(spec)
    with pytest.raises(UserError, match="not one of"):
        BFBoxSpace(**SMALL, fdb=1).from_spec(BFBoxSpace(**SMALL).template(
            BFBoxSpace(**SMALL).decode([11] + [0] * 19)))


def _perturb(net) -> None:
    """Non-trivial BN statistics and attention, so equality is not an accident of init."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
        if net.space.attention:
            net.neck.attn_theta.normal_()
            net.neck.attn_cond.normal_()


@pytest.mark.parametrize("attention, head", [(True, {}), (False, {}),
                                             # the paper budget's head: RetinaNet's towers
                                             (True, {"head_type": "retinanet", "head_convs": 2})])
def test_supernet_path_equals_standalone_model(attention, head, one_torch_thread):
    from dataclasses import replace

    torch.manual_seed(0)
    space = replace(TINY, attention=attention, **head)
    net = build_supernet(space)
    _perturb(net)
    rng = np.random.default_rng(1)
    x = torch.randn(2, 3, 64, 80)
    for mode in ("eval", "train"):
        for _ in range(2):
            path = space.sample_uniform(rng)
            net.path = path
            standalone = build(space.template(path))
            standalone.load_state_dict(net.path_state_dict(path))  # strict: every name maps
            getattr(net, mode)(), getattr(standalone, mode)()
            a, b = net(x), standalone(x)
            for u, v in zip(a.cls_logits + a.box_dists, b.cls_logits + b.box_dists):
                assert torch.equal(u, v)


def test_supernet_step_trains_only_the_path(one_torch_thread):
    """A path's backward reaches exactly its own blocks, RF modules, laterals, head and the
    attention; the other choices get no gradient (so SGD leaves them untouched)."""
    from search_spaces.bfbox.supernet import _standalone_name

    torch.manual_seed(0)
    net = build_supernet(TINY)
    path = TINY.sample_uniform(np.random.default_rng(5))
    net.path = path
    out = net(torch.randn(2, 3, 64, 64))
    sum((x * torch.randn_like(x)).sum() for x in out.cls_logits + out.box_dists).backward()
    on_path = 0
    for name, p in net.named_parameters():
        if name.startswith("neck.attn"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif _standalone_name(name, path) is None:
            assert p.grad is None, name
        else:
            on_path += 1
            assert p.grad is not None, name
    assert on_path == len([k for k in build(TINY.template(path)).state_dict()
                           if "running" not in k and "num_batches" not in k and "merge" not in k])
