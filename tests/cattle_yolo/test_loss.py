"""IoU gate, the task-aligned assigner against a per-image reference, DFL, and the loss terms."""

from __future__ import annotations

import math
from typing import Literal, TypedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from cattle_yolo.config import TrainConfig
from cattle_yolo.loss import (
    Assignment,
    DetectionLoss,
    assign,
    batched_box_iou,
    dfl_loss,
    iou_threshold,
    pad_targets,
)
from cattle_yolo.model import CattleYOLO, dfl_decode, dfl_encode, make_anchors, postprocess

IMGSZ = 64
STEPS = 100
ANCHORS, STRIDES = make_anchors([(8, 8), (4, 4), (2, 2)], (8, 16, 32), torch.device("cpu"))


class Tal(TypedDict):
    """``assign``'s settings: ``TrainConfig.tal_topk``, ``tal_alpha`` and ``tal_beta``."""

    topk: int
    alpha: float
    beta: float


TAL: Tal = {"topk": 10, "alpha": 0.5, "beta": 6.0}


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.25), (15, 0.35), (30, 0.45), (60, 0.45)])
def test_iou_threshold_ramp(epoch: float, expected: float) -> None:
    assert iou_threshold(epoch, TrainConfig()) == pytest.approx(expected)


def test_iou_threshold_without_ramp() -> None:
    assert iou_threshold(0, TrainConfig(iou_ramp_epochs=0)) == pytest.approx(0.45)


def random_targets(
    gen: torch.Generator, counts: list[int], num_classes: int = 2, min_size: float = 4.0
) -> torch.Tensor:
    """(N, 6) [img, cls, x1, y1, x2, y2] in a 64 px image, rows of different images shuffled."""
    rows = []
    for img, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=gen) * 48
        wh = torch.rand(n, 2, generator=gen) * (40 - min_size) + min_size
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


def reference_assign(  # noqa: C901, PLR0913 (assign's arguments; the rule loop by loop)
    scores: torch.Tensor,
    pred: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_mask: torch.Tensor,
    topk: int,
    alpha: float,
    beta: float,
    gate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-object Python version of the rule in ``assign``'s docstring."""
    batch, num_anchors, num_classes = scores.shape
    fg = torch.zeros(batch, num_anchors, dtype=torch.bool)
    gt_index = torch.zeros(batch, num_anchors, dtype=torch.long)
    target = torch.zeros(batch, num_anchors, num_classes)
    ignore = torch.zeros(batch, num_anchors, dtype=torch.bool)
    for b in range(batch):
        objects = [j for j in range(gt_boxes.shape[1]) if gt_mask[b, j]]
        iou = box_iou(gt_boxes[b], pred[b])
        align: dict[int, dict[int, float]] = {}  # per object: each candidate's alignment
        cand: dict[int, list[int]] = {}
        topk_of: dict[int, list[int]] = {}
        best_of: dict[int, int] = {}
        for j in objects:
            x1, y1, x2, y2 = gt_boxes[b, j].tolist()
            inside = [
                a for a in range(num_anchors) if x1 < anchors[a, 0] < x2 and y1 < anchors[a, 1] < y2
            ]
            if not inside:  # the anchor nearest the centre
                centre = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2])
                inside = [int(((anchors - centre) ** 2).sum(-1).argmin())]
            cand[j] = inside
            score = scores[b, :, gt_labels[b, j]]
            align[j] = {a: (score[a] ** alpha * iou[j, a] ** beta).item() for a in inside}
            ranked = sorted(inside, key=lambda a: -align[j][a])
            topk_of[j], best_of[j] = ranked[:topk], ranked[0]
        claims: dict[int, list[int]] = {}
        for j in objects:
            for a in topk_of[j]:
                if iou[j, a] >= gate or a == best_of[j]:
                    claims.setdefault(a, []).append(j)
        owner = {
            a: max(js, key=lambda j: (best_of[j] == a, iou[j, a].item(), -j))
            for a, js in claims.items()
        }
        taken = set(owner)
        for j in objects:  # orphans take their best spare candidate, the lower slot first
            if j not in owner.values():
                spare = [a for a in cand[j] if a not in taken]
                if spare:
                    a = max(spare, key=lambda a: align[j][a])
                    if a not in owner:
                        owner[a] = j
        for a, j in owner.items():
            fg[b, a], gt_index[b, a] = True, j
        for j in objects:
            mine = [a for a, k in owner.items() if k == j]
            if not mine:
                continue
            best_align = max(align[j][a] for a in mine)
            best_iou = max(iou[j, a].item() for a in mine)
            for a in mine:
                target[b, a, gt_labels[b, j]] = align[j][a] * best_iou / (best_align + 1e-9)
        for j in objects:
            for a in topk_of[j]:
                ignore[b, a] |= not fg[b, a]
    return fg, gt_index, target, ignore


