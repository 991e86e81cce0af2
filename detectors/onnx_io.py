"""Published ONNX weights into a rebuilt model, and our models out to ONNX.

Import (`import_onnx_weights`): the published SCRFD exports have BatchNorm folded into the
preceding convolutions (conv weight W' = W * gamma / sigma, bias b' = beta - mu * gamma /
sigma). Loading W' into a conv followed by a BN in eval mode is exact when that BN is set to
the identity plus a shift: weight 1, running_mean 0, running_var 1 - eps (so var + eps == 1)
and bias b'. Convs without a BN take b' as their own bias.

Layers are matched by graph structure, not by names: the ONNX Conv nodes in graph order
(a topological order of the exported forward pass) against our model's Conv2d modules in the
order a forward pass calls them, each pair checked for weight shape, stride, padding,
dilation and groups. A weight is taken from whatever initialiser the Conv node reads, so the
exporter's shared bias (SCRFD's PAFPN `downsample_convs.1` reads `fpn_convs.2`'s bias
tensor) lands in both convs, as in the ONNX graph. The remaining float initialisers must be
the per-stride box scales (scalar `Mul` inputs), matched in graph order to the model's
remaining scalar parameters. Every float initialiser must be used and every model tensor set,
otherwise a UserError names the first mismatch.

Export (`export_onnx`): see that function's docstring for the two output layouts.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detectors.errors import UserError

__all__ = ["OnnxConv", "read_onnx_convs", "import_onnx_weights", "verify_import", "export_onnx",
           "RawExport", "DecodedExport", "VERIFY_TOLERANCE", "check_export"]


@dataclass
class OnnxConv:
    """One Conv node of an ONNX graph: its weight (O, I/g, kh, kw), bias (O,) or None, and
    the names of the initialisers they came from."""

    node: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    used: tuple[str, ...]

    def describe(self) -> str:
        return (f"weight {tuple(self.weight.shape)} stride {self.stride} padding {self.padding}"
                f"{'' if self.groups == 1 else f' groups {self.groups}'}")


def _load_onnx(path: str | os.PathLike) -> Any:
    import onnx  # heavy; only when importing

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others for a non-ONNX file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not an ONNX model ({first})") from None


def _symmetric_pads(pads: list[int], node: str, path: Path) -> tuple[int, ...]:
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise UserError(f"{path}: conv {node} has asymmetric padding {pads}, which a Conv2d "
                        "cannot express")
    return tuple(pads[:half])


def _resolve_aliases(graph: Any, inits: dict[str, np.ndarray]) -> tuple[dict, dict[str, str]]:
    """Exporters alias shared or duplicate tensors through Identity nodes and emit Constant
    nodes: map every such name to its numbers, and to the initialiser that holds them."""
    from onnx import numpy_helper

    inits = dict(inits)
    source = {n: n for n in inits}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in source:
            source[node.output[0]] = source[node.input[0]]
        elif node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            source[node.output[0]] = node.output[0]
    return {alias: inits[real] for alias, real in source.items()}, source


def read_onnx_convs(path: str | os.PathLike) -> tuple[list[OnnxConv], list[tuple[str, float]], set[str]]:
    """Read an ONNX graph's convolutions (graph order), scalar Mul constants (graph order) and
    the names of all float initialisers (what an import must use up)."""
    from onnx import helper, numpy_helper

    model = _load_onnx(path)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # Empty float tensors are Resize roi/scales placeholders, not weights.
    floats = {n for n, a in inits.items() if a.dtype.kind == "f" and a.size > 0}
    inits, source = _resolve_aliases(graph, inits)
    convs, scales = [], []
    for node in graph.node:
        if node.op_type == "Conv":
            if node.input[1] not in inits:
                raise UserError(f"{path}: conv {node.name} reads its weight from a graph input, "
                                "not an initialiser; cannot import it")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            weight = inits[node.input[1]]
            spatial = weight.ndim - 2
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            convs.append(OnnxConv(
                node=node.name or f"Conv#{len(convs)}", weight=weight,
                bias=None if bias_name is None else inits[bias_name],
                stride=tuple(attrs.get("strides", [1] * spatial)),
                padding=_symmetric_pads(list(attrs.get("pads", [0] * 2 * spatial)), node.name, Path(path)),
                dilation=tuple(attrs.get("dilations", [1] * spatial)),
                groups=int(attrs.get("group", 1)),
                used=tuple(source[n] for n in (node.input[1], bias_name) if n)))
        elif node.op_type == "Mul":
            for name in node.input:
                if name in source and source[name] in floats and inits[name].size == 1:
                    scales.append((source[name], float(inits[name].reshape(-1)[0])))
    return convs, scales, floats


@dataclass
class _Layer:
    """A Conv2d of our model and the BatchNorm2d that consumes its output directly (if any)."""

    name: str
    conv: nn.Conv2d
    bn_name: str | None
    bn: nn.BatchNorm2d | None

    def describe(self) -> str:
        c = self.conv
        return (f"weight {tuple(c.weight.shape)} stride {tuple(c.stride)} padding {c.padding}"
                f"{'' if c.groups == 1 else f' groups {c.groups}'}")


def _trace_layers(model: nn.Module, size: int = 64) -> tuple[list[_Layer], list[str]]:
    """Our convs in forward-call order (each with the BN fed by its output), and the names of
    scalar parameters owned directly by called modules (the per-stride scales), in call order."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, Any, Any]] = []  # keeps tensors alive, so ids stay unique
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp, out)))
             for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    layers: list[_Layer] = []
    by_output: dict[int, _Layer] = {}
    seen: set[nn.Module] = set()
    scale_names: list[str] = []
    for mod, inp, out in calls:
        if mod in seen:
            continue
        seen.add(mod)
        if isinstance(mod, nn.Conv2d):
            layers.append(_Layer(names[mod], mod, None, None))
            by_output[id(out)] = layers[-1]
        elif isinstance(mod, nn.BatchNorm2d) and inp and id(inp[0]) in by_output:
            layer = by_output.pop(id(inp[0]))
            layer.bn_name, layer.bn = names[mod], mod
        elif not isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)):
            prefix = names[mod] + "." if names[mod] else ""
            scale_names += [prefix + n for n, p in mod.named_parameters(recurse=False) if p.numel() == 1]
    return layers, scale_names


