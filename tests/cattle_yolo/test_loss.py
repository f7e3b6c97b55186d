"""IoU ramp, batched assignment against a per-image reference, and the detection loss."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from cattle_yolo.config import TrainConfig
from cattle_yolo.loss import (
    FORCED_ROUNDS,
    DetectionLoss,
    assign,
    batched_box_iou,
    iou_threshold,
    pad_targets,
)
from cattle_yolo.model import CattleYOLO, make_anchors

IMGSZ = 64
ANCHORS, STRIDES = make_anchors([(8, 8), (4, 4), (2, 2)], (8, 16, 32), torch.device("cpu"))


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.25), (15, 0.35), (30, 0.45), (60, 0.45)])
def test_iou_threshold_ramp(epoch: float, expected: float) -> None:
    assert iou_threshold(epoch, TrainConfig()) == pytest.approx(expected)


def test_iou_threshold_without_ramp() -> None:
    assert iou_threshold(0, TrainConfig(iou_ramp_epochs=0)) == pytest.approx(0.45)


def random_targets(gen: torch.Generator, counts: list[int], num_classes: int = 2) -> torch.Tensor:
    """(N, 6) [img, cls, x1, y1, x2, y2] in a 64 px image, rows of different images shuffled."""
    rows = []
    for img, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=gen) * 48
        wh = torch.rand(n, 2, generator=gen) * 36 + 4
        cls = torch.randint(0, num_classes, (n, 1), generator=gen).float()
        rows.append(
            torch.cat([torch.full((n, 1), float(img)), cls, xy, (xy + wh).clamp(max=64)], 1)
        )
    targets = torch.cat(rows) if rows else torch.zeros(0, 6)
    return targets[torch.randperm(len(targets), generator=gen)]


def random_preds(gen: torch.Generator, batch: int) -> torch.Tensor:
    """(B, A, 4) boxes near their anchors, sizes of 0.5 to 4 strides."""
    centre = ANCHORS + (torch.rand(batch, len(ANCHORS), 2, generator=gen) - 0.5) * STRIDES[:, None]
    size = (torch.rand(batch, len(ANCHORS), 2, generator=gen) * 3.5 + 0.5) * STRIDES[:, None]
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def reference_assign(pred, anchors, gt_boxes, gt_mask, thr):
    """Per-image, per-GT Python version of the assignment rule in ``assign``'s docstring."""
    batch, num_anchors = pred.shape[:2]
    pos = torch.zeros(batch, num_anchors, dtype=torch.bool)
    gt_index = torch.zeros(batch, num_anchors, dtype=torch.long)
    for b in range(batch):
        valid = [j for j in range(gt_boxes.shape[1]) if gt_mask[b, j]]
        if not valid:
            continue
        iou = box_iou(gt_boxes[b], pred[b])

        def inside(j, a, b=b):
            x1, y1, x2, y2 = gt_boxes[b, j].tolist()
            ax, ay = anchors[a].tolist()
            return x1 < ax < x2 and y1 < ay < y2

        for a in range(num_anchors):
            best, best_iou = None, -1.0
            for j in valid:
                if inside(j, a) and iou[j, a] >= thr and iou[j, a] > best_iou:
                    best, best_iou = j, iou[j, a].item()
            if best is not None:
                pos[b, a], gt_index[b, a] = True, best
        taken: set[int] = set()
        need = list(valid)
        for _ in range(FORCED_ROUNDS):
            proposals: dict[int, list[int]] = {}
            for j in need:
                rank = [
                    (iou[j, a].item() - (0.0 if inside(j, a) else 2.0), -a)
                    for a in range(num_anchors)
                    if a not in taken
                ]
                a = -max(rank)[1]  # highest rank, ties to the lowest anchor index
                proposals.setdefault(a, []).append(j)
            for a, js in proposals.items():
                winner = max(js, key=lambda j, a=a: (iou[j, a].item(), -j))
                pos[b, a], gt_index[b, a] = True, winner
                taken.add(a)
                need.remove(winner)
    return pos, gt_index