def test_pad_targets_keeps_each_images_boxes_in_order() -> None:
    targets = torch.tensor(
        [[2, 1, 0, 0, 5, 5], [0, 0, 1, 1, 2, 2], [2, 0, 3, 3, 9, 9], [0, 1, 4, 4, 8, 8]]
    ).float()
    boxes, labels, mask = pad_targets(targets, batch_size=4)
    assert boxes.shape == (4, 2, 4)
    assert labels.dtype == torch.long
    assert mask.tolist() == [[True, True], [False, False], [True, True], [False, False]]
    assert boxes[0].tolist() == [[1, 1, 2, 2], [4, 4, 8, 8]]
    assert boxes[2].tolist() == [[0, 0, 5, 5], [3, 3, 9, 9]]
    assert labels[2].tolist() == [1, 0]
    assert (boxes[~mask] == 0).all()
    empty = pad_targets(torch.zeros(0, 6), batch_size=3)
    assert empty[0].shape == (3, 1, 4)
    assert not empty[2].any()


def test_batched_box_iou_matches_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    gt, _, _ = pad_targets(random_targets(gen, [3, 5]), 2)
    pred = random_preds(gen, 2)
    iou = batched_box_iou(gt, pred)
    for b in range(2):
        assert torch.allclose(iou[b], box_iou(gt[b], pred[b]))


@pytest.mark.parametrize("seed", range(8))
def test_assign_matches_per_image_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    counts = [int(c) for c in torch.randint(1, 7, (4,), generator=gen)]
    counts[seed % 4] = 0  # always one image with no objects, so padding is exercised
    targets = random_targets(gen, counts)
    extra = torch.tensor(
        [
            [(seed + 1) % 4, 1, 30.2, 30.2, 31.0, 31.0],  # tiny: no anchor inside
            [(seed + 2) % 4, 0, 0.0, 0.0, 64.0, 64.0],
        ]
    )  # image-sized
    targets = torch.cat([targets, extra])
    gt_boxes, gt_labels, gt_mask = pad_targets(targets, 4)
    pred = random_preds(gen, 4)
    scores = torch.rand(4, len(ANCHORS), 2, generator=gen)
    gate = (0.0, 0.2, 0.35, 0.9)[seed % 4]
    got = assign(scores, pred, ANCHORS, gt_boxes, gt_labels, gt_mask, **TAL, iou_gate=gate)
    fg, index, target, ignore = reference_assign(
        scores, pred, ANCHORS, gt_boxes, gt_labels, gt_mask, **TAL, gate=gate
    )
    assert torch.equal(got.fg, fg)
    assert torch.equal(got.gt_index[fg], index[fg])
    assert (got.gt_index[~fg] == 0).all()
    assert torch.allclose(got.scores, target, atol=1e-6)
    assert torch.equal(got.ignore, ignore)
    if gate < 0.5:
        assert got.fg.sum() > gt_mask.sum()  # several positives per object, not one
    else:  # a high gate leaves about the best candidate of each object
        assert got.fg.sum() <= gt_mask.sum()
        assert got.ignore.sum() > 0


