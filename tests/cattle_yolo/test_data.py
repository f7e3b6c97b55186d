"""Data loading: formats, label validation, letterbox, augmentation, loaders and pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cattle_yolo.boxes import from_letterbox, to_letterbox
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import (
    Augment,
    DataError,
    DetectionDataset,
    augment,
    collate,
    letterbox,
    load_datasets,
    make_loader,
)

CATTLE_CHUTE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cattle-chute"
GOOD = "0 0.5 0.5 0.25 0.5\n"
NO_AUG = dict(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0)


def save_image(path: Path, w: int = 64, h: int = 48, colour=(90, 140, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)
    return path


def labelimg(root: Path, split: str, labels: dict[str, str | None]) -> dict[str, Path]:
    """labelImg layout: ``root/split/name.jpg`` with ``name.txt`` beside it (None: no label)."""
    paths = {}
    for name, text in labels.items():
        paths[name] = save_image(root / split / f"{name}.jpg")
        if text is not None:
            (root / split / f"{name}.txt").write_text(text)
    return paths


def dataset(tmp_path: Path, train: dict[str, str | None], names=("cow", "calf")) -> Path:
    root = tmp_path / "ds"
    labelimg(root, "train", train)
    labelimg(root, "val", {"v": GOOD})
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def load(root: Path, **overrides):
    return load_datasets(TrainConfig(data=str(root), imgsz=64, **overrides))


def test_letterbox_maps_boxes_round_trip() -> None:
    image = np.full((50, 100, 3), 30, np.uint8)
    image[10:30, 20:60] = 255
    out, ratio, pad_x, pad_y = letterbox(image, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (ratio, pad_x, pad_y) == (0.64, 0.0, 16.0)
    assert (out[:16] == 114).all() and (out[48:] == 114).all() and (out[16:48] != 114).all()
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
    assert (out[16] == 114).all() and (out[17] == 0).all() and (out[45] == 0).all()
    assert (out[46] == 114).all()


BAD_LABELS = [
    ("0 0.5 0.5 0.2\n", 1, "expected 5 fields (class cx cy w h), got 4"),
    (GOOD + "0 0.5 x 0.2 0.2\n", 2, "'x' is not a number"),
    ("0 nan 0.5 0.2 0.2\n", 1, "not a finite number"),
    (GOOD + "\n0 1.05 0.5 0.2 0.2\n", 3, "box edge x2 = 1.1500 is outside [0, 1] beyond the 1% tolerance"),
    ("0 0.5 -0.02 0.2 0.02\n", 1, "box edge y1 = -0.0300 is outside [0, 1] beyond the 1% tolerance"),
    ("0 0.5 0.5 0 0.2\n", 1, "non-positive width or height (w=0, h=0.2)"),
    ("0 0.5 0.5 0.2 -0.1\n", 1, "non-positive width or height (w=0.2, h=-0.1)"),
    (GOOD + "2 0.5 0.5 0.2 0.2\n", 2, "class id 2 but only 2 classes named"),
    ("-1 0.5 0.5 0.2 0.2\n", 1, "class id -1 is not a non-negative integer"),
    ("0.5 0.5 0.5 0.2 0.2\n", 1, "class id 0.5 is not a non-negative integer"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "reason"), BAD_LABELS)
def test_bad_label_skips_the_image_and_names_file_and_line(tmp_path, capsys, text, line, reason):
    root = dataset(tmp_path, {"a": GOOD, "b": text})
    data = load(root)
    expected = f"{root / 'train' / 'b.txt'}:{line}: {reason}"
    assert data.train.report.reasons == [expected]
    assert data.train.report.skipped == 1 and data.train.report.found == 2
    assert data.train.files == [str(root / "train" / "a.jpg")] and len(data.val) == 1
    assert expected in capsys.readouterr().out

    with pytest.raises(DataError) as e:
        load(root, strict=True)
    assert str(e.value) == expected


def test_one_class_named_message(tmp_path):
    root = dataset(tmp_path, {"a": GOOD, "b": "1 0.5 0.5 0.2 0.2\n"}, names=("Cow",))
    assert load(root).train.report.reasons[0].endswith("b.txt:1: class id 1 but only 1 class named")


def test_coordinates_within_tolerance_are_clipped(tmp_path):
    root = dataset(tmp_path, {"a": "0 0.995 0.5 0.02 0.2\n"})  # x2 = 1.005
    train = load(root).train
    assert train.report.skipped == 0 and train.report.clipped == 1
    # 64 x 48 image: ratio 1, pad_y 8; x1 = 0.985 * 64, x2 clipped to 64
    np.testing.assert_allclose(train.boxes[0], [[63.04, 27.2, 64.0, 36.8]], rtol=1e-5)


def test_corrupt_and_truncated_images_are_skipped(tmp_path):
    root = dataset(tmp_path, {"a": GOOD, "b": GOOD, "c": GOOD})
    (root / "train" / "b.jpg").write_bytes(b"not an image at all")
    save_image(root / "train" / "c.jpg", 200, 200)
    whole = (root / "train" / "c.jpg").read_bytes()
    (root / "train" / "c.jpg").write_bytes(whole[: len(whole) // 2])
    train = load(root).train
    assert train.files == [str(root / "train" / "a.jpg")] and train.report.skipped == 2
    assert [r.split(": ")[0] for r in train.report.reasons] == [
        str(root / "train" / "b.jpg"),
        str(root / "train" / "c.jpg"),
    ]
    assert all(": cannot read image: " in r for r in train.report.reasons)
    with pytest.raises(DataError, match="b.jpg: cannot read image"):
        load(root, strict=True)


def test_duplicate_boxes_are_dropped(tmp_path):
    root = dataset(tmp_path, {"a": GOOD + "1 0.2 0.2 0.1 0.1\n" + GOOD})
    train = load(root).train
    assert train.report.duplicates == 1 and train.report.skipped == 0
    assert train.labels[0].tolist() == [0, 1] and train.boxes[0].shape == (2, 4)


def test_missing_and_empty_labels_are_backgrounds(tmp_path):
    root = dataset(tmp_path, {"a": GOOD, "missing": None, "empty": "\n"})
    train = load(root).train
    assert len(train) == 3 and train.report.backgrounds == 2 and train.report.skipped == 0
    for i, f in enumerate(train.files):
        if "a.jpg" not in f:
            assert train.boxes[i].shape == (0, 4) and train[i][1].shape == (0, 5)


def test_no_usable_training_image_is_an_error(tmp_path):
    root = dataset(tmp_path, {"a": "0 0.5\n", "b": "7 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(
        DataError, match=r"train: no usable image among 2 found .*a.txt:1: expected"
    ):
        load(root)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    labelimg(empty, "val", {"v": GOOD})
    with pytest.raises(DataError, match="train: no images found in"):
        load(empty)
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "nowhere")


def ultralytics(root: Path, splits=("train", "val")) -> Path:
    for split in splits:
        for name in ("x", "y"):
            save_image(root / "images" / split / f"{name}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    return root


@pytest.mark.parametrize(
    ("names_yaml", "names"),
    [
        ("names: [a, b, c]", ["a", "b", "c"]),
        ("names: {0: a, 1: b, 2: c}", ["a", "b", "c"]),
        ("nc: 3", ["0", "1", "2"]),
        ("nc: 3\nnames: [a, b, c]", ["a", "b", "c"]),
    ],
)
def test_data_yaml_names(tmp_path, names_yaml, names):
    root = ultralytics(tmp_path / "cattle")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\n{names_yaml}\n")
    for source in (root, root / "data.yaml"):
        data = load(source)
        assert data.names == names and data.name == "cattle" and data.test is None
        assert len(data.train) == 2 and data.train.labels[0].tolist() == [2]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train: images/train\nnames: [a]", "no 'val' entry"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}", "names keys must be 0..1"),
        (
            "train: images/train\nval: images/val\nnc: 2\nnames: [a, b, c]",
            "nc is 2 but names has 3",
        ),
        ("train: images/train\nval: nowhere\nnames: [a, b, c]", "nowhere: no such folder"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_bad_data_yaml(tmp_path, yaml_text, message):
    root = ultralytics(tmp_path / "cattle")
    (root / "bad.yaml").write_text(yaml_text + "\n")
    with pytest.raises(DataError, match=message) as e:
        load(root / "bad.yaml")
    assert str(root / "bad.yaml") in str(e.value) or "nowhere" in str(e.value)


def test_data_yaml_path_lists_and_txt_files(tmp_path):
    root = ultralytics(tmp_path / "sets" / "herd", splits=("train", "val", "extra"))
    (root / "train.txt").write_text("./images/train/x.png\nimages/extra/y.png\n\n")
    (tmp_path / "herd.yaml").write_text(
        "path: sets/herd\ntrain: [train.txt, images/extra]\nval: images/val\ntest: images/val\n"
        "names: [a, b, c]\n"
    )
    data = load(tmp_path / "herd.yaml")
    assert data.name == "herd" and len(data.train) == 4 and len(data.test) == 2
    assert data.train.files[:2] == [
        str(root / "images/train/x.png"),
        str(root / "images/extra/y.png"),
    ]


def test_folder_layouts_and_class_names(tmp_path):
    root = ultralytics(tmp_path / "plain")  # images/train without a data.yaml: numbered names
    data = load(root)
    assert data.names == ["0", "1", "2"] and data.name == "plain" and len(data.val) == 2
    (root / "images" / "train" / "classes.txt").write_text("a\nb\nc\n")
    assert load(root).names == ["a", "b", "c"]


@pytest.fixture(scope="module")
def chute():
    if not (CATTLE_CHUTE / "train").is_dir():
        pytest.skip(f"real data not found at {CATTLE_CHUTE}")
    return load_datasets(TrainConfig(data=str(CATTLE_CHUTE), imgsz=320), verbose=False)


def test_cattle_chute_loads_and_reports_the_unnamed_class(chute):
    reason = f"{CATTLE_CHUTE}/train/frame_000490.txt:1: class id 1 but only 1 class named"
    assert chute.name == "cattle-chute" and chute.names == ["Cow"] and chute.test is None
    assert len(chute.train) == 677 - 1 and len(chute.val) == 99
    assert chute.train.report.reasons == [reason] and chute.val.report.skipped == 0
    assert chute.train.images.shape == (676, 320, 320, 3)
    assert (chute.train.orig_sizes == [300, 500]).all()
    np.testing.assert_allclose(chute.train.letterbox[0], [0.64, 64.0, 0.0])
    assert sum(len(b) for b in chute.train.boxes + chute.val.boxes) == 1344 - 2
    assert all(((b >= 0) & (b <= 320)).all() for b in chute.train.boxes)
    assert all(((b[:, 2:] > b[:, :2]).all()) for b in chute.train.boxes)
    with pytest.raises(DataError, match=r"frame_000490\.txt:1: class id 1"):
        load_datasets(TrainConfig(data=str(CATTLE_CHUTE), strict=True), verbose=False)


def tiny(n: int = 6, size: int = 64) -> DetectionDataset:
    """Gray images, each with a white square and its box (pixel xyxy), classes alternating."""
    images = np.full((n, size, size, 3), 40, np.uint8)
    boxes = []
    for i in range(n):
        x, y = 8 + 3 * i, 12 + 2 * i
        images[i, y : y + 24, x : x + 16] = 255
        boxes.append(np.array([[x, y, x + 16, y + 24]], np.float32))
    labels = [np.array([i % 2]) for i in range(n)]
    lb = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (n, 1))
    sizes = np.full((n, 2), size, np.int32)
    return DetectionDataset(
        images, boxes, labels, lb, sizes, [f"{i}.png" for i in range(n)], ["a", "b"]
    )


def test_items_and_collate_shapes() -> None:
    ds = tiny()
    ds.boxes[1] = np.zeros((0, 4), np.float32)
    ds.labels[1] = np.zeros(0, np.int64)
    image, target, i = ds[-1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and i == 5
    assert target.tolist() == [[1.0, 23.0, 22.0, 39.0, 46.0]]
    images, targets, indices = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert targets.shape == (2, 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [0.0, 2.0] and targets[:, 1].tolist() == [0.0, 0.0]
    assert indices.tolist() == [0, 1, 2] and indices.dtype == torch.long
    assert collate([ds[1]])[1].shape == (0, 6)


def test_augmentation_repeats_per_seed_epoch_and_index() -> None:
    cfg = TrainConfig(seed=3)
    a, b = tiny().with_augment(cfg), tiny().with_augment(cfg)
    a.set_epoch(4)
    b.set_epoch(4)
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    b.set_epoch(5)
    assert not torch.equal(a[2][0], b[2][0])
    c = tiny().with_augment(cfg.replace(seed=4))
    c.set_epoch(4)
    assert not torch.equal(a[2][0], c[2][0])
    plain = tiny()
    assert plain.aug is None and torch.equal(
        plain[2][0], torch.from_numpy(plain.images[2]).permute(2, 0, 1)
    )


def test_flip_maps_boxes() -> None:
    ds = tiny().with_augment(TrainConfig(**{**NO_AUG, "fliplr": 1.0}))
    image, target, _ = ds[0]
    assert torch.equal(image, torch.from_numpy(ds.images[0][:, ::-1].copy()).permute(2, 0, 1))
    assert target.tolist() == [[0.0, 64 - 24, 12.0, 64 - 8, 36.0]]


def test_scale_and_translate_move_image_and_boxes_together() -> None:
    ds = tiny().with_augment(TrainConfig(**{**NO_AUG, "scale": 0.5, "translate": 0.2}))
    checked = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, target, _ = ds[i]
            for _, x1, y1, x2, y2 in target.round().int().tolist():
                inside = image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float()
                assert inside.mean() > 200, (epoch, i)
                ring = image[:, max(0, y1 - 4) : y2 + 4, max(0, x1 - 4) : x2 + 4].float()
                assert ring.mean() < inside.mean() - 20
                checked += 1
    assert checked > 30


class FixedRng:
    """Stands in for a Generator: ``uniform`` gives ``u`` and ``random`` gives ``r``."""

    def __init__(self, u, r):
        self.u, self.r = np.asarray(u, np.float64), r

    def uniform(self, low, high, size):
        return self.u

    def random(self):
        return self.r


def test_boxes_moved_out_of_view_are_dropped_and_others_clipped() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[40, 10, 60, 30], [2, 10, 20, 30], [10, 40, 26, 60]], np.float32)
    labels = np.array([0, 1, 1])
    aug = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.5)
    out, moved, kept = augment(image, boxes, labels, aug, FixedRng([0, 0.75, 0, 0, 0, 0], 1.0))
    assert out.shape == (64, 64, 3) and kept.tolist() == [1, 1]  # shifted right by 24 px
    np.testing.assert_allclose(moved, [[26, 10, 44, 30], [34, 40, 50, 60]])
    out, moved, kept = augment(image, boxes, labels, aug, FixedRng([0, 0.5, 0, 0, 0, 0], 1.0))
    np.testing.assert_allclose(moved[0], [56, 10, 64, 30])  # 8 of 20 px in view: kept, clipped


def test_hsv_jitter_keeps_grey_grey_and_changes_colour() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    image[:4] = (200, 60, 30)
    aug = Augment(fliplr=0.0, hsv_h=0.5, hsv_s=0.9, hsv_v=0.0, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image, np.zeros((0, 4), np.float32), np.zeros(0), aug, FixedRng([0, 0, 0, 0.3, 0.5, 0], 1.0)
    )
    assert np.abs(out[4:].astype(int) - 100).max() <= 1
    assert np.abs(out[:4].astype(int) - image[:4]).max() > 30
    bright = Augment(fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.4, scale=0.0, translate=0.0)
    out, _, _ = augment(
        image, np.zeros((0, 4), np.float32), np.zeros(0), bright, FixedRng([0] * 5 + [1], 1.0)
    )
    assert np.abs(out[4:].astype(int) - 140).max() <= 1


def batches(loader):
    return [(x.clone(), t.clone(), i.clone()) for x, t, i in loader]


def test_loaders_are_seeded_and_worker_count_does_not_matter() -> None:
    cfg = TrainConfig(seed=1, batch=4, workers=0)
    rng_state = torch.get_rng_state()
    train = tiny(10).with_augment(cfg)
    one = batches(make_loader(train, cfg, train=True, epoch=1))
    two = batches(make_loader(train, cfg.replace(workers=2), train=True, epoch=1))
    again = batches(make_loader(tiny(10).with_augment(cfg), cfg, train=True, epoch=1))
    for (x1, t1, i1), (x2, t2, i2), (x3, t3, i3) in zip(one, two, again, strict=True):
        assert torch.equal(i1, i2) and torch.equal(x1, x2) and torch.equal(t1, t2)
        assert torch.equal(i1, i3) and torch.equal(x1, x3) and torch.equal(t1, t3)
    order = torch.cat([i for _, _, i in one]).tolist()
    assert sorted(order) == list(range(10)) and [len(b[2]) for b in one] == [4, 4, 2]
    other = torch.cat([i for _, _, i in make_loader(train, cfg, train=True, epoch=2)]).tolist()
    assert other != order and train.epoch == 2
    val = torch.cat([i for _, _, i in make_loader(tiny(10), cfg, train=False)]).tolist()
    assert val == list(range(10))
    assert torch.equal(torch.get_rng_state(), rng_state)  # loaders never touch the global RNG


def test_pickle_is_about_the_image_bytes_and_round_trips() -> None:
    ds = tiny(40, 96).with_augment(TrainConfig(seed=2))
    ds.set_epoch(3)
    ds.boxes[5] = np.zeros((0, 4), np.float32)
    ds.labels[5] = np.zeros(0, np.int64)
    blob = pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < ds.images.nbytes * 1.01 + 8192
    back = pickle.loads(blob)
    assert np.array_equal(back.images, ds.images) and back.epoch == 3 and back.seed == 2
    assert all(np.array_equal(a, b) for a, b in zip(back.boxes, ds.boxes, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(back.labels, ds.labels, strict=True))
    assert back.boxes[5].shape == (0, 4) and back.files == ds.files and back.names == ds.names
    assert torch.equal(back[7][0], ds[7][0]) and torch.equal(back[7][1], ds[7][1])


def test_subset_copies_the_chosen_items() -> None:
    ds = tiny()
    sub = ds.subset([4, 1])
    assert len(sub) == 2 and sub.files == ["4.png", "1.png"] and sub.names == ds.names
    assert np.array_equal(sub.images[0], ds.images[4]) and np.array_equal(sub.boxes[1], ds.boxes[1])
