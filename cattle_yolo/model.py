"""The detector: ResNet18 backbone, FPN+PAN neck and a YOLOv8-style decoupled head per level.

Box formats: the model takes float images ``(B, 3, S, S)`` in [0, 1] (letterboxed) and returns
pixel ``x1 y1 x2 y2`` boxes in that ``S`` x ``S`` image. Every anchor is one grid cell centre at
strides 8, 16 and 32; levels are concatenated stride 8 first, each in row-major (y, x) order.

Per anchor the head predicts ``C`` class logits (no objectness: the class score is trained to be
IoU-aware) and a box, in one of two forms (``TrainConfig.box_head``):

- ``dfl`` (YOLOv8): for each of the left, top, right and bottom distances from the anchor point a
  distribution over ``reg_max`` bins ``0 .. reg_max - 1`` strides; the distance is its mean
  (``dfl_decode``), and the distribution itself is trained by the DFL term of the loss.
- ``exp`` (the seed's): ``centre = anchor + t_xy * stride``,
  ``size = exp(clamp(t_wh, -wh_clamp, wh_clamp)) * stride``.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

from cattle_yolo.config import TrainConfig

OBJECTS_PRIOR = 5.0  # objects per image the class bias assumes at init, spread over a level
DFL_BIAS = 1.0  # initial DFL logits: every bin alike, as Ultralytics starts
MAX_NMS_CANDIDATES = 3000  # (anchor, class) pairs per image kept by score before NMS
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_CHANNELS = (128, 256, 512)  # ResNet18 layer2, layer3, layer4 (strides 8, 16, 32)
AnchorKey = tuple[tuple[tuple[int, int], ...], str]  # (feature sizes, device): anchors_for's key


def conv_bn_act(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> SiLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(inplace=True),
    )


def build_backbone(pretrained: bool) -> ResNet:
    """torchvision ResNet18, random init or ImageNet weights; the classifier is removed.

    Raises RuntimeError with what to do when the weights cannot be downloaded (offline).
    """
    net = resnet18(weights=None)
    if pretrained:
        weights = ResNet18_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # URLError, HTTPError, socket errors, hash mismatch: all "can't get"
            hub = torch.hub.get_dir()
            name = weights.url.rsplit("/", 1)[-1]
            raise RuntimeError(
                "pretrained: true needs torchvision's ImageNet ResNet18 weights from "
                f"{weights.url}, "
                f"which could not be loaded ({type(e).__name__}: {e}). If this machine is offline, "
                f"set pretrained: false, or put the file {name} in $TORCH_HOME/hub/checkpoints "
                f"(here {hub}/checkpoints/{name})."
            ) from e
        net.load_state_dict(state)
    del net.fc, net.avgpool
    return net


class FPNPAN(nn.Module):
    """Light FPN (top-down) + PAN (bottom-up) neck: three inputs -> three ``channels`` maps."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_act(c, channels, k=1) for c in in_channels)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td = nn.ModuleList(conv_bn_act(channels, channels) for _ in range(2))  # P4, P3
        self.down = nn.ModuleList(conv_bn_act(channels, channels, s=2) for _ in range(2))
        self.bu = nn.ModuleList(conv_bn_act(channels, channels) for _ in range(2))  # N4, N5

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = (lat(f) for lat, f in zip(self.lateral, feats, strict=True))
        p5 = c5
        p4 = self.td[0](c4 + self.up(p5))
        p3 = self.td[1](c3 + self.up(p4))
        n4 = self.bu[0](p4 + self.down[0](p3))
        n5 = self.bu[1](p5 + self.down[1](n4))
        return [p3, n4, n5]