def test_iou_gate_at_epoch_0_mid_ramp_and_after() -> None:
    """One object with ten candidates of known IoU: the gate keeps those at or above it (and
    always the best), and the rest of the top-k are ignored, not negatives."""
    box = torch.tensor([8.0, 8.0, 40.0, 56.0])
    cand = [a for a in range(len(ANCHORS)) if 8 < ANCHORS[a, 0] < 40 and 8 < ANCHORS[a, 1] < 56]
    ious = [0.9, 0.5, 0.44, 0.40, 0.36, 0.34, 0.30, 0.26, 0.24, 0.20] + [0.1] * (len(cand) - 10)
    pred = box.repeat(1, len(ANCHORS), 1)
    for anchor, q in zip(cand, ious, strict=True):  # width q of the object's: IoU = q
        pred[0, anchor, 2] = 8 + 32 * q
    gt = pad_targets(torch.tensor([[0, 0, *box.tolist()]]), 1)
    scores = torch.full((1, len(ANCHORS), 1), 0.5)
    cfg = TrainConfig()
    for epoch, kept in [(0, 8), (15, 5), (30, 2), (90, 2)]:
        a = assign(scores, pred, ANCHORS, *gt, **TAL, iou_gate=iou_threshold(epoch, cfg))
        assert a.fg.sum().item() == kept, epoch
        assert a.ignore.sum().item() == 10 - kept, epoch
        assert a.fg[0, cand[0]]
        assert a.scores[0, cand[0], 0].item() == pytest.approx(0.9)
    gate_all = assign(scores, pred, ANCHORS, *gt, **TAL, iou_gate=0.99)
    assert gate_all.fg.sum().item() == 1  # the best candidate survives any gate


def test_every_object_gets_positives_at_init_on_its_level() -> None:
    """The model as built: at step 0 every object, tiny to image-sized, has a positive under
    the default IoU gate, and without the gate the top-k give objects several each (the seed's
    IoU match gave about one)."""
    torch.manual_seed(0)
    cfg = TrainConfig(imgsz=128, neck_channels=16)
    model = CattleYOLO(2, cfg).eval()
    gen = torch.Generator().manual_seed(1)
    rows = []
    for img in range(4):
        for _ in range(5):
            wh = torch.rand(2, generator=gen) * 100 + 4
            xy = torch.rand(2, generator=gen) * (128 - wh)
            rows.append([img, img % 2, *xy.tolist(), *(xy + wh).tolist()])
    rows += [[0, 0, 60.5, 60.5, 62.0, 62.0], [1, 1, 0.0, 0.0, 128.0, 128.0]]
    targets = torch.tensor(rows)
    with torch.no_grad():
        out = model(torch.rand(4, 3, 128, 128, generator=gen))
    gt_boxes, gt_labels, gt_mask = pad_targets(targets, 4)

    def positives(gate: float) -> tuple[torch.Tensor, Assignment]:
        a = assign(
            out["cls"].sigmoid(),
            out["boxes"],
            out["anchors"],
            gt_boxes,
            gt_labels,
            gt_mask,
            **TAL,
            iou_gate=gate,
        )
        per_object = torch.stack(
            [torch.bincount(a.gt_index[b][a.fg[b]], minlength=gt_mask.shape[1]) for b in range(4)]
        )
        return per_object[gt_mask], a

    gated, a = positives(iou_threshold(0, cfg))
    assert (gated >= 1).all()
    ungated, _ = positives(0.0)
    assert (ungated >= 1).all()
    assert ungated.float().mean() >= 5
    # the tiny object's positive is the stride-8 anchor of the cell holding its centre
    tiny = (gt_boxes[0] == torch.tensor([60.5, 60.5, 62.0, 62.0])).all(-1).nonzero().item()
    (anchor,) = (a.fg[0] & (a.gt_index[0] == tiny)).nonzero()[:, 0].tolist()
    assert out["strides"][anchor] == 8
    assert out["anchors"][anchor].tolist() == [60.0, 60.0]


def test_dfl_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    reg_max = 16
    ltrb = torch.rand(2, len(ANCHORS), 4, generator=gen) * (reg_max - 1.01)
    s = STRIDES[:, None]
    boxes = torch.cat([ANCHORS - ltrb[..., :2] * s, ANCHORS + ltrb[..., 2:] * s], -1)
    encoded = dfl_encode(boxes, ANCHORS, STRIDES, reg_max)
    assert torch.allclose(encoded, ltrb, atol=1e-4)
    # a distribution on the two bins around each distance decodes to it exactly
    left = encoded.floor()
    probs = (
        F.one_hot(left.long(), reg_max) * (left + 1 - encoded)[..., None]
        + F.one_hot(left.long() + 1, reg_max) * (encoded - left)[..., None]
    )
    decoded = dfl_decode(probs.clamp(min=1e-12).log(), ANCHORS, STRIDES)
    assert torch.allclose(decoded, boxes, atol=1e-3)
    # ... and it is where DFL is lowest: moving the mass one bin costs more
    assert (
        dfl_loss(probs.clamp(min=1e-12).log(), encoded)
        < dfl_loss(probs.roll(1, -1).clamp(min=1e-12).log(), encoded)
    ).all()
    # far distances clip to the span DFL can represent
    far = torch.tensor([[-500.0, -500.0, 500.0, 500.0]]).expand(1, len(ANCHORS), 4)
    assert (dfl_encode(far, ANCHORS, STRIDES, reg_max) <= reg_max - 1 - 0.01 + 1e-6).all()


