"""Task-aligned positive assignment (YOLOv8's TAL) and the detection loss with named terms.

Boxes are pixel ``x1 y1 x2 y2`` in the letterboxed image throughout. Targets come as ``collate``
gives them, ``(N, 6)`` rows of ``[img_idx, cls, x1, y1, x2, y2]``; they are padded once to
``(B, M)`` with a mask, and everything after that is batched tensor code over the whole batch.

The loss has three terms, none of whose scale depends on how many positives a batch has:

- ``box``: the IoU loss (CIoU by default) of the positives, their mean weighted by target score;
- ``cls``: a quality focal loss over every anchor against the IoU-aware soft targets,
  ``|y - sigmoid(x)| ** focal_gamma * BCE(x, y)`` (plain BCE at ``focal_gamma = 0``), divided by
  ``max(1, sum of target scores)``;
- ``dfl``: the distribution focal loss of the positives' four distance distributions, their
  mean weighted by target score (zero for the exp head, which has no distributions).

Box and DFL are weighted *means*, not sums divided by ``max(1, sum of target scores)`` as
Ultralytics divides them: early in training the target scores (IoUs) are small and grow, and
with the ``max(1, .)`` the loss grew 2-3x over the first epochs while the model improved, which
made the training loss useless to the search's divergence rules (every trial of ``make demo``
was stopped as a spike).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from cattle_yolo.config import TrainConfig
from cattle_yolo.model import dfl_encode

MIN_GT_SIZE = 1e-3  # pixels; keeps CIoU's w/h of a degenerate target box finite
EPS = 1e-9


def iou_threshold(epoch: float, cfg: TrainConfig) -> float:
    """The IoU gate on the assigner's candidates: ``iou_start`` rising linearly to ``iou_end``.

    ``iou_start + min(epoch / iou_ramp_epochs, 1) * (iou_end - iou_start)``; no ramp when
    ``iou_ramp_epochs`` is 0.
    """
    if cfg.iou_ramp_epochs == 0:
        return cfg.iou_end
    progress = min(max(epoch, 0.0) / cfg.iou_ramp_epochs, 1.0)
    return cfg.iou_start + progress * (cfg.iou_end - cfg.iou_start)


def pad_targets(targets: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(N, 6)`` ``[img_idx, cls, x1, y1, x2, y2]`` -> per-image padded targets.

    Returns ``gt_boxes`` ``(B, M, 4)`` pixel xyxy float32, ``gt_labels`` ``(B, M)`` long and
    ``gt_mask`` ``(B, M)`` bool, with ``M = max(1, most boxes in one image)``; padding is zeros
    with mask False. One host sync (for ``M``); the scatter itself is vectorized.
    """
    device = targets.device
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=batch_size)
    m = max(1, int(counts.max())) if targets.shape[0] else 1
    gt_boxes = torch.zeros(batch_size, m, 4, device=device)
    gt_labels = torch.zeros(batch_size, m, dtype=torch.long, device=device)
    gt_mask = torch.zeros(batch_size, m, dtype=torch.bool, device=device)
    if targets.shape[0]:
        order = torch.argsort(img, stable=True)
        img_sorted = img[order]
        first = torch.cumsum(counts, 0) - counts  # index of each image's first row once sorted
        slot = torch.arange(len(order), device=device) - first[img_sorted]
        gt_boxes[img_sorted, slot] = targets[order, 2:6].float()
        gt_labels[img_sorted, slot] = targets[order, 1].long()
        gt_mask[img_sorted, slot] = True
    return gt_boxes, gt_labels, gt_mask


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``(B, M, 4)`` and ``(B, A, 4)`` pixel xyxy -> ``(B, M, A)``; per image equal to
    ``torchvision.ops.box_iou``."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.min(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union.clamp(min=EPS)


class Assignment(NamedTuple):
    """What the assigner decided for every anchor; shapes ``(B, A)`` unless stated."""

    fg: Tensor  # bool: the anchor is a positive
    gt_index: Tensor  # long: GT slot of each positive (0 for the rest)
    scores: Tensor  # (B, A, C) float: soft class targets, IoU-aware; 0 for negatives
    ignore: Tensor  # bool: a top-k candidate the IoU gate held back: no class target at all


