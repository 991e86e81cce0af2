"""RSA's landmark retracing network (LRN, Liu et al. 2017, sec. 3.3): the `rsa_lrn` head.

Per scale, on res3a's output (the `rsa` neck computes res3a, shared by all scales):
- landmark branch: a 3x3 conv to 5 maps P_j (one per landmark; logits, sigmoid: p^land);
- RPN branch: res3b, res3c (`head.num_convs` basic blocks of `head.channels`, GroupNorm as
  every module applied per scale, see rsa_unit.per_scale_norms), then 1x1 convs
  to one anchor's logit a, its box (l, t, r, b) and its 5 landmarks t_j.
  One anchor of side A = 64 sqrt(2) (times 2^m at scale m); with ratio r = A / stride:
  box distances (stride units) = r/2 * exp(raw); landmarks: t_j = (p_j - c) / A - mu_j, so
  keypoint offsets (stride units) = r * (mu_j + t_j), mu the training set's mean layout.
- retracing (Eq. 9-10): each anchor's landmark j lands at cell (x, y) + offset_j; P_j there
  (bilinear over the logits; a landmark outside the map does not count) is p^land_ij; the
  face score is max(sigmoid(a), p^land_i1, ..., p^land_i5) ("max pool" of Eq. 9), emitted as
  its logit, so the standard decode, NMS and ONNX export use the revised score.

The head also holds the scale-forecast network (`forecast`): its parameters count in this
component; it runs on its own 224-px input in the pipeline, not in the fixed-scale forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.blocks.resnet import BasicBlock, basic_cost
from detectors.rsa.forecast import ScaleForecastNet, forecast_cost
from detectors.rsa.unit import per_scale_norms
from detectors.errors import UserError
from detectors.heads import NUM_KEYPOINTS
from detectors.macs import Counter

__all__ = ["LRNHead", "lrn_head", "lrn_head_cost", "retrace_scores", "landmark_positions",
           "DEFAULT_ANCHOR_RATIO"]

DEFAULT_ANCHOR_RATIO = 64 * 2**0.5 / 8  # anchor side / stride (64 sqrt 2 at stride 8)
_OUTSIDE = -1e4  # the logit of a landmark outside the map: never the maximum


def landmark_positions(kps_offsets: torch.Tensor) -> torch.Tensor:
    """(N, 10, H, W) offsets in stride units -> (N, 5, H, W, 2) (x, y) positions in cells."""
    n, _, h, w = kps_offsets.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=kps_offsets.device, dtype=kps_offsets.dtype),
                            torch.arange(w, device=kps_offsets.device, dtype=kps_offsets.dtype),
                            indexing="ij")
    off = kps_offsets.reshape(n, NUM_KEYPOINTS, 2, h, w).permute(0, 1, 3, 4, 2)
    return off + torch.stack([xs, ys], -1)


def retrace_scores(anchor_logits: torch.Tensor, landmark_logits: torch.Tensor,
                   kps_offsets: torch.Tensor) -> torch.Tensor:
    """Eq. 9-10: (N, 1, H, W) anchor logits, (N, 5, H, W) landmark map logits P, (N, 10, H, W)
    keypoint offsets (stride units) -> (N, 1, H, W) revised face logit
    max(a, P_j(position_j)): sigmoid of it is max(sigmoid(a), sigmoid(P_j(position_j))).
    P_j is read bilinearly (in logit space, for stable gradients); a landmark outside the map
    does not count. Positions are not differentiated (the scores are)."""
    # fp32 (also under bf16 autocast): positions need the precision, grid_sample the range
    anchor_logits, landmark_logits = anchor_logits.float(), landmark_logits.float()
    n, k, h, w = landmark_logits.shape
    pos = landmark_positions(kps_offsets.detach().float())  # (N, 5, H, W, 2) cells
    inside = ((pos >= 0) & (pos <= pos.new_tensor([w - 1, h - 1]))).all(-1)  # (N, 5, H, W)
    scale = pos.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (pos * scale - 1).reshape(n * k, h, w, 2)
    sampled = F.grid_sample(landmark_logits.reshape(n * k, 1, h, w), grid, mode="bilinear",
                            padding_mode="border", align_corners=True).reshape(n, k, h, w)
    sampled = torch.where(inside, sampled, torch.full_like(sampled, _OUTSIDE))
    return torch.cat([anchor_logits, sampled], dim=1).max(dim=1, keepdim=True).values


class LRNHead(nn.Module):
    """feats [(N, C, H_l, W_l)] -> ([cls (N, 1, H, W)], [box (N, 4, H, W)], [kps (N, 10, H, W)])
    per level, as the SCRFD head's layout (one anchor)."""

    def __init__(self, channels: int, in_channels: int, num_convs: int, groups: int = 8) -> None:
        super().__init__()
        self.landmarks = nn.Conv2d(in_channels, NUM_KEYPOINTS, 3, padding=1)
        blocks, cin = [], in_channels
        for _ in range(num_convs):
            blocks.append(BasicBlock(cin, channels, 1))
            cin = channels
        self.rpn = per_scale_norms(nn.Sequential(*blocks), groups)
        self.cls_preds = nn.ModuleList([nn.Conv2d(cin, 1, 1)])  # init_weights sets the prior
        self.box_pred = nn.Conv2d(cin, 4, 1)
        self.kps_pred = nn.Conv2d(cin, 2 * NUM_KEYPOINTS, 1)
        self.forecast = ScaleForecastNet()
        self.register_buffer("layout", torch.zeros(2 * NUM_KEYPOINTS))
        self.register_buffer("ratio", torch.tensor(DEFAULT_ANCHOR_RATIO))

    def level(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One scale's raw outputs: anchor logit, landmark maps P, box raw, landmark t, and
        the emitted (revised) logit, box distances and keypoint offsets (stride units)."""
        lmk = self.landmarks(x)
        y = self.rpn(x)
        anchor, raw_box, t = self.cls_preds[0](y), self.box_pred(y), self.kps_pred(y)
        r = self.ratio.to(y.dtype)
        kps = r * (self.layout.to(y.dtype)[None, :, None, None] + t)
        return {"anchor": anchor, "landmarks": lmk, "raw_box": raw_box, "t": t,
                "cls": retrace_scores(anchor, lmk, kps),
                "box": r / 2 * raw_box.clamp(-6, 6).exp(), "kps": kps}

    def forward(self, feats: list[torch.Tensor]):
        outs = [self.level(f) for f in feats]
        return [o["cls"] for o in outs], [o["box"] for o in outs], [o["kps"] for o in outs]


def lrn_head(head_spec, in_channels: int, num_levels: int, num_anchors: int) -> LRNHead:
    """The LRN of a HeadSpec: channels, num_convs (res3b, res3c: 2), gn_groups; the spec must
    say norm gn, keypoints true, depthwise false (the other SCRFD head fields do not apply)."""
    if num_anchors != 1 or not head_spec.keypoints:
        raise UserError("head type 'rsa_lrn' has one anchor per cell (anchors: one scale, one "
                        "ratio) and predicts keypoints (head.keypoints: true)")
    if head_spec.norm != "gn" or head_spec.depthwise:
        raise UserError("head type 'rsa_lrn' uses GroupNorm basic blocks: head.norm must be gn "
                        "and head.depthwise false")
    return LRNHead(head_spec.channels, in_channels, head_spec.num_convs, head_spec.gn_groups)


def _level_cost(c: Counter, head_spec, cin: int, h: int, w: int) -> None:
    c.conv(cin, NUM_KEYPOINTS, 3, 1, h, w, norm=False, act=False)
    for _ in range(head_spec.num_convs):
        basic_cost(c, cin, head_spec.channels, 1, h, w)
        cin = head_spec.channels
    for out in (1, 4, 2 * NUM_KEYPOINTS):
        c.conv(cin, out, 1, 1, h, w, norm=False, act=False)


def lrn_head_cost(c: Counter, head_spec, in_channels: int, sizes, num_anchors: int) -> None:
    """LRN MACs at every level, its parameters once, plus the forecast network's parameters."""
    for i, (h, w) in enumerate(sizes):
        probe = Counter()
        _level_cost(probe, head_spec, in_channels, h, w)
        c.m, c.e, c.p = c.m + probe.m, c.e + probe.e, c.p + (probe.p if i == 0 else 0)
    if not sizes:
        probe = Counter()
        _level_cost(probe, head_spec, in_channels, 1, 1)
        c.p += probe.p
    forecast_cost(c, 224, 224, macs=False)