def test_pad_targets_keeps_each_images_boxes_in_order() -> None:
    targets = torch.tensor(
        [[2, 1, 0, 0, 5, 5], [0, 0, 1, 1, 2, 2], [2, 0, 3, 3, 9, 9], [0, 1, 4, 4, 8, 8]]
    ).float()
    boxes, labels, mask = pad_targets(targets, batch_size=4)
    assert boxes.shape == (4, 2, 4) and labels.dtype == torch.long
    assert mask.tolist() == [[True, True], [False, False], [True, True], [False, False]]
    assert boxes[0].tolist() == [[1, 1, 2, 2], [4, 4, 8, 8]]
    assert boxes[2].tolist() == [[0, 0, 5, 5], [3, 3, 9, 9]]
    assert labels[2].tolist() == [1, 0]
    assert (boxes[~mask] == 0).all()
    empty = pad_targets(torch.zeros(0, 6), batch_size=3)
    assert empty[0].shape == (3, 1, 4) and not empty[2].any()


def test_batched_box_iou_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    gt, _, _ = pad_targets(random_targets(gen, [3, 5]), 2)
    pred = random_preds(gen, 2)
    iou = batched_box_iou(gt, pred)
    for b in range(2):
        assert torch.allclose(iou[b], box_iou(gt[b], pred[b]))


@pytest.mark.parametrize("seed", range(6))
def test_assign_matches_per_image_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    counts = [int(c) for c in torch.randint(0, 7, (4,), generator=gen)]
    counts[seed % 4] = 0  # always one image with no boxes, so padding is exercised
    targets = random_targets(gen, counts)
    if seed == 0 and counts[1]:
        targets = torch.cat([targets, targets[targets[:, 0] == 1][:1]])  # an exact duplicate GT
    gt_boxes, gt_labels, gt_mask = pad_targets(targets, 4)
    pred = random_preds(gen, 4)
    thr = 0.1 + 0.1 * (seed % 3)
    pos, gt_index, iou = assign(pred, ANCHORS, gt_boxes, gt_labels, gt_mask, thr)
    ref_pos, ref_index = reference_assign(pred, ANCHORS, gt_boxes, gt_mask, thr)
    assert torch.equal(pos, ref_pos)
    assert torch.equal(gt_index[pos], ref_index[pos])
    assert (gt_index[~pos] == 0).all() and (iou[~pos] == 0).all()
    expected_iou = batched_box_iou(gt_boxes, pred).gather(1, gt_index[:, None]).squeeze(1)
    assert torch.allclose(iou[pos], expected_iou[pos])
    assert pos.sum() > gt_mask.sum()  # the threshold rule found positives beyond the forced ones