def candidates(anchors: Tensor, gt_boxes: Tensor, gt_mask: Tensor) -> Tensor:
    """``(B, M, A)`` bool: anchors whose point lies strictly inside each real object.

    An object that holds no anchor point (smaller than a stride-8 cell, between points) takes
    the anchor nearest its centre, so every object has at least one candidate.
    """
    ax, ay = anchors[:, 0], anchors[:, 1]
    gt = gt_boxes
    inside = (ax > gt[..., 0:1]) & (ax < gt[..., 2:3]) & (ay > gt[..., 1:2]) & (ay < gt[..., 3:4])
    centre = (gt[..., :2] + gt[..., 2:]) / 2  # (B, M, 2)
    nearest = torch.cdist(centre, anchors[None].expand(gt.shape[0], -1, -1)).argmin(-1)  # (B, M)
    lonely = ~inside.any(-1)
    inside = inside | (F.one_hot(nearest, anchors.shape[0]).bool() & lonely[..., None])
    return inside & gt_mask[..., None]


@torch.no_grad()
def assign(  # noqa: PLR0913 (tensors in, TAL knobs as plain floats: the hot path stays flat)
    scores: Tensor,
    pred_boxes: Tensor,
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    topk: int,
    alpha: float,
    beta: float,
    iou_gate: float,
) -> Assignment:
    """Task-aligned assignment, batched over images, objects and anchors.

    Args:
        scores: ``(B, A, C)`` predicted class probabilities (after the sigmoid).
        pred_boxes: ``(B, A, 4)`` predicted pixel xyxy.
        anchors: ``(A, 2)`` pixel anchor points (x, y).
        gt_boxes: ``(B, M, 4)`` pixel xyxy, padded; ``gt_labels`` ``(B, M)`` long; ``gt_mask``
            ``(B, M)`` bool, True for real objects.
        topk, alpha, beta: ``TrainConfig.tal_topk``, ``tal_alpha``, ``tal_beta``.
        iou_gate: IoU a top-k candidate needs to be a positive (``iou_threshold``).

    Rule (each step a function below):
        1. Candidates of an object are the anchors inside it (``candidates``).
        2. Their alignment is ``score(object's class) ** alpha * IoU(pred, object) ** beta``; the
           ``topk`` best candidates by alignment are the object's top-k.
        3. The IoU gate: a top-k candidate is kept if its IoU is at least ``iou_gate``; the
           object's best candidate (top-1) is always kept. A gated-out candidate is ignored
           (no class target), not turned into a negative.
        4. An anchor kept by several objects goes to the one where it is a top-1, then to the
           highest IoU (ties: the lowest object slot). An object left without any positive
           then takes its best candidate that no object holds.
        5. Soft class targets: each object's alignments are rescaled so that its best positive
           gets its best positive IoU, and a positive's target is that value at its object's class.
    """
    iou = batched_box_iou(gt_boxes, pred_boxes.float()).nan_to_num(0.0)  # (B, M, A); NaN box: 0
    cand = candidates(anchors, gt_boxes, gt_mask)  # 1. (B, M, A)
    align = alignment(scores, iou, gt_labels, alpha, beta)  # 2. (B, M, A)
    in_topk, best = top_k(align, cand, topk)  # 2. (B, M, A) each
    kept = in_topk & ((iou >= iou_gate) | best)  # 3. the IoU gate, (B, M, A)
    pos = one_owner_per_anchor(kept, best, iou)  # 4. (B, M, A)
    pos = rescue_orphans(pos, cand, align, gt_mask)  # 4. (B, M, A)
    fg = pos.any(dim=1)  # (B, A)
    gt_index = pos.float().argmax(dim=1)  # (B, A)
    target = soft_targets(align, iou, pos, gt_labels, gt_index, fg, scores.shape[-1])  # 5.
    ignore = in_topk.any(dim=1) & ~fg  # (B, A)
    return Assignment(fg, gt_index, target, ignore)


def alignment(scores: Tensor, iou: Tensor, gt_labels: Tensor, alpha: float, beta: float) -> Tensor:
    """``(B, M, A)``: ``score(object's class) ** alpha * IoU ** beta`` of every anchor for every
    object; ``scores`` ``(B, A, C)``, ``iou`` ``(B, M, A)``, ``gt_labels`` ``(B, M)``."""
    label_idx = gt_labels[:, :, None].expand(-1, -1, scores.shape[1])  # (B, M, A)
    cls_score = scores.float().transpose(1, 2).gather(1, label_idx)  # (B, M, A)
    return cls_score.pow(alpha) * iou.pow(beta)


