"""COCO metrics with known answers, and ``evaluate`` over a fake model, loader and loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from model_outputs import raw_output
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cattle_yolo import stats as S
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import Item
from cattle_yolo.evaluate import coco_metrics, evaluate, split_detections

NAMES = ["cow", "calf"]


def gt(boxes: npt.ArrayLike, labels: npt.ArrayLike) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels),
    }


def det(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, labels: npt.ArrayLike
) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels),
    }


def test_perfect_detections_score_one() -> None:
    targets = [
        gt([[10, 10, 50, 90], [60, 20, 120, 80]], [0, 1]),
        gt([[0, 0, 30, 30]], [0]),
        gt([], []),  # a background image
    ]
    dets = [det(t["boxes"], np.full(len(t["labels"]), 0.9), t["labels"]) for t in targets]
    m = coco_metrics(dets, targets, NAMES)
    for key in (
        S.MAP50,
        S.MAP75,
        S.MAP50_95,
        S.PRECISION,
        S.RECALL,
        S.F1_AT_THRESHOLD,
        "AP50/cow",
        "AP50/calf",
    ):
        assert m[key] == pytest.approx(1.0), key


def test_torch_inputs_are_accepted() -> None:
    targets = [{"boxes": torch.tensor([[10.0, 10, 50, 90]]), "labels": torch.tensor([0])}]
    dets = [
        {"boxes": targets[0]["boxes"], "scores": torch.tensor([0.8]), "labels": torch.tensor([0])}
    ]
    assert coco_metrics(dets, targets, NAMES)[S.MAP50_95] == pytest.approx(1.0)


def test_iou_between_half_and_three_quarters() -> None:
    # IoU 0.62 passes the thresholds 0.50, 0.55 and 0.60 of the ten 0.50:0.05:0.95.
    targets = [gt([[0, 0, 100, 100]], [0])]
    dets = [det([[0, 0, 100, 62]], [0.9], [0])]
    m = coco_metrics(dets, targets, NAMES)
    assert m[S.MAP50] == pytest.approx(1.0)
    assert m[S.MAP75] == 0.0
    assert m[S.MAP50_95] == pytest.approx(0.3)
    assert m[S.PRECISION] == pytest.approx(1.0)
    assert m[S.RECALL] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("boxes", "scores", "n_gt", "expected"),
    [
        # One GT, a false positive ranked above the true positive: precision 1/2 at recall 1,
        # and COCO's envelope gives 0.5 at all 101 recall points.
        ([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], 1, 0.5),
        # Two GT, ranks TP FP TP: precision 1 up to recall 0.5 (51 points, 0.00..0.50),
        # then 2/3 up to recall 1 (50 points).
        (
            [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]],
            [0.9, 0.8, 0.7],
            2,
            (51 + 50 * 2 / 3) / 101,
        ),
    ],
)
def test_ranking_matches_101_point_interpolation(
    boxes: list[list[int]], scores: list[float], n_gt: int, expected: float
) -> None:
    targets = [gt([[0, 0, 10, 10], [20, 20, 30, 30]][:n_gt], [0] * n_gt)]
    m = coco_metrics([det(boxes, scores, [0] * len(scores))], targets, NAMES)
    assert m[S.MAP50] == pytest.approx(expected)
    assert m["AP50/cow"] == pytest.approx(expected)


def test_score_threshold_changes_precision_recall_but_never_map() -> None:
    targets = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    # ranks: TP 0.9, FP 0.3, TP 0.2
    dets = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.3, 0.2], [0, 0, 0])]
    by_thr = {
        thr: coco_metrics(dets, targets, NAMES, score_threshold=thr) for thr in (0.1, 0.25, 0.95)
    }
    assert len({m[S.MAP50_95] for m in by_thr.values()}) == 1
    assert len({m[S.MAP50] for m in by_thr.values()}) == 1
    assert (by_thr[0.1][S.PRECISION], by_thr[0.1][S.RECALL]) == pytest.approx((2 / 3, 1.0))
    assert (by_thr[0.25][S.PRECISION], by_thr[0.25][S.RECALL]) == pytest.approx((0.5, 0.5))
    assert by_thr[0.25][S.F1_AT_THRESHOLD] == pytest.approx(0.5)
    assert (by_thr[0.95][S.PRECISION], by_thr[0.95][S.RECALL], by_thr[0.95][S.F1_AT_THRESHOLD]) == (
        0.0,
        0.0,
        0.0,
    )


def test_duplicate_detections_count_once() -> None:
    # Greedy matching: the second box on the same object is a false positive.
    targets = [gt([[0, 0, 10, 10]], [0])]
    dets = [det([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5]], [0.9, 0.8], [0, 0])]
    m = coco_metrics(dets, targets, NAMES)
    assert (m[S.PRECISION], m[S.RECALL]) == pytest.approx((0.5, 1.0))
    assert m[S.MAP50] == pytest.approx(1.0)


def test_wrong_class_is_not_a_match() -> None:
    targets = [gt([[0, 0, 10, 10]], [0])]
    m = coco_metrics([det([[0, 0, 10, 10]], [0.9], [1])], targets, NAMES)
    assert m[S.MAP50] == 0.0
    assert m[S.PRECISION] == 0.0
    assert m[S.RECALL] == 0.0
    assert m["AP50/cow"] == 0.0
    assert math.isnan(m["AP50/calf"])


def test_two_classes_per_class_ap50() -> None:
    names = ["cow", "calf", "bull"]  # no bull in the ground truth
    targets = [gt([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    # cow: perfect; calf: a false positive above the true positive -> 0.5
    dets = [det([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 40, 40]], [0.9, 0.8, 0.7], [0, 1, 1])]
    m = coco_metrics(dets, targets, names)
    assert m["AP50/cow"] == pytest.approx(1.0)
    assert m["AP50/calf"] == pytest.approx(0.5)
    assert math.isnan(m["AP50/bull"])
    assert m[S.MAP50] == pytest.approx(0.75)  # mean over the classes that have ground truth


def test_more_than_100_detections_per_image_are_counted() -> None:
    # The true positive is ranked 150th: COCO's default cap of 100 would drop it.
    targets = [gt([[0, 0, 10, 10]], [0])]
    fps = [[100 + 20 * i, 100, 110 + 20 * i, 110] for i in range(149)]
    scores = np.linspace(0.9, 0.5, 149).tolist() + [0.4]
    dets = [det(fps + [[0, 0, 10, 10]], scores, [0] * 150)]
    assert coco_metrics(dets, targets, NAMES)[S.MAP50] == pytest.approx(1 / 150)
    assert coco_metrics(dets, targets, NAMES, max_dets=100)[S.MAP50] == 0.0


def test_no_detections_gives_zeros() -> None:
    targets = [gt([[0, 0, 10, 10]], [0]), gt([], [])]
    m = coco_metrics([det([], [], []), det([], [], [])], targets, NAMES)
    for key in (S.MAP50, S.MAP75, S.MAP50_95, S.PRECISION, S.RECALL, S.F1_AT_THRESHOLD, "AP50/cow"):
        assert m[key] == 0.0, key
    assert math.isnan(m["AP50/calf"])


def test_no_ground_truth_gives_zero_map() -> None:
    m = coco_metrics([det([[0, 0, 10, 10]], [0.9], [0])], [gt([], [])], NAMES)
    assert m[S.MAP50] == m[S.MAP50_95] == m[S.PRECISION] == m[S.RECALL] == 0.0
    assert math.isnan(m["AP50/cow"])
    assert math.isnan(m["AP50/calf"])


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\]: class id 2 but only 2 classes"):
        coco_metrics([det([], [], [])], [gt([[0, 0, 1, 1]], [2])], NAMES)
    with pytest.raises(ValueError, match="1 detection entries but 2 target entries"):
        coco_metrics([det([], [], [])], [gt([], []), gt([], [])], NAMES)


def test_split_detections_round_trip() -> None:
    dets = [
        {
            "boxes": torch.tensor([[1.0, 2, 3, 4]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        },
    ]
    out = split_detections(dets)
    assert [len(o["scores"]) for o in out] == [1, 0]
    np.testing.assert_array_equal(out[0]["boxes"], [[1, 2, 3, 4]])
    assert out[0]["labels"].dtype == np.int64
    assert out[0]["labels"][0] == 1


# --- evaluate() with a fake model, loader and loss ---------------------------------------

SIZE = 64
GT = [  # per image: (cls, x1, y1, x2, y2) in the letterboxed SIZE x SIZE image
    [(0, 4, 4, 20, 30)],
    [(1, 30, 10, 60, 40), (0, 2, 2, 12, 12)],
    [],
    [(0, 10, 20, 50, 60)],
    [(1, 0, 0, 16, 16)],
]


class FakeSet(Dataset[Item]):
    names = NAMES

    def __len__(self) -> int:
        return len(GT)

    def __getitem__(self, i: int) -> Item:
        image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
        image[0, 0, 0] = i  # the fake model reads the image index here
        target = torch.tensor(GT[i], dtype=torch.float32).reshape(-1, 5)
        return image, target, i


def collate(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, targets, indices = zip(*batch, strict=True)
    rows = [torch.cat([torch.full((len(t), 1), float(j)), t], 1) for j, t in enumerate(targets)]
    return torch.stack(images), torch.cat(rows), torch.tensor(indices)


class FakeModel(nn.Module):
    """Predicts every ground-truth box of the image it is shown, with a near-certain score."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors = 3  # at least the most boxes in one image

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images.dtype == torch.float32
        assert images.max() <= 1.0
        indices = (images[:, 0, 0, 0] * 255).round().long().tolist()
        per_image = [[(c, box) for c, *box in GT[i]] for i in indices]
        return raw_output(per_image, self.anchors, len(NAMES))