class DecoupledHead(nn.Module):
    """One level's head: a box branch and a class branch of two convs each, then 1x1 predictions.

    Output ``(B, box_channels + C, H, W)``: the box channels (``4 * reg_max`` DFL logits, side
    major: all bins of the left distance first; or ``t_x, t_y, t_w, t_h``), then ``C`` class
    logits. Biases start as Ultralytics': the class logit at the prior of ``OBJECTS_PRIOR``
    objects per image over the level's ``(imgsz / stride) ** 2`` cells, the DFL logits uniform.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        box_channels: int,
        dropout: float,
        stride: int,
        imgsz: int,
    ) -> None:
        super().__init__()
        self.box_branch = nn.Sequential(
            conv_bn_act(channels, channels), conv_bn_act(channels, channels)
        )
        self.cls_branch = nn.Sequential(
            conv_bn_act(channels, channels), conv_bn_act(channels, channels)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.box_pred = nn.Conv2d(channels, box_channels, 1)
        self.cls_pred = nn.Conv2d(channels, num_classes, 1)
        # Small prediction weights start every box at its prior (uniform DFL bins, or one stride
        # on the anchor for the exp head).
        for conv in (self.box_pred, self.cls_pred):
            nn.init.normal_(conv.weight, std=0.01)
        prior = min(0.5, OBJECTS_PRIOR / num_classes / (imgsz / stride) ** 2)
        assert self.box_pred.bias is not None
        assert self.cls_pred.bias is not None
        nn.init.constant_(self.box_pred.bias, DFL_BIAS if box_channels != 4 else 0.0)
        nn.init.constant_(self.cls_pred.bias, math.log(prior / (1 - prior)))

    def forward(self, x: Tensor) -> Tensor:
        box = self.box_pred(self.dropout(self.box_branch(x)))
        cls = self.cls_pred(self.dropout(self.cls_branch(x)))
        return torch.cat([box, cls], dim=1)


def make_anchors(
    sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cell centres ``(A, 2)`` pixel x, y and strides ``(A,)``, float32, levels concatenated."""
    centres, level_strides = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack([gx, gy], dim=-1).reshape(-1, 2))
        level_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(centres), torch.cat(level_strides)


def dfl_decode(dist_logits: Tensor, anchors: Tensor, strides: Tensor) -> Tensor:
    """``(B, A, 4, reg_max)`` DFL logits -> ``(B, A, 4)`` pixel xyxy, in float32.

    Each side's distance (left, top, right, bottom, in strides) is the mean of the softmax over
    bins ``0 .. reg_max - 1``; ``anchors`` ``(A, 2)`` pixel points, ``strides`` ``(A,)``.
    """
    bins = torch.arange(dist_logits.shape[-1], device=dist_logits.device, dtype=torch.float32)
    ltrb = dist_logits.float().softmax(-1) @ bins * strides[:, None]
    return torch.cat([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], dim=-1)


def dfl_encode(boxes: Tensor, anchors: Tensor, strides: Tensor, reg_max: int) -> Tensor:
    """Pixel xyxy ``(..., A, 4)`` -> the l, t, r, b distances ``(..., A, 4)`` from each anchor in
    strides, clipped to ``[0, reg_max - 1 - 0.01]`` (the span DFL can represent); the inverse of
    ``dfl_decode`` for distances inside that span."""
    ltrb = torch.cat([anchors - boxes[..., :2], boxes[..., 2:] - anchors], dim=-1)
    return (ltrb / strides[:, None]).clamp(0, reg_max - 1 - 0.01)


def decode_boxes(raw_box: Tensor, anchors: Tensor, strides: Tensor, wh_clamp: float) -> Tensor:
    """The exp head: ``(B, A, 4)`` t_x, t_y, t_w, t_h -> ``(B, A, 4)`` pixel xyxy, in float32.

    ``anchors`` ``(A, 2)`` pixel cell centres, ``strides`` ``(A,)``.
    """
    raw_box = raw_box.float()
    s = strides[:, None]
    centre = anchors + raw_box[..., :2] * s
    size = torch.exp(raw_box[..., 2:4].clamp(-wh_clamp, wh_clamp)) * s
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


