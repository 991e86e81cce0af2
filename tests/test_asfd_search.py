"""The ASFD supernet: hard-path sampling runs only the sampled edges, gradients reach every
architecture parameter with Eq. 5's factor, derive() is deterministic and costs exactly."""

from __future__ import annotations

import pytest
import torch

from _cost_check import assert_cost_matches
from detectors.asfd.autofem import AutoFEMOptions, cell_leaves
from detectors.asfd.ops import S_CPM, S_FPN
from detectors.checkpoint import save_checkpoint
from detectors.errors import UserError
from detectors.model import build
from search_spaces.asfd.supernet import (SupernetConfig, arch_parameters, build_supernet, derive,
                                derive_from_checkpoint, derive_options, weight_parameters)
from search_spaces.asfd.cells import SearchCell, channel_shuffle, gumbel_hard
from tests.test_asfd_ops import autofem_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = autofem_spec(AutoFEMOptions(((("conv1x1", "conv1x1", None)), ("conv1x1", None, "conv1x1"))),
                    levels=(4, 5), channels=16)


def _count_edge_calls(cell: SearchCell) -> list[int]:
    calls = [0] * len(cell.edges)
    for e, edge in enumerate(cell.edges):
        edge.register_forward_hook(lambda m, i, o, e=e: calls.__setitem__(e, calls[e] + 1))
    return calls


def test_hard_mode_runs_only_the_sampled_edges():
    torch.manual_seed(0)
    cell = SearchCell(16, nodes=6, mode="hard", partial=4)
    cell.tau = 5.0
    op_calls = [0]
    for edge in cell.edges:
        for op in edge.ops:
            op.register_forward_hook(lambda *a: op_calls.__setitem__(0, op_calls[0] + 1))
    calls = _count_edge_calls(cell)
    seen_inputs = set()
    for _ in range(5):
        calls[:] = [0] * len(calls)
        cell(torch.randn(1, 16, 8, 8))
        want = [0] * len(calls)
        for j, i in enumerate(cell.sampled, start=1):
            assert 0 <= i < j  # one predecessor per node: a tree rooted at node 0
            want[SearchCell.edge_index(i, j)] = 1
        assert calls == want
        seen_inputs.update(enumerate(cell.sampled))
    assert op_calls[0] == 5 * 6 * len(S_CPM)  # each sampled edge's mixed op runs all its ops
    assert len(seen_inputs) > 6  # the samples vary


def test_pcdarts_and_darts_modes_run_every_edge():
    for mode in ("pcdarts", "darts"):
        cell = SearchCell(8, nodes=3, mode=mode, partial=4)
        calls = _count_edge_calls(cell)
        cell(torch.randn(1, 8, 5, 5))
        assert calls == [1] * 6
    assert SearchCell(8, 3, "darts", partial=4).edges[0].partial == 1  # DARTS: all channels
    assert SearchCell(8, 3, "pcdarts", partial=4).edges[0].width == 2


def test_hard_forward_is_the_plain_tree():
    """Forward weights are exactly one: the output equals the sampled tree without weights."""
    torch.manual_seed(1)
    cell = SearchCell(8, nodes=4, mode="hard", partial=2).eval()
    x = torch.randn(2, 8, 6, 6)
    out = cell(x)
    xs = [x]
    for j, i in enumerate(cell.sampled, start=1):
        xs.append(cell._edge(i, j, xs[i]))
    leaves = cell_leaves(cell.sampled)
    assert torch.allclose(out, cell._output([xs[j] for j in leaves], leaves), atol=0, rtol=0)


def test_gumbel_hard_sample_and_gradient_factor():
    logits = torch.tensor([0.3, -0.2, 0.9], requires_grad=True)
    g = torch.Generator().manual_seed(3)
    w, i = gumbel_hard(logits, tau=0.7, scale=3.0, generator=g)
    assert w.tolist() == [1.0 if k == i else 0.0 for k in range(3)]
    w[i].backward()
    # d soft_i / d logits = soft_i (delta_ik - soft_k) / tau with the same Gumbel draw, x 3
    u = torch.rand(3, generator=torch.Generator().manual_seed(3)).clamp_(1e-10, 1.0)
    soft = torch.softmax((logits.detach() - torch.log(-torch.log(u))) / 0.7, 0)
    want = 3.0 * soft[i] * (torch.eye(3)[i] - soft) / 0.7
    assert torch.allclose(logits.grad, want, atol=1e-6)