def fake_loss(
    outputs: dict[str, torch.Tensor], targets: torch.Tensor, epoch: float
) -> dict[str, torch.Tensor]:
    # box = number of target boxes in the batch, so its mean over batches is known.
    box = torch.tensor(float(len(targets)))
    cls, dfl = torch.tensor(2.0), torch.tensor(epoch)
    return {"box": box, "cls": cls, "dfl": dfl, "total": box + cls + dfl, "num_pos": box}


def test_evaluate_with_fake_model() -> None:
    loader = DataLoader(FakeSet(), batch_size=2, shuffle=False, collate_fn=collate)
    model = FakeModel().train()
    cfg = TrainConfig(imgsz=SIZE, batch=2)
    stats = evaluate(model, loader, fake_loss, cfg, "cpu", epoch=3.0)
    assert model.training  # mode restored

    assert stats[S.MAP50] == pytest.approx(1.0)
    assert stats[S.MAP50_95] == pytest.approx(1.0)
    assert stats[S.PRECISION] == pytest.approx(1.0)
    assert stats[S.RECALL] == pytest.approx(1.0)
    assert stats["AP50/cow"] == pytest.approx(1.0)
    assert stats["AP50/calf"] == pytest.approx(1.0)
    # batches hold 3, 1 and 1 boxes
    assert stats[S.VAL_BOX] == pytest.approx(5 / 3)
    assert stats[S.VAL_CLS] == pytest.approx(2.0)
    assert stats[S.VAL_DFL] == pytest.approx(3.0)
    assert stats[S.VAL_LOSS] == pytest.approx(5 / 3 + 5.0)
    assert all(type(v) is float for v in stats.values())
    assert {S.VAL_LOSS, S.VAL_BOX, S.VAL_CLS, S.VAL_DFL, S.MAP75, S.F1_AT_THRESHOLD} <= stats.keys()