def grad(t: torch.Tensor) -> torch.Tensor:
    """``t``'s gradient, which a backward pass has filled."""
    assert t.grad is not None
    return t.grad


def make_outputs(
    boxes: torch.Tensor, num_classes: int = 2, dist: bool = False
) -> dict[str, torch.Tensor]:
    batch, a = boxes.shape[:2]
    out = {
        "boxes": boxes.clone().requires_grad_(True),
        "cls": torch.zeros(batch, a, num_classes, requires_grad=True),
        "anchors": ANCHORS,
        "strides": STRIDES,
    }
    if dist:
        out["dist"] = torch.zeros(batch, a, 4, 16, requires_grad=True)
    return out


@pytest.mark.parametrize("box_loss", ["giou", "ciou"])
def test_no_objects_gives_finite_loss_and_zero_box_and_dfl(
    box_loss: Literal["giou", "ciou"],
) -> None:
    loss_fn = DetectionLoss(TrainConfig(box_loss=box_loss), num_classes=2)
    preds = random_preds(torch.Generator().manual_seed(0), 2)
    for targets in (torch.zeros(0, 6), torch.tensor([[1, 0, 10.0, 10.0, 40.0, 50.0]])):
        out = make_outputs(preds, dist=True)
        losses = loss_fn(out, targets, epoch=0.0)
        assert all(torch.isfinite(v).all() for v in losses.values())
        losses["total"].backward()
        assert all(torch.isfinite(grad(out[k])).all() for k in ("boxes", "cls", "dist"))
        if len(targets) == 0:
            assert losses["box"].item() == 0.0
            assert losses["dfl"].item() == 0.0
            assert losses["num_pos"].item() == 0
            assert losses["cls"].item() > 0
            assert grad(out["boxes"]).abs().sum() == 0
            assert grad(out["dist"]).abs().sum() == 0
        else:  # image 0 has no objects: no positive there, so no box gradient there
            assert losses["num_pos"].item() >= 1
            assert losses["box"].item() > 0
            assert losses["dfl"].item() > 0
            assert grad(out["boxes"])[0].abs().sum() == 0
    total = (losses["box"] + losses["cls"] + losses["dfl"]).item()
    assert losses["total"].item() == pytest.approx(total)


@pytest.mark.parametrize("box_loss", ["giou", "ciou"])
def test_perfect_prediction_beats_bad_one(box_loss: Literal["giou", "ciou"]) -> None:
    loss_fn = DetectionLoss(TrainConfig(box_loss=box_loss), num_classes=2)
    gt = torch.tensor([[0, 1, 8.0, 8.0, 40.0, 56.0]])
    perfect = torch.tensor([8.0, 8.0, 40.0, 56.0]).expand(1, len(ANCHORS), 4)
    bad = perfect + torch.tensor([6.0, -5.0, 10.0, 3.0])
    good_loss = loss_fn(make_outputs(perfect), gt, epoch=0.0)
    bad_loss = loss_fn(make_outputs(bad), gt, epoch=0.0)
    assert good_loss["box"].item() < 1e-5
    assert bad_loss["box"].item() > 0.1
    assert good_loss["num_pos"] == 10  # the top-k, all through the gate