def test_cpm_gradients_carry_the_candidate_count():
    grads = {}
    for scaled in (True, False):
        torch.manual_seed(4)
        cell = SearchCell(8, nodes=5, mode="hard", partial=2, gradient_scale=scaled)
        cell.generator = torch.Generator().manual_seed(7)
        cell(torch.randn(1, 8, 6, 6)).square().mean().backward()
        grads[scaled] = [g.grad.clone() for g in cell.arch_gamma]
        sampled = cell.sampled
    for j in range(1, 6):
        if j == 1:  # one candidate: softmax of one logit is constant, no gradient to scale
            assert grads[True][0].abs().max() == 0
            continue
        assert grads[False][j - 1].abs().max() > 0
        assert torch.allclose(grads[True][j - 1], j * grads[False][j - 1], rtol=1e-5, atol=0)
    assert sampled  # the two runs drew the same sample (same generator seed)


def _backward(model, hw=(64, 64)):
    out = model(torch.randn(2, 3, *hw))
    loss = sum(x.square().mean() for x in out.cls_logits + out.box_dists)
    loss = loss + sum(x.square().mean() for a in out.aux for x in a.cls_logits)
    loss.backward()


def test_every_architecture_parameter_gets_a_gradient():
    torch.manual_seed(5)
    model = build_supernet(BASE, SupernetConfig(nodes=3, partial=4, mode="pcdarts"))
    _backward(model)
    params = dict(model.named_parameters())
    arch = {n for n, p in params.items() if p in set(arch_parameters(model))}
    assert len(arch) == 3 + 1 + 2 * (1 + 3)  # fpn alpha x3 paths, beta, per cell alpha + 3 gammas
    for name in arch:
        g = params[name].grad
        if name.endswith("arch_gamma.0"):  # node 1 has a single candidate input
            continue
        if name.endswith("arch_beta"):  # each level's absent path is masked out
            assert (g != 0).sum() == 2 * 2
            continue
        if "fpn.arch_alpha" in name:  # the rows of levels without this path stay 0
            assert (g.abs().sum(1) > 0).sum() == (2 if name.endswith("same") else 1)
            continue
        assert g is not None and (g != 0).all(), name
    assert len(weight_parameters(model)) + len(arch) == len(params)


def test_hard_mode_gradients_reach_sampled_edges_only():
    torch.manual_seed(6)
    model = build_supernet(BASE, SupernetConfig(nodes=4, partial=4, mode="hard"))
    _backward(model)
    for cell in model.neck.cells:
        rows = (cell.arch_alpha.grad.abs().sum(1) > 0).tolist()
        want = [False] * len(rows)
        for j, i in enumerate(cell.sampled, start=1):
            want[SearchCell.edge_index(i, j)] = True
        assert rows == want
        assert all((g.grad != 0).all() for g in cell.arch_gamma[1:])


def test_derive_is_deterministic_and_its_spec_costs_exactly():
    torch.manual_seed(8)
    model = build_supernet(BASE, SupernetConfig(nodes=4, partial=4))
    with torch.no_grad():
        for p in arch_parameters(model):
            p.normal_()
    spec = derive(model, BASE, name="derived")
    assert derive(model, BASE, name="derived") == spec and spec.neck.type == "autofem"
    fpn = model.neck.fpn
    assert spec.neck.options.fpn[1][0] == S_FPN[int(fpn.arch_alpha["same"][1].argmax())]
    cell = model.neck.cells[0]
    i = int(cell.arch_gamma[3].argmax())
    assert spec.neck.options.cpm[0][3] == (i, S_CPM[int(cell.arch_alpha[
        SearchCell.edge_index(i, 4)].argmax())])
    derived = build(spec)
    hw = (61, 70)
    assert_cost_matches(derived, hw)


def test_derive_ties_go_to_the_first_candidate():
    model = build_supernet(BASE, SupernetConfig(nodes=2, partial=4))
    with torch.no_grad():
        for p in arch_parameters(model):
            p.zero_()
    opts = derive_options(model)
    assert opts.fpn == (("conv1x1", "conv1x1", None), ("conv1x1", None, "conv1x1"))
    assert opts.cpm == (((0, "conv1x1"), (0, "conv1x1")),) * 2


def test_channel_shuffle_interleaves():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="at least 1 intermediate node"):
        SearchCell(8, nodes=0)
    with pytest.raises(UserError, match="nodes must be an integer >= 1"):
        SupernetConfig(nodes=0)
    with pytest.raises(UserError, match="mode 'gdas' is not one of hard, pcdarts, darts"):
        SupernetConfig(mode="gdas")
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "hooks_identity": {"space": "bfbox"}})
    with pytest.raises(UserError, match="is a checkpoint of bfbox, not of the asfd space"):
        derive_from_checkpoint(path)
    save_checkpoint(path, {"model": {}})
    with pytest.raises(UserError, match="plain training run"):
        derive_from_checkpoint(path)
