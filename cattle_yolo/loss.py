"""Positive assignment by a ramped IoU threshold, and the detection loss with named terms.

Boxes are pixel ``x1 y1 x2 y2`` in the letterboxed image throughout. Targets come as ``collate``
gives them, ``(N, 6)`` rows of ``[img_idx, cls, x1, y1, x2, y2]``; they are padded once to
``(B, M)`` with a mask, and everything after that is batched tensor code over the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss, sigmoid_focal_loss

from cattle_yolo.config import TrainConfig

FORCED_ROUNDS = 4  # rounds in which GTs that lost a shared best prediction pick their next best
MIN_GT_SIZE = 1e-3  # pixels; keeps CIoU's w/h of a degenerate target box finite


def iou_threshold(epoch: float, cfg: TrainConfig) -> float:
    """IoU a prediction needs to be a positive: ``iou_start`` rising linearly to ``iou_end``.

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
    return inter / union


def assign(
    pred_boxes: Tensor,
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    thr: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Match predictions to ground truth, batched over images, GTs and predictions.

    Args:
        pred_boxes: ``(B, A, 4)`` predicted pixel xyxy (detached here).
        anchors: ``(A, 2)`` pixel cell centres (x, y).
        gt_boxes: ``(B, M, 4)`` pixel xyxy, padded; ``gt_labels`` ``(B, M)``; ``gt_mask`` ``(B, M)``
            bool, True for real boxes. ``gt_labels`` is not used by the rule; it is taken for a
            uniform signature.
        thr: IoU a prediction needs (see ``iou_threshold``).

    Rule: a prediction is positive for GT ``j`` if its anchor centre lies strictly inside GT ``j``
    and IoU(prediction, GT ``j``) >= ``thr``; matched to several GTs it takes the one with the
    highest IoU. In addition every real GT takes its best-IoU prediction (among anchors inside it,
    over all anchors if none is inside) as a positive, overriding the threshold match. Where
    several GTs pick the same prediction the highest IoU wins (ties: lowest GT index) and the
    others pick again among the predictions not yet taken, for up to ``FORCED_ROUNDS`` rounds.

    Returns:
        ``pos`` ``(B, A)`` bool, ``gt_index`` ``(B, A)`` long (GT slot of each positive, 0 for
        negatives) and ``iou`` ``(B, A)`` float32 (IoU with that GT, 0 for negatives).
    """
    del gt_labels
    pred = pred_boxes.detach().float()
    gt = gt_boxes.float()
    iou = batched_box_iou(gt, pred)  # (B, M, A)
    ax, ay = anchors[:, 0].float(), anchors[:, 1].float()
    inside = (
        (ax > gt[..., 0:1]) & (ax < gt[..., 2:3]) & (ay > gt[..., 1:2]) & (ay < gt[..., 3:4])
    ) & gt_mask[..., None]  # (B, M, A)

    # Threshold match: the best-IoU GT among those the anchor is inside with IoU >= thr.
    cand = inside & (iou >= thr)
    _, thr_gt = torch.where(cand, iou, -1.0).max(dim=1)  # (B, A)
    pos = cand.any(dim=1)

    # Forced match: each GT's best prediction; anchors inside the GT outrank every outside one.
    rank = torch.where(inside, iou, iou - 2.0)
    rank = torch.where(gt_mask[..., None], rank, -4.0)
    need = gt_mask.clone()  # (B, M) GTs still without their forced prediction
    slots = torch.arange(need.shape[1], device=need.device)
    taken = torch.zeros_like(pos)
    forced_gt = torch.zeros_like(thr_gt)
    for _ in range(FORCED_ROUNDS):
        best = torch.where(taken[:, None, :], -3.0, rank).argmax(dim=2)  # (B, M)
        proposes = F.one_hot(best, rank.shape[2]).bool() & need[..., None] & ~taken[:, None, :]
        winner = torch.where(proposes, iou, -1.0).argmax(dim=1)  # (B, A)
        won_here = proposes.any(dim=1)
        forced_gt = torch.where(won_here, winner, forced_gt)
        taken = taken | won_here
        need = need & ~(proposes & (winner[:, None, :] == slots[:, None])).any(dim=2)

    gt_index = torch.where(taken, forced_gt, torch.where(pos, thr_gt, 0))
    pos = pos | taken
    matched_iou = iou.gather(1, gt_index[:, None, :]).squeeze(1)
    return pos, gt_index, torch.where(pos, matched_iou, 0.0)


class DetectionLoss(nn.Module):
    """Box (GIoU/CIoU), class (sigmoid focal) and objectness (BCE) terms, batched.

    ``forward(outputs, targets, epoch)`` takes the model's output dict (``"boxes"`` ``(B, A, 4)``
    pixel xyxy, ``"obj"`` ``(B, A)``, ``"cls"`` ``(B, A, C)``, ``"anchors"`` ``(A, 2)``), targets
    ``(N, 6)`` ``[img_idx, cls, x1, y1, x2, y2]`` pixel, and the (fractional) epoch for the IoU
    ramp. Returns ``"box"``, ``"cls"``, ``"obj"`` (each already weighted), ``"total"`` (their sum)
    and ``"num_pos"`` (long scalar tensor). Every term is computed in float32 and normalized by
    ``max(1, num_pos)``; with no positives the box term is exactly 0.
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
        device_type = boxes.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            boxes = boxes.float()
            obj = outputs["obj"].float()
            cls = outputs["cls"].float()
            gt_boxes, gt_labels, gt_mask = pad_targets(targets.to(boxes.device), boxes.shape[0])
            pos, gt_index, _ = assign(
                boxes, outputs["anchors"], gt_boxes, gt_labels, gt_mask, iou_threshold(epoch, cfg)
            )
            num_pos = pos.sum()
            norm = num_pos.clamp(min=1).float()

            # Box: every anchor gets a well-defined target (negatives: their own detached box),
            # so there is no boolean indexing (no host sync) and no NaN to mask out.
            matched = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
            matched = torch.cat(
                [matched[..., :2], torch.max(matched[..., 2:], matched[..., :2] + MIN_GT_SIZE)], -1
            )
            target_boxes = torch.where(pos[..., None], matched, boxes.detach())
            per_box = self.box_loss_fn(boxes, target_boxes, reduction="none")
            box = torch.where(pos, per_box, 0.0).sum() / norm

            labels = gt_labels.gather(1, gt_index)  # (B, A)
            classes = torch.arange(self.num_classes, device=cls.device)
            onehot = (labels[..., None] == classes).float()
            focal = sigmoid_focal_loss(
                cls, onehot, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none"
            ).sum(-1)
            cls_loss = torch.where(pos, focal, 0.0).sum() / norm

            obj_loss = F.binary_cross_entropy_with_logits(obj, pos.float(), reduction="sum") / norm

            box = cfg.box_loss_weight * box
            cls_loss = cfg.cls_loss_weight * cls_loss
            obj_loss = cfg.obj_loss_weight * obj_loss
        return {
            "box": box,
            "cls": cls_loss,
            "obj": obj_loss,
            "total": box + cls_loss + obj_loss,
            "num_pos": num_pos,
        }


__all__ = ["DetectionLoss", "assign", "batched_box_iou", "iou_threshold", "pad_targets"]