def test_ciou_differs_from_giou_for_misshapen_box() -> None:
    gt = torch.tensor([[0, 0, 8.0, 8.0, 40.0, 56.0]])
    wide = torch.tensor([0.0, 16.0, 48.0, 48.0]).expand(1, len(ANCHORS), 4)
    giou = DetectionLoss(TrainConfig(box_loss="giou"), 2)(make_outputs(wide), gt, 0.0)["box"]
    ciou = DetectionLoss(TrainConfig(box_loss="ciou"), 2)(make_outputs(wide), gt, 0.0)["box"]
    assert math.isfinite(ciou.item())
    assert ciou.item() > 0
    assert not math.isclose(giou.item(), ciou.item(), rel_tol=1e-3)


def test_weights_applied_once() -> None:
    """box_loss_weight, cls_loss_weight and dfl_loss_weight scale their term and nothing else."""
    gen = torch.Generator().manual_seed(3)
    targets, preds = random_targets(gen, [3, 2]), random_preds(gen, 2)
    base = DetectionLoss(TrainConfig(), 2)(make_outputs(preds, dist=True), targets, 5.0)
    cfg = TrainConfig(box_loss_weight=1.0, cls_loss_weight=2.0, dfl_loss_weight=3.0)
    scaled = DetectionLoss(cfg, 2)(make_outputs(preds, dist=True), targets, 5.0)
    assert scaled["box"].item() == pytest.approx(base["box"].item() / 7.5, rel=1e-5)
    assert scaled["cls"].item() == pytest.approx(base["cls"].item() * 4.0, rel=1e-5)
    assert scaled["dfl"].item() == pytest.approx(base["dfl"].item() * 2.0, rel=1e-5)