def test_evaluate_scores_a_blind_model_zero() -> None:
    class Blind(FakeModel):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(images)
            out["cls"] = torch.full_like(out["cls"], -20.0)  # every score under the floor
            return out

    loader = DataLoader(FakeSet(), batch_size=4, collate_fn=collate)
    stats = evaluate(Blind(), loader, fake_loss, TrainConfig(imgsz=SIZE), "cpu", epoch=0.0)
    assert stats[S.MAP50_95] == 0.0
    assert stats[S.RECALL] == 0.0


def _random_scene(
    seed: int, n_images: int = 12
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Noisy detections of random ground truth: some near a box, some false, random scores."""
    rng = np.random.default_rng(seed)
    dets: list[dict[str, np.ndarray]] = []
    targets: list[dict[str, np.ndarray]] = []
    for _ in range(n_images):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(20, 60, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, k)
        targets.append(gt(boxes, labels))
        jitter = boxes + rng.normal(0, 6, boxes.shape)
        fp_xy = rng.uniform(0, 200, (3, 2))
        fp = np.concatenate([fp_xy, fp_xy + 30], 1)
        all_boxes = np.concatenate([jitter, fp])
        all_labels = np.concatenate([labels, rng.integers(0, 2, 3)])
        scores = rng.uniform(0.001, 1.0, len(all_boxes)).round(3)  # ties between scores too
        dets.append(det(all_boxes, scores, all_labels))
    return dets, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_threshold_is_the_brute_force_argmax_on_saved_detections(
    seed: int, tmp_path: Path
) -> None:
    from cattle_yolo.evaluate import load_detections, save_detections

    dets, targets = _random_scene(seed)
    save_detections(tmp_path / "d.npz", dets, targets)
    dets, targets = load_detections(tmp_path / "d.npz")  # the round trip loses nothing needed
    got = coco_metrics(dets, targets, NAMES)
    scores = sorted({float(s) for d in dets for s in d["scores"]})
    f1 = {
        t: coco_metrics(dets, targets, NAMES, score_threshold=t)[S.F1_AT_THRESHOLD] for t in scores
    }
    best = max(f1.values())
    assert got[S.BEST_F1] == pytest.approx(best)
    assert got[S.BEST_F1_THRESHOLD] == max(
        t for t, v in f1.items() if v == best
    )  # ties: the higher
    at = coco_metrics(dets, targets, NAMES, score_threshold=got[S.BEST_F1_THRESHOLD])
    assert (got[S.BEST_F1_PRECISION], got[S.BEST_F1_RECALL]) == pytest.approx(
        (at[S.PRECISION], at[S.RECALL])
    )
    # Within a range: the brute force over the scores inside it (and the range's ends).
    low, high = 0.3, 0.6
    ranged = coco_metrics(dets, targets, NAMES, threshold_range=(low, high))
    inside = [t for t in scores if low <= t <= high] + [low, high]
    f1_in = {
        t: coco_metrics(dets, targets, NAMES, score_threshold=t)[S.F1_AT_THRESHOLD] for t in inside
    }
    assert low <= ranged[S.BEST_F1_THRESHOLD] <= high
    assert ranged[S.BEST_F1] == pytest.approx(max(f1_in.values()))


def test_f1_sweep_edge_cases() -> None:
    from cattle_yolo.evaluate import f1_sweep

    none = f1_sweep(np.zeros(0), np.zeros(0, bool), n_gt=3)
    assert none == {
        S.BEST_F1: 0.0,
        S.BEST_F1_THRESHOLD: 1.0,
        S.BEST_F1_PRECISION: 0.0,
        S.BEST_F1_RECALL: 0.0,
    }
    perfect = f1_sweep(np.array([0.9, 0.8, 0.2]), np.array([True, True, False]), n_gt=2)
    assert perfect[S.BEST_F1] == 1.0
    assert perfect[S.BEST_F1_THRESHOLD] == pytest.approx(0.8)


def test_non_finite_outputs_are_counted_and_give_no_detections() -> None:
    """A blown-up model (NaN boxes or scores) gives no detections on those batches and is counted,
    so the training loop can call it diverged instead of scoring garbage boxes."""

    class BlownUp(FakeModel):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(images)
            out["boxes"] = out["boxes"] * float("nan")
            return out

    loader = DataLoader(FakeSet(), batch_size=2, shuffle=False, collate_fn=collate)
    stats = evaluate(BlownUp(), loader, fake_loss, TrainConfig(imgsz=SIZE, batch=2), "cpu", 3.0)
    assert stats[S.VAL_NONFINITE_BATCHES] == 3.0
    assert stats[S.MAP50] == 0.0
    assert stats[S.RECALL] == 0.0
    healthy = evaluate(FakeModel(), loader, fake_loss, TrainConfig(imgsz=SIZE, batch=2), "cpu", 3.0)
    assert healthy[S.VAL_NONFINITE_BATCHES] == 0.0
