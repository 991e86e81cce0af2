"""RSA's training objectives, called by the one trainer through `RSADetector.training_loss`.

    parts, num_pos = rsa_training_loss(model, images, batch, recipe)

recipe.rsa.stage selects the objectives: 'forecast' (Eq. 2 on the batch resized to long side
224), 'rsa_lrn' (Eq. 7 + Eq. 11 end-to-end on the batch rescaled so one face per image lands
in [64, 128] px, the paper's training resize), or 'all' (their sum; the forecast network's
parameters are disjoint from the others', so this trains both stages side by side).

LRN loss (Eq. 11, with the departures in docs/rsa.md): max-IoU assignment of the single
anchors (recipe.assigner.pos_iou, each face also takes its best anchor), positives and the
hardest negatives (recipe.loss.neg_pos_ratio per positive: the paper's 1:1 is 1.0; at least
MIN_NEGATIVES per batch) scored by binary cross entropy on
the revised score, smooth-L1 on the box (log-space, anchor-relative) and on the landmarks t_j
(faces with landmark labels only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detectors.anchors import anchor_boxes
from detectors.assign import iou_assign
from detectors.rsa.forecast import forecast_input, forecast_loss
from detectors.rsa.unit import rsa_loss
from detectors.errors import UserError

__all__ = ["rsa_training_loss", "rescale_batch", "check_landmarks", "lrn_loss", "MIN_NEGATIVES"]

MIN_NEGATIVES = 16
_BETA = 1.0 / 9.0


def check_landmarks(batch: dict) -> None:
    """UserError for the first sample with (non-ignored) faces but no landmark label."""
    for i, (ign, valid) in enumerate(zip(batch["ignore"], batch["keypoints_valid"])):
        if int((~ign.bool()).sum()) and not bool(valid.bool().any()):
            raise UserError(f"image {batch['image_id'][i]} has faces but no landmark labels "
                            "(keypoints), which recipe.rsa.require_landmarks needs: give the "
                            "dataset a retinaface_gt label file or set it to false")


def _crop_resized(img: torch.Tensor, f: float, x0: int, y0: int) -> torch.Tensor:
    """The S x S window at (x0, y0) of `img` (3, S, S) scaled by f, sampled directly
    (torchvision roi_align: bilinear, averaging ceil(1/f)^2 samples per pixel when shrinking;
    0 outside the image), without resizing the whole image."""
    s = img.shape[-1]
    box = img.new_tensor([[0, x0 / f, y0 / f, (x0 + s) / f, (y0 + s) / f]])
    out = roi_align(img[None], box, (s, s), 1.0, max(1, math.ceil(1 / f)), aligned=True)[0]
    inside = img.new_zeros(1, 1, s, s)
    inside[..., :min(s, round(s * f) - y0), :min(s, round(s * f) - x0)] = 1
    return out * inside[0]


def _rescale_one(img: torch.Tensor, boxes, ignore, kps, kvalid, gen: torch.Generator | None):
    """One (3, S, S) sample scaled so a random valid face is 64..128 px, cropped back to S."""
    s = img.shape[-1]
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).prod(1).sqrt()
    cand = torch.nonzero((sizes > 1) & ~ignore).squeeze(1)
    if cand.numel() == 0:
        return img, boxes, ignore, kps, kvalid
    # host draws (they become Python numbers), on the generator's device: CPU for None
    host = gen.device if gen is not None else torch.device("cpu")
    j = int(cand[int(torch.randint(cand.numel(), (1,), generator=gen, device=host))])
    target = 64.0 * 2.0 ** float(torch.rand((), generator=gen, device=host))
    f = target / float(sizes[j])
    new = max(1, round(s * f))
    cx, cy = ((boxes[j, :2] + boxes[j, 2:]) / 2 * f).tolist()
    u = torch.rand(2, generator=gen, device=host).tolist()
    x0 = int(min(max(cx - u[0] * s, 0), max(new - s, 0)))
    y0 = int(min(max(cy - u[1] * s, 0), max(new - s, 0)))
    out = _crop_resized(img, f, x0, y0)
    shift = boxes.new_tensor([x0, y0])
    b = boxes * f - shift.repeat(2)
    centre = (b[:, :2] + b[:, 2:]) / 2
    keep = ((centre >= 0) & (centre < s)).all(1)
    k = kps * f - shift
    return out, b[keep].clamp(0, s), ignore[keep], k[keep], kvalid[keep]


def rescale_batch(images: torch.Tensor, batch: dict, gen: torch.Generator | None = None):
    """The paper's training resize: (B, 3, S, S) images + per-image boxes / ignore / keypoints
    / keypoints_valid -> the same, each image scaled so one random valid face is 64..128 px
    (log-uniform) and cropped back to S x S around it (zero padded); faces whose centre
    leaves the crop are dropped. Images without valid faces are unchanged."""
    outs = [_rescale_one(images[i], batch["boxes"][i].to(images.device).float(),
                         batch["ignore"][i].to(images.device).bool(),
                         batch["keypoints"][i].to(images.device).float(),
                         batch["keypoints_valid"][i].to(images.device).bool(), gen)
            for i in range(images.shape[0])]
    return (torch.stack([o[0] for o in outs]), [o[1] for o in outs], [o[2] for o in outs],
            [o[3] for o in outs], [o[4] for o in outs])


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(N, k, H, W) -> (N, H*W, k), rows y-major (the anchor order)."""
    return x.flatten(2).transpose(1, 2)


