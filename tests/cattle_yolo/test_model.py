"""CattleYOLO shapes, box decoding, pretrained loading offline, and postprocess."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.models import resnet18

from cattle_yolo.config import TrainConfig
from cattle_yolo.model import CattleYOLO, DecoupledHead, decode_boxes, make_anchors, postprocess

CFG = TrainConfig(neck_channels=16, dropout=0.0)


def num_anchors(imgsz: int) -> int:
    return sum((imgsz // s) ** 2 for s in (8, 16, 32))


@pytest.fixture(scope="module")
def model() -> CattleYOLO:
    torch.manual_seed(0)
    return CattleYOLO(2, CFG).eval()


@pytest.mark.parametrize("imgsz", [64, 128])
def test_output_shapes_and_anchors(model: CattleYOLO, imgsz: int) -> None:
    out = model(torch.rand(2, 3, imgsz, imgsz))
    a = num_anchors(imgsz)
    assert out["boxes"].shape == (2, a, 4)
    assert out["cls"].shape == (2, a, 2)
    assert out["dist"].shape == (2, a, 4, CFG.reg_max)
    assert out["anchors"].shape == (a, 2)
    assert out["strides"].shape == (a,)
    for v in out.values():
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all()
    # Stride 8 first, row-major: the first anchor is the top-left cell centre, the second its right
    # neighbour; the last is the bottom-right cell of stride 32.
    assert out["anchors"][0].tolist() == [4.0, 4.0]
    assert out["anchors"][1].tolist() == [12.0, 4.0]
    assert out["anchors"][-1].tolist() == [imgsz - 16.0, imgsz - 16.0]
    counts = [(out["strides"] == s).sum().item() for s in (8, 16, 32)]
    assert counts == [(imgsz // s) ** 2 for s in (8, 16, 32)]
    # Prior init, as Ultralytics': 5 objects per image over a level's cells at the config's
    # imgsz, split over the classes; DFL bins uniform, so each box reaches 7.5 strides each way.
    prior = 5 / 2 / (CFG.imgsz / out["strides"]) ** 2
    assert torch.allclose(torch.sigmoid(out["cls"]), prior[:, None].expand(a, 2), rtol=0.05)
    ltrb = torch.cat(
        [out["anchors"] - out["boxes"][..., :2], out["boxes"][..., 2:] - out["anchors"]], -1
    )
    assert torch.allclose(ltrb / out["strides"][:, None], torch.tensor(7.5), atol=0.1)


def test_anchor_cache_reused(model: CattleYOLO) -> None:
    a1 = model(torch.rand(1, 3, 64, 64))["anchors"]
    a2 = model(torch.rand(1, 3, 64, 64))["anchors"]
    assert a1 is a2


def test_decode_zero_logits_gives_stride_box_on_anchor() -> None:
    anchors, strides = make_anchors([(2, 2), (1, 1)], (8, 16), torch.device("cpu"))
    boxes = decode_boxes(torch.zeros(1, 5, 4), anchors, strides, wh_clamp=4.0)
    expected = torch.cat([anchors - strides[:, None] / 2, anchors + strides[:, None] / 2], -1)
    assert torch.equal(boxes[0], expected)
    assert boxes[0, 0].tolist() == [0.0, 0.0, 8.0, 8.0]
    assert boxes[0, 4].tolist() == [0.0, 0.0, 16.0, 16.0]


def test_decode_clamps_huge_sizes() -> None:
    anchors, strides = make_anchors([(1, 1)], (32,), torch.device("cpu"))
    raw = torch.tensor([[[0.0, 0.0, 1e4, float("inf")], [0.0, 0.0, -1e4, -1e4]]])
    boxes = decode_boxes(raw, anchors.expand(2, 2), strides.expand(2), wh_clamp=4.0)
    assert torch.isfinite(boxes).all()
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    big, small = torch.exp(torch.tensor(4.0)) * 32, torch.exp(torch.tensor(-4.0)) * 32
    assert torch.allclose(w[0, 0], big)
    assert torch.allclose(h[0, 0], big)
    assert torch.allclose(w[0, 1], small)
    assert torch.allclose(h[0, 1], small)


def test_model_decode_with_zeroed_head(model: CattleYOLO) -> None:
    net = CattleYOLO(1, CFG.replace(wh_clamp=2.0, box_head="exp")).eval()
    with torch.no_grad():
        for head in net.heads:
            assert isinstance(head, DecoupledHead)
            assert head.box_pred.bias is not None
            head.box_pred.weight.zero_()
            head.box_pred.bias[:4] = torch.tensor([0.5, -0.5, 10.0, 0.0])
    out = net(torch.rand(1, 3, 64, 64))
    s = out["strides"][:, None]
    centre = out["anchors"] + torch.tensor([0.5, -0.5]) * s
    size = torch.stack([torch.exp(torch.tensor(2.0)) * s[:, 0], s[:, 0]], -1)
    assert torch.allclose(out["boxes"][0], torch.cat([centre - size / 2, centre + size / 2], -1))


def test_channels_last_and_autocast_match(model: CattleYOLO) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
        model.to(memory_format=torch.contiguous_format)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(x)
    assert torch.allclose(ref["boxes"], cl["boxes"], atol=1e-3)
    assert torch.allclose(ref["cls"], cl["cls"], atol=1e-4)
    assert amp["boxes"].dtype == torch.float32
    assert amp["cls"].dtype == torch.float32
    assert torch.isfinite(amp["boxes"]).all()


def test_uint8_input_scaled(model: CattleYOLO) -> None:
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), model(x.float() / 255)
    assert torch.allclose(a["boxes"], b["boxes"])


def test_pretrained_offline_raises_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> NoReturn:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as info:
        CattleYOLO(2, CFG.replace(pretrained=True))
    msg = str(info.value)
    assert "pretrained: false" in msg
    assert "hub/checkpoints" in msg
    assert "resnet18" in msg
    assert isinstance(info.value.__cause__, URLError)


def test_pretrained_loads_weights_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(123)
    state = resnet18(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: state)
    net = CattleYOLO(2, CFG.replace(pretrained=True))
    assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def fake_outputs(
    boxes: torch.Tensor, probs_box: torch.Tensor, probs_cls: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Outputs dict whose class scores are ``probs_box[..., None] * probs_cls``."""
    return {"boxes": boxes, "cls": torch.logit(probs_box[..., None] * probs_cls)}