def top_k(align: Tensor, cand: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(in the top ``k`` by alignment, the best) among each object's candidates, both
    ``(B, M, A)`` bool; non-candidates rank below every candidate."""
    num_anchors = align.shape[-1]
    top_idx = torch.where(cand, align, -1.0).topk(min(k, num_anchors), dim=-1).indices  # (B, M, k)
    in_topk = torch.zeros_like(cand).scatter_(-1, top_idx, True) & cand
    best = F.one_hot(top_idx[..., 0], num_anchors).bool() & cand
    return in_topk, best


def one_owner_per_anchor(kept: Tensor, best: Tensor, iou: Tensor) -> Tensor:
    """``(B, M, A)`` bool positives: an anchor ``kept`` by several objects goes to the one where
    it is the top-1, then to the highest IoU (ties: the lowest object slot)."""
    priority = torch.where(kept, iou + 2.0 * best, -1.0)  # (B, M, A)
    owner = priority.argmax(dim=1)  # (B, A)
    return F.one_hot(owner, kept.shape[1]).transpose(1, 2).bool() & kept


def rescue_orphans(pos: Tensor, cand: Tensor, align: Tensor, gt_mask: Tensor) -> Tensor:
    """An object left without a positive takes its best-aligned candidate that no object holds
    (two orphans of one image wanting the same anchor: the lower slot keeps it); all
    ``(B, M, A)``, ``gt_mask`` ``(B, M)``."""
    orphan = gt_mask & ~pos.any(-1)  # (B, M)
    if not bool(orphan.any()):
        return pos
    fg = pos.any(dim=1)  # (B, A)
    spare = torch.where(cand & ~fg[:, None, :], align, -1.0)  # (B, M, A)
    value, idx = spare.max(-1)  # (B, M)
    take = orphan & (value >= 0)
    rescue = F.one_hot(idx, align.shape[-1]).bool() & take[..., None]  # (B, M, A)
    return pos | (rescue & (rescue.cumsum(1) == 1))


def soft_targets(
    align: Tensor,
    iou: Tensor,
    pos: Tensor,
    gt_labels: Tensor,
    gt_index: Tensor,
    fg: Tensor,
    num_classes: int,
) -> Tensor:
    """``(B, A, C)`` IoU-aware class targets: each object's alignments rescaled so that its best
    positive gets its best positive IoU; a positive's target is that value at its object's
    class, every other entry 0."""
    align = align * pos  # (B, M, A)
    best_align = align.amax(-1, keepdim=True)  # (B, M, 1)
    best_iou = (iou * pos).amax(-1, keepdim=True)  # (B, M, 1)
    quality = (align * best_iou / (best_align + EPS)).amax(dim=1)  # (B, A)
    labels = gt_labels.gather(1, gt_index)  # (B, A)
    return F.one_hot(labels, num_classes).float() * (quality * fg)[..., None]


class DetectionLoss(nn.Module):
    """Box (CIoU/GIoU), class (quality focal) and DFL terms over a batch, with TAL positives.

    ``forward(outputs, targets, epoch)`` takes the model's output dict (``"boxes"`` ``(B, A, 4)``
    pixel xyxy, ``"cls"`` ``(B, A, C)`` logits, ``"anchors"`` ``(A, 2)``, ``"strides"`` ``(A,)``,
    and with the dfl head ``"dist"`` ``(B, A, 4, reg_max)`` logits), targets ``(N, 6)``
    ``[img_idx, cls, x1, y1, x2, y2]`` pixel, and the (fractional) epoch for the IoU gate.
    Returns ``"box"``, ``"cls"``, ``"dfl"`` (each already weighted), ``"total"`` (their sum),
    ``"num_pos"`` (long scalar tensor) and ``"dead"`` (bool scalar tensor: objects present but
    every target score 0, so the step cannot learn; the engine skips it). Every term is
    computed in float32 (the module docstring gives the normalisation); with no objects the box
    and DFL terms are exactly 0.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.box_loss_fn = {"giou": generalized_box_iou_loss, "ciou": complete_box_iou_loss}[
            cfg.box_loss
        ]

    def forward(
        self, outputs: dict[str, Tensor], targets: Tensor, epoch: float
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        boxes = outputs["boxes"]
        with torch.autocast(device_type=boxes.device.type, enabled=False):
            boxes = boxes.float()
            cls = outputs["cls"].float()
            anchors, strides = outputs["anchors"].float(), outputs["strides"].float()
            gt_boxes, gt_labels, gt_mask = pad_targets(targets.to(boxes.device), boxes.shape[0])
            a = assign(
                cls.detach().sigmoid(),
                boxes.detach(),
                anchors,
                gt_boxes,
                gt_labels,
                gt_mask,
                cfg.tal_topk,
                cfg.tal_alpha,
                cfg.tal_beta,
                iou_threshold(epoch, cfg),
            )
            norm = a.scores.sum().clamp(min=1.0)
            weight = a.scores.sum(-1)  # (B, A): a positive's target score, 0 elsewhere
            weight_sum = weight.sum().clamp(min=EPS)

            # Class: every anchor but the ignored ones, against the soft targets.
            bce = F.binary_cross_entropy_with_logits(cls, a.scores, reduction="none")
            if cfg.focal_gamma > 0:
                gap = (a.scores - cls.sigmoid()).abs().clamp(min=1e-12)
                bce = bce * gap.pow(cfg.focal_gamma)
            cls_loss = torch.where(a.ignore[..., None], 0.0, bce).sum() / norm

            # Box: computed on every anchor (no boolean indexing, so no host sync). A negative
            # scores a fixed unit box against itself (loss 0, no gradient), so a blown-up model's
            # NaN or 0x0 boxes there cannot reach the sum as NaN x 0; predicted and target boxes
            # are at least MIN_GT_SIZE wide and high, where CIoU's aspect term w / h is finite.
            fg, unit = a.fg[..., None], _UNIT_BOX.to(boxes.device)
            matched = gt_boxes.gather(1, a.gt_index[..., None].expand(-1, -1, 4))
            target_boxes = _min_size(torch.where(fg, matched, unit))
            pred_boxes = _min_size(torch.where(fg, boxes, unit))
            per_box = self.box_loss_fn(pred_boxes, target_boxes, reduction="none")
            box = (per_box * weight).sum() / weight_sum

            dfl = boxes.new_zeros(())
            if "dist" in outputs:
                dist = outputs["dist"].float()
                dfl = (
                    dfl_loss(dist, dfl_encode(target_boxes, anchors, strides, dist.shape[-1]))
                    * weight
                ).sum() / weight_sum

            box = cfg.box_loss_weight * box
            cls_loss = cfg.cls_loss_weight * cls_loss
            dfl = cfg.dfl_loss_weight * dfl
            # Collapsed: objects present but every alignment 0 (class scores underflowed, as a
            # too-high learning rate does): TAL gives no target, so nothing can be learnt.
            dead = gt_mask.any() & (a.scores.sum() == 0)
        return {
            "box": box,
            "cls": cls_loss,
            "dfl": dfl,
            "total": box + cls_loss + dfl,
            "num_pos": a.fg.sum(),
            "dead": dead,
        }


_UNIT_BOX = torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel xyxy: negatives' stand-in box


def _min_size(boxes: Tensor) -> Tensor:
    """Pixel xyxy ``(..., 4)`` with x2, y2 raised to at least x1, y1 + ``MIN_GT_SIZE``."""
    return torch.cat([boxes[..., :2], torch.max(boxes[..., 2:], boxes[..., :2] + MIN_GT_SIZE)], -1)


def dfl_loss(dist: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss: ``(B, A, 4, R)`` logits, ``(B, A, 4)`` distances in bins, in
    ``[0, R - 1)`` -> ``(B, A)``, the mean over the four sides of the cross-entropy with the two
    bins around the target, weighted by nearness (a target of 2.3 is 0.7 of bin 2, 0.3 of bin 3).
    """
    # nan_to_num: a non-finite target (a blown-up model) gives a NaN loss, never a bad index.
    left = target.nan_to_num(0.0).floor().long().clamp(0, dist.shape[-1] - 2)
    w_right = target - left
    logp = dist.log_softmax(-1)
    ce = -(
        logp.gather(-1, left[..., None]).squeeze(-1) * (1 - w_right)
        + logp.gather(-1, left[..., None] + 1).squeeze(-1) * w_right
    )
    return ce.mean(-1)


__all__ = [
    "Assignment",
    "DetectionLoss",
    "assign",
    "batched_box_iou",
    "candidates",
    "dfl_loss",
    "iou_threshold",
    "pad_targets",
]
