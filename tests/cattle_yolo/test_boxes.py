"""Box conversions, the letterbox mapping of boxes and the letterboxed image."""

import numpy as np
import pytest
import torch

from cattle_yolo import boxes
from cattle_yolo.boxes import from_letterbox, letterbox, to_letterbox


def test_known_answers() -> None:
    yolo = np.array([[0.5, 0.5, 0.2, 0.4]], dtype=np.float32)  # normalized cx cy w h
    xyxy = boxes.to_pixels(boxes.cxcywh_to_xyxy(yolo), width=200, height=100)
    np.testing.assert_allclose(xyxy, [[80, 30, 120, 70]], rtol=1e-6)
    np.testing.assert_allclose(boxes.xyxy_to_xywh(xyxy), [[80, 30, 40, 40]], rtol=1e-6)  # COCO


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_round_trips(lib: str) -> None:
    rng = np.random.default_rng(0)
    cxcywh = rng.uniform(0.1, 0.9, size=(50, 4)).astype(np.float32)
    if lib == "torch":
        xyxy = boxes.cxcywh_to_xyxy(torch.from_numpy(cxcywh)).numpy()
    else:
        xyxy = boxes.cxcywh_to_xyxy(cxcywh)
    back = np.stack(  # the inverse, as torchvision computes it
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        1,
    )
    np.testing.assert_allclose(back, cxcywh, atol=1e-6)
    pixel = boxes.to_pixels(xyxy, 640, 480)
    np.testing.assert_allclose(pixel / [640, 480, 640, 480], xyxy, atol=1e-6)


def test_torch_and_numpy_agree() -> None:
    xyxy = np.array([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 3.0, 3.0]], dtype=np.float32)
    for fn in (boxes.cxcywh_to_xyxy, boxes.xyxy_to_xywh):
        np.testing.assert_allclose(fn(xyxy), fn(torch.from_numpy(xyxy)).numpy())


@pytest.mark.parametrize(("w", "h"), [(500, 300), (300, 500), (384, 384), (1, 1000)])
def test_letterbox_maps_boxes_and_back(w: int, h: int) -> None:
    ratio, pad_x, pad_y = boxes.letterbox_params(w, h, 384)
    assert min(pad_x, pad_y) == 0 or (w == h and pad_x == pad_y == 0)
    corners = np.array([[0, 0, w, h]], dtype=np.float32)
    lb = boxes.to_letterbox(corners, ratio, pad_x, pad_y)
    # the whole image lands centred inside the square
    assert lb[0, 0] == pytest.approx(pad_x)
    assert lb[0, 1] == pytest.approx(pad_y)
    assert lb[0, 2] <= 384 + 0.5
    assert lb[0, 3] <= 384 + 0.5
    np.testing.assert_allclose(boxes.from_letterbox(lb, ratio, pad_x, pad_y), corners, rtol=1e-5)
    t = boxes.to_letterbox(torch.from_numpy(corners), ratio, pad_x, pad_y)
    np.testing.assert_allclose(t.numpy(), lb, rtol=1e-6)


def test_letterbox_maps_boxes_round_trip() -> None:
    image = np.full((50, 100, 3), 30, np.uint8)
    image[10:30, 20:60] = 255
    out, ratio, pad_x, pad_y = letterbox(image, 64)
    assert out.shape == (64, 64, 3)
    assert out.dtype == np.uint8
    assert (ratio, pad_x, pad_y) == (0.64, 0.0, 16.0)
    assert (out[:16] == 114).all()
    assert (out[48:] == 114).all()
    assert (out[16:48] != 114).all()
    box = np.array([[20.0, 10.0, 60.0, 30.0]], np.float32)
    x1, y1, x2, y2 = to_letterbox(box, ratio, pad_x, pad_y)[0]
    np.testing.assert_allclose([x1, y1, x2, y2], [12.8, 22.4, 38.4, 35.2], rtol=1e-6)
    assert out[int(y1) + 2 : int(y2) - 1, int(x1) + 2 : int(x2) - 1].min() > 240
    assert out[int(y2) + 2, int(x2) + 2].max() < 60
    back = from_letterbox(to_letterbox(box, ratio, pad_x, pad_y), ratio, pad_x, pad_y)
    np.testing.assert_allclose(back, box, atol=1e-4)


def test_letterbox_odd_padding_uses_whole_pixels() -> None:
    out, ratio, pad_x, pad_y = letterbox(np.zeros((45, 100, 3), np.uint8), 64)  # 64 x 29 inside
    assert (pad_x, pad_y) == (0.0, 17.0)
    assert (out[16] == 114).all()
    assert (out[17] == 0).all()
    assert (out[45] == 0).all()
    assert (out[46] == 114).all()