def test_postprocess_floor_nms_and_multilabel() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # best box, class 0
            [0.5, 0.0, 10.5, 10.0],  # near-duplicate of it, class 0: suppressed
            [0.5, 0.0, 10.5, 10.0],  # same place, class 1: kept (NMS is class-wise)
            [30.0, 30.0, 40.0, 40.0],  # both classes above the floor: two detections (multi-label)
            [50.0, 50.0, 60.0, 60.0],  # below the floor: dropped
        ]
    )[None]
    obj = torch.tensor([[0.9, 0.8, 0.5, 0.5, 0.1]])
    cls = torch.tensor([[[0.9, 0.01], [0.9, 0.01], [0.01, 0.8], [0.6, 0.4], [0.3, 0.3]]])
    (det,) = postprocess(fake_outputs(boxes, obj, cls), conf_floor=0.05, nms_iou=0.5, max_det=300)
    assert det["labels"].dtype == torch.long
    assert det["labels"].tolist() == [0, 1, 0, 1]
    assert torch.allclose(det["scores"], torch.tensor([0.81, 0.4, 0.3, 0.2]))
    assert det["boxes"][0].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert det["boxes"][2].tolist() == det["boxes"][3].tolist() == [30.0, 30.0, 40.0, 40.0]
    # Without the duplicate's suppression there would be one more class-0 box at the same place.
    (loose,) = postprocess(
        fake_outputs(boxes, obj, cls), conf_floor=0.05, nms_iou=0.99, max_det=300
    )
    assert loose["labels"].tolist() == [0, 0, 1, 0, 1]


def test_postprocess_caps_detections_and_batches() -> None:
    torch.manual_seed(0)
    xy = torch.rand(2, 500, 2) * 1000
    boxes = torch.cat([xy, xy + 5], -1)  # small boxes scattered: NMS keeps most
    obj, cls = torch.rand(2, 500) * 0.5 + 0.5, torch.rand(2, 500, 3) * 0.5 + 0.5
    dets = postprocess(fake_outputs(boxes, obj, cls), conf_floor=0.001, nms_iou=0.6, max_det=7)
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape == (7, 4)
        assert det["scores"].shape == (7,)
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    none = postprocess(fake_outputs(boxes, obj * 0 + 0.01, cls), 0.5, 0.6, 300)
    assert all(d["boxes"].shape == (0, 4) for d in none)