def _check_fit(i: int, total: int, oc: OnnxConv, layer: _Layer, where: str) -> None:
    c = layer.conv
    fits = (tuple(c.weight.shape) == oc.weight.shape and tuple(c.stride) == oc.stride
            and tuple(c.padding) == oc.padding and tuple(c.dilation) == oc.dilation
            and c.groups == oc.groups)
    if fits and oc.bias is not None and c.bias is None and layer.bn is None:
        raise UserError(f"{where}: conv {i + 1} of {total} (ONNX node {oc.node}) has a bias but "
                        f"model layer {layer.name} has neither a bias nor a BatchNorm")
    if not fits:
        raise UserError(f"{where}: conv {i + 1} of {total} does not fit: ONNX node {oc.node} "
                        f"{oc.describe()} vs model layer {layer.name} {layer.describe()}")


def _layer_state(oc: OnnxConv, layer: _Layer) -> dict[str, torch.Tensor]:
    """State-dict entries for one conv (+BN) from one ONNX conv with BN folded in."""
    weight = torch.from_numpy(oc.weight.copy())
    bias = torch.zeros(weight.shape[0]) if oc.bias is None else torch.from_numpy(oc.bias.copy())
    state = {f"{layer.name}.weight": weight}
    if layer.bn is None:
        state[f"{layer.name}.bias"] = bias
        return state
    if layer.conv.bias is not None:
        state[f"{layer.name}.bias"] = torch.zeros_like(bias)
    # BN as identity plus shift: (y - 0) / sqrt((1 - eps) + eps) * 1 + b == y + b.
    bn = layer.bn
    state.update({f"{layer.bn_name}.weight": torch.ones_like(bias),
                  f"{layer.bn_name}.bias": bias,
                  f"{layer.bn_name}.running_mean": torch.zeros_like(bias),
                  f"{layer.bn_name}.running_var": torch.full_like(bias, 1.0 - bn.eps)})
    return state