def lrn_loss(levels: list[dict], spec, boxes, ignore, kps, kvalid, recipe,
             layout: torch.Tensor) -> tuple[dict, int]:
    """Eq. 11 over all scales' anchors. levels: LRNHead.level outputs; returns (parts, P)."""
    sizes = [tuple(o["cls"].shape[-2:]) for o in levels]
    per_level = anchor_boxes(spec.anchors, sizes, levels[0]["cls"].device)
    anchors = torch.cat(per_level)
    logits = torch.cat([_flat(o["cls"]) for o in levels], 1)[..., 0]
    raw_box = torch.cat([_flat(o["raw_box"]) for o in levels], 1)
    t = torch.cat([_flat(o["t"]) for o in levels], 1)
    with torch.no_grad():
        a = iou_assign(per_level, boxes, ignore, pos_iou=recipe.assigner.pos_iou)
    pos = a.positive
    neg = ~pos & ~a.ignored
    num_pos = int(pos.sum())
    flat_logits = logits.flatten()
    neg_idx = neg.flatten().nonzero().squeeze(1)
    count = min(neg_idx.numel(), max(int(num_pos * recipe.loss.neg_pos_ratio), MIN_NEGATIVES))
    with torch.no_grad():  # hard negatives: the highest revised scores
        hardest = flat_logits[neg_idx].float().topk(count).indices
    take = neg_idx[hardest]
    pos_idx = pos.flatten().nonzero().squeeze(1)
    chosen = torch.cat([pos_idx, take])
    labels = torch.cat([torch.ones_like(pos_idx), torch.zeros_like(take)]).float()
    cls = F.binary_cross_entropy_with_logits(flat_logits[chosen].float(), labels)
    zero = logits.sum() * 0.0
    if num_pos == 0:
        return {"cls": cls, "box": zero, "landmark": zero}, 0
    img, anc = pos.nonzero(as_tuple=True)
    gt = torch.stack([boxes[i][a.matched[i, j]] for i, j in zip(img.tolist(), anc.tolist())])
    ab = anchors[anc]
    side = (ab[:, 2] - ab[:, 0])[:, None]
    centre = (ab[:, :2] + ab[:, 2:]) / 2
    dist = torch.cat([centre - gt[:, :2], gt[:, 2:] - centre], 1).clamp_min(1e-3)
    box = F.smooth_l1_loss(raw_box[img, anc].float(), torch.log(2 * dist / side), beta=_BETA)
    gk = torch.stack([kps[i][a.matched[i, j]] for i, j in zip(img.tolist(), anc.tolist())])
    ok = torch.stack([kvalid[i][a.matched[i, j]] for i, j in zip(img.tolist(), anc.tolist())])
    target_t = ((gk - centre[:, None]) / side[:, None]).reshape(-1, 10) - layout
    lmk = (F.smooth_l1_loss(t[img, anc][ok].float(), target_t[ok], beta=_BETA)
           if bool(ok.any()) else zero)
    return {"cls": cls, "box": box, "landmark": lmk}, num_pos


def _pyramid_targets(model, imgs: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """G^1..G^depth: res2b of the image average-pooled by 2^m (no gradient: targets)."""
    out = []
    was_training = model.backbone.training
    model.backbone.eval()  # G^m as the trunk computes it at test (and no BN-statistics update)
    with torch.no_grad():
        for m in range(1, depth + 1):
            k = 2**m
            if min(imgs.shape[-2:]) < k:
                break
            out.append(model.backbone(F.avg_pool2d(imgs, k, k, ceil_mode=True))[0])
    model.backbone.train(was_training)
    return out


def _rsa_lrn_parts(model, images, batch, recipe) -> tuple[dict, int]:
    imgs, boxes, ignore, kps, kvalid = rescale_batch(images, batch)
    g0 = model.backbone(imgs)[0]
    approx = model.neck.approximate(g0)
    targets = [g0] + _pyramid_targets(model, imgs, len(approx) - 1)
    parts = {"rsa": rsa_loss(approx[:len(targets)], targets)}
    levels = [model.head.level(model.neck.res3a(f)) for f in approx]
    lrn, num_pos = lrn_loss(levels, model.spec, boxes, ignore, kps, kvalid, recipe,
                            model.head.layout.float())
    parts.update(lrn)
    w = recipe.loss
    parts["lrn"] = w.cls_weight * lrn["cls"] + w.box_weight * lrn["box"] + w.kps_weight * lrn["landmark"]
    return parts, num_pos


def rsa_training_loss(model, images: torch.Tensor, batch: dict, recipe) -> tuple[dict, int]:
    """(loss parts incl. 'total', positives) of the recipe's RSA stage (module docstring)."""
    cfg = recipe.rsa
    if cfg.require_landmarks:
        check_landmarks(batch)
    parts: dict[str, torch.Tensor] = {}
    num_pos, total = 0, images.new_zeros(()).float()
    if cfg.stage in ("all", "forecast"):
        logits = model.head.forecast(forecast_input(images))
        boxes = [b.to(images.device) for b in batch["boxes"]]
        parts["forecast"] = forecast_loss(logits, boxes, batch["ignore"], float(max(images.shape[-2:])))
        total = total + parts["forecast"]
    if cfg.stage in ("all", "rsa_lrn"):
        more, num_pos = _rsa_lrn_parts(model, images, batch, recipe)
        parts.update(more)
        total = total + parts["lrn"] + cfg.rsa_weight * parts["rsa"]
    parts["total"] = total
    return parts, num_pos