def test_focal_gamma_zero_is_bce_and_gamma_modulates() -> None:
    gen = torch.Generator().manual_seed(5)
    targets, preds = random_targets(gen, [4, 3]), random_preds(gen, 2)
    out = make_outputs(preds)
    out["cls"] = torch.randn(2, len(ANCHORS), 2, generator=gen)
    gt = pad_targets(targets, 2)
    a = assign(out["cls"].sigmoid(), preds, ANCHORS, *gt, **TAL, iou_gate=0.25)
    assert a.ignore.any()  # the comparison covers ignored anchors too
    norm = a.scores.sum().clamp(min=1)
    bce = F.binary_cross_entropy_with_logits(out["cls"], a.scores, reduction="none")
    expected = torch.where(a.ignore[..., None], 0.0, bce).sum() / norm
    cfg = TrainConfig(focal_gamma=0.0, cls_loss_weight=1.0)
    got = DetectionLoss(cfg, 2)(out, targets, 0.0)["cls"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    gap = (a.scores - out["cls"].sigmoid()).abs()
    qfl = torch.where(a.ignore[..., None], 0.0, bce * gap**1.5).sum() / norm
    got = DetectionLoss(cfg.replace(focal_gamma=1.5), 2)(out, targets, 0.0)["cls"]
    assert got.item() == pytest.approx(qfl.item(), rel=1e-5)


def rectangles_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with bright filled rectangles (24 to 40 px) on noise, and their (N, 6) targets.

    Not smaller: at init a DFL box is 15 strides wide, so a 5 px object's IoU, and with it its
    target score and the weight of its box terms, starts near 0 and it learns slowly (YOLOv8's
    init has the same property)."""
    images = torch.rand(batch, 3, IMGSZ, IMGSZ, generator=gen) * 0.3
    targets = random_targets(gen, [2] * batch, min_size=24.0)
    for img, cls, x1, y1, x2, y2 in targets.tolist():
        colour = torch.tensor([1.0, 0.2, 0.2]) if cls == 0 else torch.tensor([0.2, 0.2, 1.0])
        images[int(img), :, int(y1) : int(y2), int(x1) : int(x2)] = colour[:, None, None]
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("box_head", ["dfl", "exp"])
def test_model_loss_backward_finite_and_overfits_one_batch(
    box_head: Literal["dfl", "exp"],
) -> None:
    """Gradients are finite, and after 80 steps on one batch every object is found: the best
    of its image's top 5 detections overlaps it with IoU > 0.5. (The total loss is no measure
    here: under TAL it grows while the target scores, which are IoUs, grow.)"""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(imgsz=IMGSZ, neck_channels=16, box_head=box_head)
    model = CattleYOLO(2, cfg)
    loss_fn = DetectionLoss(cfg, 2)
    images, targets = rectangles_batch(gen, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(STEPS):
        losses = loss_fn(model(images), targets, epoch=0.0)
        opt.zero_grad()
        losses["total"].backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads
            assert all(torch.isfinite(g).all() for g in grads)
        opt.step()
        assert math.isfinite(losses["total"].item())
    model.eval()
    with torch.no_grad():
        dets = postprocess(model(images), conf_floor=0.001, nms_iou=0.7, max_det=300)
    for b in range(2):
        gt = targets[targets[:, 0] == b, 2:]
        assert (box_iou(gt, dets[b]["boxes"][:5]).max(1).values > 0.5).all(), b


def test_collapsed_class_scores_mark_the_step_dead() -> None:
    """Scores underflowed to 0 (a blown-up learning rate): every alignment, so every target, is
    0 and the step cannot learn; the loss says so and the engine skips such steps."""
    gen = torch.Generator().manual_seed(7)
    targets, preds = random_targets(gen, [2, 1]), random_preds(gen, 2)
    loss_fn = DetectionLoss(TrainConfig(), 2)
    alive = loss_fn(make_outputs(preds), targets, 0.0)
    out = make_outputs(preds)
    out["cls"] = torch.full_like(out["cls"], -200.0)
    dead = loss_fn(out, targets, 0.0)
    assert not alive["dead"]
    assert dead["dead"]
    assert not loss_fn(out, torch.zeros(0, 6), 0.0)["dead"]  # no objects: nothing to collapse


@pytest.mark.parametrize("dist", [False, True], ids=["exp", "dfl"])
def test_blown_up_outputs_give_a_nan_loss_not_an_error(dist: bool) -> None:
    """A model whose weights blew up outputs NaN boxes and distributions: the loss must be NaN
    (the engine skips the step, the training loop calls it diverged), never an exception. Before
    the fix, NaN distances became an int64 index of -2**63 in ``dfl_loss``'s gather."""
    loss_fn = DetectionLoss(TrainConfig(), num_classes=2)
    targets = random_targets(torch.Generator().manual_seed(0), [2, 1])
    out = make_outputs(torch.full((2, len(ANCHORS), 4), float("nan")), dist=dist)
    if dist:
        out["dist"] = torch.full((2, len(ANCHORS), 4, 16), float("nan"))
    losses = loss_fn(out, targets, epoch=0.0)
    assert math.isnan(losses["total"].item())
    # ... and with NaN only on the negatives the box term stays finite (no NaN x 0)
    out = make_outputs(random_preds(torch.Generator().manual_seed(1), 2), dist=dist)
    fg = loss_fn(out, targets, epoch=0.0)["num_pos"]
    assert fg.item() > 0
    boxes = out["boxes"].detach().clone()
    a = assign(
        torch.zeros(2, len(ANCHORS), 2).sigmoid(),
        boxes,
        ANCHORS,
        *pad_targets(targets, 2),
        iou_gate=0.25,
        **TAL,
    )
    boxes[~a.fg] = float("nan")
    box = loss_fn(make_outputs(boxes), targets, epoch=0.0)["box"]
    assert math.isfinite(box.item())
    assert box.item() > 0


def test_dfl_loss_of_a_non_finite_target_is_nan_not_an_error() -> None:
    dist = torch.zeros(1, 2, 4, 16)
    target = torch.tensor([[[1.5, 2.0, float("nan"), 3.0], [float("inf"), 0, 0, 0]]])
    out = dfl_loss(dist, target)
    assert out.shape == (1, 2)
    assert out.isnan().all()


def test_a_zero_size_predicted_box_gives_a_finite_ciou_loss_and_gradient() -> None:
    """CIoU's aspect term is atan(w / h): a 0x0 box gave 0 / 0 = NaN before the minimum size."""
    loss_fn = DetectionLoss(TrainConfig(box_loss="ciou"), num_classes=2)
    targets = torch.tensor([[0, 0, 10.0, 10.0, 40.0, 50.0]])
    boxes = random_preds(torch.Generator().manual_seed(0), 1)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    out = make_outputs(torch.cat([centre, centre], -1))  # every predicted box 0x0
    losses = loss_fn(out, targets, epoch=0.0)
    assert losses["num_pos"].item() > 0
    assert math.isfinite(losses["box"].item())
    losses["total"].backward()
    assert torch.isfinite(grad(out["boxes"])).all()