def _check_counts(convs: list[OnnxConv], layers: list[_Layer], scales: list, scale_names: list[str],
                  where: str) -> None:
    if len(convs) != len(layers):
        extra = (f"first extra ONNX conv {convs[len(layers)].node} {convs[len(layers)].describe()}"
                 if len(convs) > len(layers) else
                 f"first extra model layer {layers[len(convs)].name} {layers[len(convs)].describe()}")
        raise UserError(f"{where}: the ONNX graph has {len(convs)} convolutions, the model "
                        f"{len(layers)} ({extra})")
    if len(scales) != len(scale_names):
        raise UserError(f"{where}: the ONNX graph has {len(scales)} scalar scales "
                        f"({', '.join(n for n, _ in scales) or 'none'}), the model "
                        f"{len(scale_names)} ({', '.join(scale_names) or 'none'})")


def import_onnx_weights(model: nn.Module, onnx_path: str | os.PathLike) -> dict[str, int]:
    """Load the weights of a (BN-folded) ONNX detector into `model`, in place.

    Raises UserError naming the first conv that does not fit (shapes, stride, padding), a
    count mismatch, an unused ONNX initialiser or a model tensor left unset. The model is only
    changed when everything fits. Returns counts: {"convs", "batchnorms", "scales"}.
    """
    where = f"ONNX {onnx_path} does not fit this spec"
    convs, scales, floats = read_onnx_convs(onnx_path)
    spec = getattr(model, "spec", None)
    # a traced input large enough for at least a 2x2 map at the coarsest stride
    layers, scale_names = _trace_layers(model, max(64, 2 * max(spec.anchors.strides)) if spec else 64)
    for i, (oc, layer) in enumerate(zip(convs, layers)):
        _check_fit(i, len(convs), oc, layer, where)
    _check_counts(convs, layers, scales, scale_names, where)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for oc, layer in zip(convs, layers):
        state.update(_layer_state(oc, layer))
        used.update(oc.used)
    current = model.state_dict()
    for (onnx_name, value), name in zip(scales, scale_names):
        state[name] = torch.full_like(current[name], value)
        used.add(onnx_name)
    unused = sorted(floats - used)
    if unused:
        raise UserError(f"{where}: {len(unused)} ONNX initialisers are not used by any layer "
                        f"(first: {unused[0]})")
    unset = [k for k in current if k not in state and not k.endswith("num_batches_tracked")]
    if unset:
        raise UserError(f"{where}: {len(unset)} model tensors have no ONNX counterpart "
                        f"(first: {unset[0]})")
    for key, value in state.items():
        state[key] = value.to(current[key].dtype).reshape(current[key].shape)
    model.load_state_dict({**current, **state}, strict=True)
    return {"convs": len(layers), "batchnorms": sum(l.bn is not None for l in layers),
            "scales": len(scale_names)}


# Beyond float32 noise (observed ~1e-5 on SCRFD-2.5GF): the graphs compute different things.
VERIFY_TOLERANCE = 1e-3


