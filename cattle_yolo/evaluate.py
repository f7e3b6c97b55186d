"""Validation: loss terms and COCO metrics (pycocotools) over a loader.

``coco_metrics`` scores detections with pycocotools' ``COCOeval``: mAP50, mAP75 and mAP50-95 over
every detection the caller passes (the model keeps everything above ``cfg.conf_floor``, 0.001, as
COCO and Ultralytics do), because mAP integrates over the whole ranked list and a score threshold
must never gate it. Precision, recall and F1 at ``score_threshold`` and per-class AP50 sit
beside it.

Boxes are pixel ``x1 y1 x2 y2`` throughout; they become COCO ``x y w h`` here, through
``cattle_yolo.boxes``. ``evaluate`` scores in the letterboxed ``imgsz`` space: a letterbox is a
uniform scale plus a shift, which leaves every IoU, and so every metric reported here, unchanged.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypedDict, cast

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cattle_yolo import stats as S
from cattle_yolo.boxes import xyxy_to_xywh
from cattle_yolo.config import TrainConfig
from cattle_yolo.device import autocast, autocast_dtype, model_input
from cattle_yolo.files import atomic_write
from cattle_yolo.model import postprocess

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from cattle_yolo.data import Item

COCO_MAX_DETS = 300  # detections per image coco_metrics counts by default (COCO itself: 100)
LOSS_KEYS = ("total", "box", "cls", "dfl")  # loss terms averaged over batches, reported as:
VAL_KEYS = (S.VAL_LOSS, S.VAL_BOX, S.VAL_CLS, S.VAL_DFL)


class _Named(Protocol):
    """A dataset with class names, as ``evaluate``'s ``loader.dataset`` must be."""

    @property
    def names(self) -> Sequence[str]: ...


def coco_categories(names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO ``categories`` for class names: ``id`` is the class index + 1 (COCO ids start at 1)."""
    return [{"id": k + 1, "name": str(n)} for k, n in enumerate(names)]


def _numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _flatten(
    items: Sequence[dict[str, Any]], num_classes: int, what: str, with_scores: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image dicts -> image index (N,), pixel xyxy (N, 4), labels (N,), scores (N,) arrays."""
    img, boxes, labels, scores = [], [], [], []
    for i, item in enumerate(items):
        b = _numpy(item["boxes"], np.float64).reshape(-1, 4)
        lab = _numpy(item["labels"], np.int64).reshape(-1)
        s = _numpy(item["scores"], np.float64).reshape(-1) if with_scores else np.ones(len(lab))
        if not len(b) == len(lab) == len(s):
            raise ValueError(
                f"{what}[{i}]: {len(b)} boxes, {len(lab)} labels"
                + (f", {len(s)} scores" if with_scores else "")
                + "; expected the same count"
            )
        bad = (lab < 0) | (lab >= num_classes)
        if bad.any():
            raise ValueError(
                f"{what}[{i}]: class id {int(lab[bad][0])} but only {num_classes} classes named"
            )
        img.append(np.full(len(lab), i, dtype=np.int64))
        boxes.append(b)
        labels.append(lab)
        scores.append(s)
    if not items:
        return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)
    return (
        np.concatenate(img),
        np.concatenate(boxes),
        np.concatenate(labels),
        np.concatenate(scores),
    )


def _empty_metrics(names: Sequence[str], gt_labels: np.ndarray, low: float) -> dict[str, float]:
    """Zeros for every metric; AP50 is 0.0 for classes with ground truth and nan for the rest."""
    out = {k: 0.0 for k in (S.MAP50_95, S.MAP50, S.MAP75, S.PRECISION, S.RECALL, S.F1_AT_THRESHOLD)}
    out.update({S.BEST_F1: 0.0, S.BEST_F1_THRESHOLD: low})
    out.update({S.BEST_F1_PRECISION: 0.0, S.BEST_F1_RECALL: 0.0})
    present = np.bincount(gt_labels, minlength=len(names)) > 0
    for k, name in enumerate(names):
        out[f"AP50/{name}"] = 0.0 if present[k] else math.nan
    return out


