"""A model's raw output dict built from known boxes, for the fake models of the tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# one detection: (class, pixel xyxy box) or (class, box, class logit)
Detection = tuple[int, Sequence[float]] | tuple[int, Sequence[float], float]


def raw_output(
    per_image: Sequence[Sequence[Detection]], anchors: int, num_classes: int
) -> dict[str, torch.Tensor]:
    """The ``CattleYOLO.forward`` dict whose decoded boxes are exactly ``per_image``.

    ``per_image[j]`` lists image j's detections as ``(class, box)`` with a near-certain score,
    or ``(class, box, class logit)``; boxes are pixel xyxy in the letterboxed image. Each
    image needs at most ``anchors`` detections; unused anchors score ~0.
    """
    b = len(per_image)
    boxes = torch.zeros(b, anchors, 4)
    cls = torch.full((b, anchors, num_classes), -20.0)
    for j, detections in enumerate(per_image):
        for a, (c, box, *logit) in enumerate(detections):
            boxes[j, a] = torch.tensor(box, dtype=torch.float32)
            cls[j, a, c] = (logit or [20.0])[0]
    return {
        "boxes": boxes,
        "cls": cls,
        "anchors": torch.zeros(anchors, 2),
        "strides": torch.full((anchors,), 8.0),
    }