@pytest.mark.parametrize("seed", range(4))
def test_every_gt_gets_a_positive(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    targets = random_targets(gen, [8, 1, 0, 12])
    tiny = torch.tensor([[1, 0, 30.0, 30.0, 31.0, 31.0]])  # no anchor inside: best over all
    gt_boxes, gt_labels, gt_mask = pad_targets(torch.cat([targets, tiny]), 4)
    pred = random_preds(gen, 4)
    pos, gt_index, _ = assign(pred, ANCHORS, gt_boxes, gt_labels, gt_mask, thr=0.9)
    for b, j in gt_mask.nonzero().tolist():
        assert (pos[b] & (gt_index[b] == j)).any(), f"image {b} GT {j} has no positive"


def make_outputs(boxes: torch.Tensor, num_classes: int = 2) -> dict[str, torch.Tensor]:
    batch, a = boxes.shape[:2]
    return {
        "boxes": boxes.clone().requires_grad_(True),
        "obj": torch.zeros(batch, a, requires_grad=True),
        "cls": torch.zeros(batch, a, num_classes, requires_grad=True),
        "anchors": ANCHORS,
        "strides": STRIDES,
    }


@pytest.mark.parametrize("box_loss", ["giou", "ciou"])
def test_no_boxes_gives_finite_loss_and_zero_box_loss(box_loss: str) -> None:
    loss_fn = DetectionLoss(TrainConfig(box_loss=box_loss), num_classes=2)
    preds = random_preds(torch.Generator().manual_seed(0), 2)
    for targets in (torch.zeros(0, 6), torch.tensor([[1, 0, 10.0, 10.0, 40.0, 50.0]])):
        out = make_outputs(preds)
        losses = loss_fn(out, targets, epoch=0.0)
        assert all(torch.isfinite(v).all() for v in losses.values())
        losses["total"].backward()
        assert all(torch.isfinite(out[k].grad).all() for k in ("boxes", "obj", "cls"))
        if len(targets) == 0:
            assert losses["box"].item() == 0.0 and losses["cls"].item() == 0.0
            assert losses["num_pos"].item() == 0
            assert out["boxes"].grad.abs().sum() == 0
        else:  # image 0 has no boxes: no positive there, so no box gradient there
            assert losses["num_pos"].item() >= 1 and losses["box"].item() > 0
            assert out["boxes"].grad[0].abs().sum() == 0
    total = (losses["box"] + losses["cls"] + losses["obj"]).item()
    assert losses["total"].item() == pytest.approx(total)


@pytest.mark.parametrize("box_loss", ["giou", "ciou"])
def test_perfect_prediction_beats_bad_one(box_loss: str) -> None:
    loss_fn = DetectionLoss(TrainConfig(box_loss=box_loss), num_classes=2)
    gt = torch.tensor([[0, 1, 8.0, 8.0, 40.0, 56.0]])
    perfect = torch.tensor([8.0, 8.0, 40.0, 56.0]).expand(1, len(ANCHORS), 4)
    bad = perfect + torch.tensor([6.0, -5.0, 10.0, 3.0])
    good_loss = loss_fn(make_outputs(perfect), gt, epoch=0.0)
    bad_loss = loss_fn(make_outputs(bad), gt, epoch=0.0)
    assert good_loss["box"].item() < 1e-5
    assert bad_loss["box"].item() > 0.1
    assert good_loss["num_pos"] > 1  # every prediction inside the box reaches the threshold


def test_ciou_differs_from_giou_for_misshapen_box() -> None:
    gt = torch.tensor([[0, 0, 8.0, 8.0, 40.0, 56.0]])
    wide = torch.tensor([0.0, 16.0, 48.0, 48.0]).expand(1, len(ANCHORS), 4)
    giou = DetectionLoss(TrainConfig(box_loss="giou"), 2)(make_outputs(wide), gt, 0.0)["box"]
    ciou = DetectionLoss(TrainConfig(box_loss="ciou"), 2)(make_outputs(wide), gt, 0.0)["box"]
    assert math.isfinite(ciou.item()) and ciou.item() > 0
    assert not math.isclose(giou.item(), ciou.item(), rel_tol=1e-3)


def test_weights_applied_once() -> None:
    gen = torch.Generator().manual_seed(3)
    targets, preds = random_targets(gen, [3, 2]), random_preds(gen, 2)
    base = DetectionLoss(TrainConfig(), 2)(make_outputs(preds), targets, 5.0)
    cfg = TrainConfig(box_loss_weight=1.0, cls_loss_weight=2.0, obj_loss_weight=3.0)
    scaled = DetectionLoss(cfg, 2)(make_outputs(preds), targets, 5.0)
    assert scaled["box"].item() == pytest.approx(base["box"].item() / 7.5, rel=1e-5)
    assert scaled["cls"].item() == pytest.approx(base["cls"].item() * 4.0, rel=1e-5)
    assert scaled["obj"].item() == pytest.approx(base["obj"].item() * 3.0, rel=1e-5)


def rectangles_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with bright filled rectangles on noise, and their (N, 6) targets."""
    images = torch.rand(batch, 3, IMGSZ, IMGSZ, generator=gen) * 0.3
    targets = random_targets(gen, [2] * batch)
    for img, cls, x1, y1, x2, y2 in targets.tolist():
        colour = torch.tensor([1.0, 0.2, 0.2]) if cls == 0 else torch.tensor([0.2, 0.2, 1.0])
        images[int(img), :, int(y1) : int(y2), int(x1) : int(x2)] = colour[:, None, None]
    return images, targets


def test_model_loss_backward_finite_and_overfits_one_batch() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(imgsz=IMGSZ, neck_channels=16, dropout=0.0)
    model = CattleYOLO(2, cfg)
    loss_fn = DetectionLoss(cfg, 2)
    images, targets = rectangles_batch(gen, 2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = []
    for step in range(30):
        losses = loss_fn(model(images), targets, epoch=0.0)
        opt.zero_grad()
        losses["total"].backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
        history.append((losses["total"].item(), losses["box"].item()))
    totals, boxes = zip(*history, strict=True)
    assert all(math.isfinite(v) for v in totals)
    assert sum(totals[-5:]) / 5 < 0.5 * totals[0], totals
    assert boxes[-1] < 0.3 * boxes[0], boxes