class CattleYOLO(nn.Module):
    """ResNet18 + FPN/PAN + decoupled YOLOv8-style heads at strides 8, 16, 32.

    ``forward(images)`` takes float ``(B, 3, S, S)`` in [0, 1] (uint8 is accepted and scaled) and
    returns a dict:

    - ``"boxes"`` ``(B, A, 4)`` float32 pixel xyxy in the ``S`` x ``S`` input,
    - ``"cls"`` ``(B, A, C)`` float32 class logits,
    - ``"dist"`` ``(B, A, 4, reg_max)`` float32 DFL logits (dfl head only),
    - ``"anchors"`` ``(A, 2)`` float32 pixel cell centres (x, y),
    - ``"strides"`` ``(A,)`` float32 stride of each anchor,

    with ``A = sum((S / s) ** 2 for s in (8, 16, 32))``.
    """

    strides = (8, 16, 32)
    mean: Tensor  # buffers registered in __init__
    std: Tensor

    def __init__(self, num_classes: int, cfg: TrainConfig) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.box_head, self.reg_max, self.wh_clamp = cfg.box_head, cfg.reg_max, cfg.wh_clamp
        self.box_channels = 4 * cfg.reg_max if cfg.box_head == "dfl" else 4
        self.backbone = build_backbone(cfg.pretrained)
        self.neck = FPNPAN(BACKBONE_CHANNELS, cfg.neck_channels)
        self.heads = nn.ModuleList(
            DecoupledHead(
                cfg.neck_channels, num_classes, self.box_channels, cfg.dropout, s, cfg.imgsz
            )
            for s in self.strides
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._anchor_cache: dict[AnchorKey, tuple[Tensor, Tensor]] = {}

    def anchors_for(
        self, sizes: list[tuple[int, int]], device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Cached ``make_anchors`` for one set of feature sizes and device."""
        key = (tuple(sizes), str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(sizes, self.strides, device)
        return self._anchor_cache[key]

    def features(self, images: Tensor) -> list[Tensor]:
        """Normalized images -> backbone features at strides 8, 16, 32."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        return [c3, c4, c5]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if not images.is_floating_point():
            images = images.float() / 255.0
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        levels = self.neck(self.features(x))
        outs = [head(f) for head, f in zip(self.heads, levels, strict=True)]
        anchors, strides = self.anchors_for([tuple(o.shape[-2:]) for o in outs], images.device)
        # (B, K, H, W) -> (B, H*W, K): cheap for channels_last, correct for either layout.
        raw = torch.cat(
            [o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, o.shape[1]) for o in outs], 1
        )
        raw = raw.float()  # decode and return float32 even under autocast
        box, cls = raw[..., : self.box_channels], raw[..., self.box_channels :]
        out = {"cls": cls, "anchors": anchors, "strides": strides}
        if self.box_head == "dfl":
            out["dist"] = box.reshape(*box.shape[:2], 4, self.reg_max)
            out["boxes"] = dfl_decode(out["dist"], anchors, strides)
        else:
            out["boxes"] = decode_boxes(box, anchors, strides, self.wh_clamp)
        return out


@torch.no_grad()
def postprocess(
    outputs: dict[str, Tensor],
    conf_floor: float,
    nms_iou: float,
    max_det: int,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> list[dict[str, Tensor]]:
    """Model outputs -> per-image detections after class-wise NMS.

    Scores are ``sigmoid(cls)``; every (anchor, class) pair scoring above
    ``conf_floor`` is a candidate (multi-label, as Ultralytics validation), capped to the
    ``max_candidates`` best per image before ``torchvision.ops.batched_nms``; at most ``max_det``
    detections are kept, best first. Returns per image ``"boxes"`` ``(K, 4)`` float32 pixel xyxy,
    ``"scores"`` ``(K,)`` float32 and ``"labels"`` ``(K,)`` long.
    """
    boxes = outputs["boxes"].float()
    scores = torch.sigmoid(outputs["cls"].float())
    batch, num_anchors, num_classes = scores.shape
    k = min(max_candidates, num_anchors * num_classes)
    top_scores, top_idx = scores.reshape(batch, -1).topk(k, dim=1)  # sorted, best first
    top_boxes = boxes.gather(1, (top_idx // num_classes)[..., None].expand(-1, -1, 4))
    top_labels = top_idx % num_classes
    keep_mask = top_scores > conf_floor
    results = []
    for i in range(batch):
        m = keep_mask[i]
        b, s, lab = top_boxes[i][m], top_scores[i][m], top_labels[i][m]
        keep = torchvision.ops.batched_nms(b, s, lab, nms_iou)[:max_det]
        results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return results


__all__ = [
    "CattleYOLO",
    "build_backbone",
    "decode_boxes",
    "dfl_decode",
    "dfl_encode",
    "make_anchors",
    "postprocess",
]