def coco_metrics(
    detections: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    names: Sequence[str],
    score_threshold: float = 0.25,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    max_dets: int = COCO_MAX_DETS,
    threshold_range: tuple[float, float] = (0.0, 1.0),
) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``targets``, one dict per image in both lists.

    Args:
        detections: per image ``"boxes"`` (K, 4) pixel xyxy, ``"scores"`` (K,), ``"labels"`` (K,)
            class indices; torch or numpy. Pass every detection above the model's low floor:
            nothing here gates the mAP by score.
        targets: per image ``"boxes"`` (M, 4) pixel xyxy and ``"labels"`` (M,), same image order.
        names: class names; a label is an index into it.
        score_threshold: detections scoring at least this count for precision, recall and F1.
        image_sizes: optional (width, height) per image, recorded in the COCO image entries.
        max_dets: detections per image COCOeval counts (the model's ``max_det``; at least 100).
        threshold_range: (low, high) bounds of the F1-best threshold the sweep may choose.

    Returns:
        ``mAP50_95``, ``mAP50``, ``mAP75`` (as COCOeval.summarize computes them: area "all",
        101-point interpolated precision averaged over classes with ground truth, at most
        ``max_dets`` detections per image); ``precision``, ``recall``, ``f1_at_threshold`` at
        ``score_threshold``, where a detection is a true positive if COCOeval's greedy
        matching (highest score first, same class, IoU >= 0.5) paired it with a ground-truth
        box; ``AP50/<name>`` per class, **nan** for a class with no ground-truth box (COCO
        leaves such a class out of the mean);
        ``best_f1``, ``best_f1_threshold``, ``best_f1_precision``, ``best_f1_recall``: the
        threshold chosen after training, the one with the best F1 over all classes (see
        ``f1_sweep``).
        Edge cases: no ground truth at all gives mAP 0 (COCO itself would give -1) and
        precision 0; no detections at all gives zeros (and nan AP50 for classes without boxes).
        Precision with no detection above the threshold is 0, as Ultralytics reports it.
    """
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection entries but {len(targets)} target entries")
    if image_sizes is not None and len(image_sizes) != len(targets):
        raise ValueError(f"{len(image_sizes)} image sizes but {len(targets)} images")
    if max_dets < 1:
        raise ValueError(f"max_dets = {max_dets} must be >= 1")
    num_classes = len(names)
    gt_img, gt_boxes, gt_labels, _ = _flatten(targets, num_classes, "targets", with_scores=False)
    dt_img, dt_boxes, dt_labels, dt_scores = _flatten(
        detections, num_classes, "detections", with_scores=True
    )
    if len(gt_labels) == 0 or len(dt_labels) == 0:
        # loadRes cannot take an empty result list, and with no ground truth COCOeval reports -1.
        return _empty_metrics(names, gt_labels, threshold_range[0])

    # COCO ids: image i -> i + 1, class k -> k + 1, annotations from 1 (COCOeval reads a matched
    # ground-truth id of 0 as "unmatched", so no id may be 0).
    images = [{"id": i + 1} for i in range(len(targets))]
    if image_sizes is not None:
        for entry, (w, h) in zip(images, image_sizes, strict=True):
            entry.update(width=int(w), height=int(h))
    gt_xywh = xyxy_to_xywh(gt_boxes)
    annotations = [
        {
            "id": j + 1,
            "image_id": i + 1,
            "category_id": c + 1,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 0,
        }
        for j, (i, c, (x, y, w, h)) in enumerate(
            zip(gt_img.tolist(), gt_labels.tolist(), gt_xywh.tolist(), strict=True)
        )
    ]
    categories = coco_categories(names)
    dt_xywh = xyxy_to_xywh(dt_boxes)
    results = [
        {"image_id": i + 1, "category_id": c + 1, "bbox": b, "score": s}
        for i, c, b, s in zip(
            dt_img.tolist(), dt_labels.tolist(), dt_xywh.tolist(), dt_scores.tolist(), strict=True
        )
    ]

    # pycocotools prints progress; the numbers are read from its arrays instead.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        # COCO counts at most 100 detections per image (maxDets [1, 10, 100]); the model keeps up
        # to max_det (300) per image above the 0.001 floor, as Ultralytics scores them, so the
        # last cap is raised. COCOeval.summarize() is not used: its stats[0] (mAP50-95) asks for
        # maxDets=100 literally and would read -1 once the cap is 300.
        ev.params.maxDets = [1, 10, max(max_dets, 100)]
        ev.evaluate()
        ev.accumulate()

    # precision: (T iou, R recall, K class, A area, M maxDets), -1 where a class has no GT.
    # Area "all" and the last (raised) maxDets cap, as COCOeval.summarize reads them.
    p = ev.params
    precision = ev.eval["precision"][:, :, :, p.areaRngLbl.index("all"), -1]
    iou50, iou75 = (int(np.argmin(np.abs(p.iouThrs - t))) for t in (0.5, 0.75))
    out = {
        S.MAP50_95: _mean_valid(precision),
        S.MAP50: _mean_valid(precision[iou50]),
        S.MAP75: _mean_valid(precision[iou75]),
    }
    out.update(_threshold_metrics(ev, score_threshold, threshold_range))
    for k, name in enumerate(names):
        col = precision[iou50, :, k]
        out[f"AP50/{name}"] = math.nan if (col < 0).all() else float(col.mean())
    return out


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the interpolated precisions COCO counts (entries > -1); 0 when there are none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def _threshold_metrics(
    ev: COCOeval, score_threshold: float, threshold_range: tuple[float, float]
) -> dict[str, float]:
    """Precision, recall and F1 at a score threshold from COCOeval's own IoU-0.5 matches.

    COCOeval matches greedily, highest score first, so the matches of the detections above the
    threshold are exactly those a separate matcher over only those detections would find.
    """
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    area_all = p.areaRngLbl.index("all")
    scores, matched, ignored = [np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0, bool)]
    n_gt = 0
    # evalImgs is ordered class, area range, image; take the "all" block of every class.
    for k in range(len(p.catIds)):
        start = (k * n_area + area_all) * n_img
        for e in ev.evalImgs[start : start + n_img]:
            if e is None:
                continue
            scores.append(np.asarray(e["dtScores"], dtype=np.float64))
            matched.append(np.asarray(e["dtMatches"])[0] > 0)  # row 0: IoU threshold 0.5
            ignored.append(np.asarray(e["dtIgnore"])[0].astype(bool))
            n_gt += int((np.asarray(e["gtIgnore"]) == 0).sum())
    s, m, ig = np.concatenate(scores), np.concatenate(matched), np.concatenate(ignored)
    s, m = s[~ig], m[~ig]
    kept = s >= score_threshold
    tp = int((kept & m).sum())
    precision = tp / max(int(kept.sum()), 1)
    recall = tp / max(n_gt, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out = {S.PRECISION: precision, S.RECALL: recall, S.F1_AT_THRESHOLD: f1}
    out.update(f1_sweep(s, m, n_gt, *threshold_range))
    return out


def f1_sweep(
    scores: np.ndarray, matched: np.ndarray, n_gt: int, low: float = 0.0, high: float = 1.0
) -> dict[str, float]:
    """The score threshold in ``[low, high]`` with the highest F1, chosen after training.

    ``scores`` (N,) are the detections' scores and ``matched`` (N,) whether each is a true
    positive at IoU 0.5 (COCOeval's greedy matching, which does not depend on the threshold);
    ``n_gt`` counts the ground-truth boxes. Every distinct score in the range is a candidate
    threshold (keeping the detections scoring at least it), and so are ``low`` and ``high``;
    ties go to the higher threshold (fewer detections for the same F1).

    Returns ``best_f1``, ``best_f1_threshold`` and the ``best_f1_precision`` and ``best_f1_recall``
    there. With no detection or no ground truth, F1 is 0 everywhere and the tie rule gives
    ``high`` (``coco_metrics`` reports ``low`` when it has nothing to score at all).
    """
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(matched[order])
    # Candidate t keeps the detections with score >= t: the first k of the sorted list.
    candidates = np.unique(np.concatenate([s[(s >= low) & (s <= high)], [low, high]]))
    kept = np.searchsorted(-s, -candidates, side="right")  # count of scores >= t
    tps = np.where(kept > 0, tp[np.maximum(kept - 1, 0)] if len(s) else 0, 0)
    precision = tps / np.maximum(kept, 1)
    recall = tps / max(n_gt, 1)
    total = precision + recall
    f1 = np.where(total > 0, 2 * precision * recall / np.maximum(total, 1e-12), 0.0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal F1s
    return {
        S.BEST_F1: float(f1[best]),
        S.BEST_F1_THRESHOLD: float(candidates[best]),
        S.BEST_F1_PRECISION: float(precision[best]),
        S.BEST_F1_RECALL: float(recall[best]),
    }


def split_detections(dets: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    """Postprocessed detections on any device -> numpy per image, with one device-to-host copy.

    ``dets``: per image ``"boxes"`` (K, 4), ``"scores"`` (K,), ``"labels"`` (K,).
    Returns per image ``"boxes"`` float32 (K, 4), ``"scores"`` float32 (K,), ``"labels"`` int64.
    """
    if not dets:
        return []
    counts = [int(d["scores"].shape[0]) for d in dets]
    packed = torch.cat(
        [
            torch.cat(
                [d["boxes"].float(), d["scores"].float()[:, None], d["labels"].float()[:, None]], 1
            )
            for d in dets
        ]
    )
    rows = np.split(packed.cpu().numpy(), np.cumsum(counts)[:-1])
    return [
        {"boxes": r[:, :4].copy(), "scores": r[:, 4].copy(), "labels": r[:, 5].astype(np.int64)}
        for r in rows
    ]


def _split_targets(targets: torch.Tensor, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Collated targets (N, 6) [img_idx, cls, x1, y1, x2, y2] -> per image boxes and labels."""
    t = targets.detach().cpu().numpy().reshape(-1, 6)
    order = np.argsort(t[:, 0], kind="stable")
    t = t[order]
    counts = np.bincount(t[:, 0].astype(np.int64), minlength=batch_size)
    rows = np.split(t, np.cumsum(counts)[:-1])
    return [{"boxes": r[:, 2:6], "labels": r[:, 1].astype(np.int64)} for r in rows]


class Evaluation(NamedTuple):
    """``evaluate_with_detections``' result: ``evaluate``'s stats and the per-image
    ``detections`` (``boxes``, ``scores``, ``labels``) and ``targets`` (``boxes``, ``labels``),
    pixel xyxy, that were scored."""

    stats: dict[str, float]
    detections: list[dict[str, np.ndarray]]
    targets: list[dict[str, np.ndarray]]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader[Item],
    loss_fn: Any,
    cfg: TrainConfig,
    device: torch.device | str,
    epoch: float,
    *,
    threshold_range: tuple[float, float] = (0.0, 1.0),
) -> dict[str, float]:
    """Validation loss and COCO metrics of ``model`` over ``loader``.

    ``loader`` yields ``(images, targets, indices)`` as ``data.collate`` builds them: images uint8
    (B, 3, S, S), targets float32 (N, 6) ``[img_idx, cls, x1, y1, x2, y2]`` pixel, and has
    ``loader.dataset.names``. ``loss_fn(outputs, targets, epoch)`` returns ``"box"``, ``"cls"``,
    ``"dfl"`` and ``"total"``. Detections are ``model.postprocess`` with ``cfg.conf_floor``,
    ``cfg.nms_iou`` and ``cfg.max_det``.

    Returns python floats: ``val_loss``, ``val_box``, ``val_cls``, ``val_dfl`` (means over
    batches), ``val_nonfinite_batches`` (batches whose boxes or scores held NaN or inf: they
    give no detections, and the training loop counts such a model as diverged) and the
    ``coco_metrics`` keys (``mAP50``, ``mAP75``, ``mAP50_95``, ``precision``, ``recall``,
    ``f1_at_threshold``, ``best_f1``, ``best_f1_threshold``..., ``AP50/<name>``: see
    ``cattle_yolo.stats``). The
    model's train/eval mode is restored afterwards. ``threshold_range`` bounds the F1-best
    threshold (``best_f1``, ``best_f1_threshold``...; a search's post-hoc range).
    ``evaluate_with_detections`` returns the detections that were scored too.
    """
    return evaluate_with_detections(
        model, loader, loss_fn, cfg, device, epoch, threshold_range=threshold_range
    ).stats


@torch.no_grad()
def evaluate_with_detections(
    model: torch.nn.Module,
    loader: DataLoader[Item],
    loss_fn: Any,
    cfg: TrainConfig,
    device: torch.device | str,
    epoch: float,
    *,
    threshold_range: tuple[float, float] = (0.0, 1.0),
) -> Evaluation:
    """``evaluate``, with the per-image detections and targets it scored: what a score
    threshold chosen after training is computed from (``save_detections``)."""
    device = torch.device(device)
    amp_dtype = autocast_dtype(cfg, device)
    names = list(cast(_Named, loader.dataset).names)
    was_training = model.training
    model.eval()
    loss_sums = torch.zeros(len(LOSS_KEYS), device=device, dtype=torch.float64)
    n_batches, nonfinite = 0, 0
    detections: list[dict[str, np.ndarray]] = []
    ground_truth: list[dict[str, np.ndarray]] = []
    try:
        for images, targets, _ in loader:
            batch_size = images.shape[0]
            ground_truth.extend(_split_targets(targets, batch_size))
            x = model_input(images, device, amp_dtype)
            t = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                outputs = model(x)
            # Loss and NMS in fp32: bf16 box coordinates are only good to ~2 px at 384.
            outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
            losses = loss_fn(outputs, t, epoch)
            loss_sums += torch.stack([losses[k].detach().double() for k in LOSS_KEYS])
            n_batches += 1
            if not bool(
                torch.isfinite(outputs["boxes"]).all() & torch.isfinite(outputs["cls"]).all()
            ):
                # A blown-up model: its NaN/inf boxes and scores are not detections.
                nonfinite += 1
                detections.extend(
                    {
                        "boxes": np.zeros((0, 4), np.float32),
                        "scores": np.zeros(0, np.float32),
                        "labels": np.zeros(0, np.int64),
                    }
                    for _ in range(batch_size)
                )
                continue
            dets = postprocess(outputs, cfg.conf_floor, cfg.nms_iou, cfg.max_det)
            detections.extend(split_detections(dets))  # one copy to the host per batch
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("evaluate: the validation loader yielded no batches")

    means = (loss_sums / n_batches).tolist()
    stats = {key: float(v) for key, v in zip(VAL_KEYS, means, strict=True)}
    stats[S.VAL_NONFINITE_BATCHES] = float(nonfinite)
    stats.update(
        coco_metrics(
            detections,
            ground_truth,
            names,
            cfg.score_threshold,
            max_dets=cfg.max_det,
            threshold_range=threshold_range,
        )
    )
    return Evaluation(stats, detections, ground_truth)


class _SavedDetections(TypedDict):
    """The arrays of ``save_detections``' ``.npz``, by name."""

    images: int
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_labels: np.ndarray
    det_scores: np.ndarray
    gt_image: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray


def save_detections(
    path: Path, detections: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]
) -> None:
    """Write scored detections and their ground truth (pixel xyxy, per image) to one ``.npz``,
    atomically: what a threshold chosen after training is computed from."""
    d_img, d_boxes, d_labels, d_scores = _flatten(detections, 1 << 30, "detections", True)
    g_img, g_boxes, g_labels, _ = _flatten(targets, 1 << 30, "targets", False)
    arrays: _SavedDetections = dict(
        images=len(targets),
        det_image=d_img,
        det_boxes=d_boxes.astype(np.float32),
        det_labels=d_labels,
        det_scores=d_scores.astype(np.float32),
        gt_image=g_img,
        gt_boxes=g_boxes.astype(np.float32),
        gt_labels=g_labels,
    )
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def load_detections(path: Path) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Read ``save_detections``' file back as (detections, targets) per image."""
    with np.load(path) as f:
        n = int(f["images"])

        def per_image(prefix: str, keys: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
            index = f[f"{prefix}_image"]
            return [{k: f[f"{prefix}_{k}"][index == i] for k in keys} for i in range(n)]

        return per_image("det", ("boxes", "scores", "labels")), per_image("gt", ("boxes", "labels"))


__all__ = [
    "Evaluation",
    "coco_metrics",
    "evaluate",
    "evaluate_with_detections",
    "f1_sweep",
    "load_detections",
    "save_detections",
    "split_detections",
    "COCO_MAX_DETS",
]