def verify_import(model: nn.Module, onnx_path: str | os.PathLike, seed: int = 0) -> dict[str, float]:
    """Run `model` and onnxruntime on one seeded N(0, 1) input of the ONNX input's shape
    (free dims: batch 1, 640) and return {output name: max abs difference} for the raw
    outputs score_s (vs sigmoid of our logits), bbox_s, kps_s ({} if the file has none of
    them, e.g. a decoded export). A difference above
    VERIFY_TOLERANCE raises UserError: the convs fit but the graph between them differs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    spec_in = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 640)
            for i, d in enumerate(spec_in.shape)]
    x = torch.randn(*dims, generator=torch.Generator().manual_seed(seed))
    ref = dict(zip([o.name for o in session.get_outputs()], session.run(None, {spec_in.name: x.numpy()})))
    strides = _strides_of(model)
    was_training = model.training
    with torch.no_grad():
        cls, box, kps = _head_outputs(model.eval(), x)
    model.train(was_training)
    ours = {f"score_{s}": torch.sigmoid(c) for s, c in zip(strides, cls)}
    ours.update({f"bbox_{s}": b for s, b in zip(strides, box)})
    ours.update({f"kps_{s}": k for s, k in zip(strides, kps or [])})
    if not set(ours) & set(ref):
        return {}  # not the raw layout (e.g. our decoded export): nothing comparable
    diffs = {}
    for name, value in ours.items():
        if name not in ref:
            raise UserError(f"{onnx_path}: no output {name!r} to compare (outputs: {sorted(ref)})")
        if tuple(ref[name].shape) != tuple(value.shape):
            raise UserError(f"{onnx_path}: output {name} has shape {tuple(ref[name].shape)}, the "
                            f"model gives {tuple(value.shape)}")
        diffs[name] = float((torch.from_numpy(ref[name]) - value).abs().max())
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > VERIFY_TOLERANCE:
        raise UserError(f"{onnx_path}: the weights fit but the outputs differ (max |diff| "
                        f"{diffs[worst]:.3g} on {worst}): the ONNX graph is not this spec's architecture")
    return diffs


def _head_outputs(model: nn.Module, images: torch.Tensor) -> tuple[list, list, list | None]:
    """(cls_logits, box_dists, kps_offsets) per level from a model returning HeadOutputs."""
    out = model(images)
    kps = out.kps_offsets
    if kps is not None and any(k is None for k in kps):
        kps = None
    return list(out.cls_logits), list(out.box_dists), None if kps is None else list(kps)


class RawExport(nn.Module):
    """Raw outputs in the published SCRFD layout, per stride level s (rows y, x, anchor):
    `score_s` (N, R_s, 1) sigmoid scores, `bbox_s` (N, R_s, 4) distances (l, t, r, b) in units
    of s, `kps_s` (N, R_s, 10) keypoint offsets in units of s (only for keypoint specs)."""

    def __init__(self, model: nn.Module, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.strides = model, tuple(strides)

    def output_names(self, has_kps: bool) -> list[str]:
        kinds = ("score", "bbox", "kps") if has_kps else ("score", "bbox")
        return [f"{k}_{s}" for k in kinds for s in self.strides]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls, box, kps = _head_outputs(self.model, images)
        return (*[torch.sigmoid(c) for c in cls], *box, *(kps or []))


class DecodedExport(nn.Module):
    """Decoded candidates before NMS, all levels concatenated (K = sum of R_s):
    `boxes` (N, K, 4) xyxy in input pixels, `scores` (N, K) sigmoid scores, `keypoints`
    (N, K, 5, 2) (x, y) input pixels (only for keypoint specs). The anchor point of cell
    (y, x) at stride s is (x*s, y*s). H and W must be multiples of the largest stride."""

    def __init__(self, model: nn.Module, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.strides = model, tuple(strides)

    def output_names(self, has_kps: bool) -> list[str]:
        return ["boxes", "scores", "keypoints"] if has_kps else ["boxes", "scores"]

    def _centres(self, stride: int, height: int, width: int, anchors: int) -> torch.Tensor:
        ys = torch.arange(height, dtype=torch.float32) * stride
        xs = torch.arange(width, dtype=torch.float32) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2)  # (H*W, 1, 2), y-major
        return centres.expand(-1, anchors, 2).reshape(-1, 2)  # rows (y, x, a)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls, box, kps = _head_outputs(self.model, images)
        boxes, scores, points = [], [], []
        for level, stride in enumerate(self.strides):
            height, width = images.shape[2] // stride, images.shape[3] // stride
            anchors = cls[level].shape[1] // (height * width)
            centres = self._centres(stride, height, width, anchors)  # (R, 2)
            dist = box[level] * stride
            boxes.append(torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], dim=-1))
            scores.append(torch.sigmoid(cls[level][..., 0]))
            if kps is not None:
                offsets = kps[level].reshape(kps[level].shape[0], -1, 5, 2)
                points.append(centres[:, None, :] + offsets * stride)
        outputs = [torch.cat(boxes, 1), torch.cat(scores, 1)]
        return tuple(outputs + ([torch.cat(points, 1)] if points else []))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _strides_of(model: nn.Module) -> tuple[int, ...]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model has no .spec; pass strides= explicitly")
    return tuple(spec.anchors.strides)


def export_onnx(model: nn.Module, path: str | os.PathLike, decoded: bool = False,
                dynamic: bool = True, size: int = 640, strides: tuple[int, ...] | None = None,
                opset: int = 17) -> Path:
    """Export a detector to ONNX, atomically (temporary file + os.replace).

    Input `input` (N, 3, H, W) float32 normalised RGB ((pixel - 127.5) / 128); with `dynamic`
    N, H and W are free (H, W multiples of the largest stride), else fixed to (1, 3, size,
    size). `decoded=False` writes the raw per-stride layout of `RawExport` (like the
    published SCRFD files), `decoded=True` the pre-NMS pixel boxes of `DecodedExport`.
    Returns the final path.
    """
    import onnx

    strides = tuple(strides) if strides is not None else _strides_of(model)
    if size % max(strides):
        raise UserError(f"export size {size} must be a multiple of the largest stride {max(strides)}")
    wrapper = (DecodedExport if decoded else RawExport)(model, strides).eval()
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        has_kps = _head_outputs(model.eval(), example)[2] is not None
    names = wrapper.output_names(has_kps)
    axes = None
    if dynamic:
        axes = {"input": {0: "batch", 2: "height", 3: "width"}}
        axes.update({n: {0: "batch", 1: "candidates"} for n in names})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo=True, which needs
            # onnxscript (not a dependency); it still exports these graphs exactly.
            warnings.simplefilter("ignore")
            # (torch < 2.5 has no `dynamo` argument and always uses the TorchScript exporter)
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(wrapper, (example,), tmp, input_names=["input"], output_names=names,
                              dynamic_axes=axes, opset_version=opset, **legacy)
        onnx.checker.check_model(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_export(model: nn.Module, path: str | os.PathLike, decoded: bool, size: int = 640,
                 batch: int = 1, seed: int = 0) -> dict[str, float]:
    """Run an exported file in onnxruntime and the model in PyTorch on one seeded N(0, 1)
    input (batch, 3, size, size); returns {output name: max abs difference}. Pixel outputs
    of a decoded export are divided by the largest stride, so all numbers are in the same
    units as the raw outputs (float32 noise grows with the stride multiplication)."""
    import onnxruntime as ort

    strides = _strides_of(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    names = [o.name for o in session.get_outputs()]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    wrapper = (DecodedExport if decoded else RawExport)(model, strides).eval()
    with torch.no_grad():
        want = wrapper(x)
    diffs = {}
    for name, g, w in zip(names, got, want):
        if tuple(g.shape) != tuple(w.shape):
            raise AssertionError(f"{path}: output {name} has shape {g.shape}, torch gives {tuple(w.shape)}")
        unit = max(strides) if name in ("boxes", "keypoints") else 1
        diffs[name] = float((torch.from_numpy(g) - w).abs().max()) / unit
    return diffs
