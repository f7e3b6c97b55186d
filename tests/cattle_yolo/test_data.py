"""Data loading: image decoding, the real dataset, items, loaders and pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import GOOD, dataset, labelimg, load, save_image, tiny_dataset
from torch.utils.data import DataLoader

from cattle_yolo import augment, data, sources
from cattle_yolo.boxes import PAD_VALUE
from cattle_yolo.config import TrainConfig
from cattle_yolo.data import (
    DataError,
    Datasets,
    Item,
    collate,
    load_datasets,
    make_loader,
)

CATTLE_CHUTE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cattle-chute"


def test_corrupt_and_truncated_images_are_skipped(tmp_path: Path) -> None:
    root = dataset(tmp_path, {"a": GOOD, "b": GOOD, "c": GOOD})
    (root / "train" / "b.jpg").write_bytes(b"not an image at all")
    save_image(root / "train" / "c.jpg", 200, 200)
    whole = (root / "train" / "c.jpg").read_bytes()
    (root / "train" / "c.jpg").write_bytes(whole[: len(whole) // 2])
    train = load(root).train
    assert train.report is not None
    assert train.files == [str(root / "train" / "a.jpg")]
    assert train.report.skipped == 2
    assert [r.split(": ")[0] for r in train.report.reasons] == [
        str(root / "train" / "b.jpg"),
        str(root / "train" / "c.jpg"),
    ]
    assert all(": cannot read image: " in r for r in train.report.reasons)
    with pytest.raises(DataError, match="b.jpg: cannot read image"):
        load(root, strict=True)


def test_no_usable_training_image_is_an_error(tmp_path: Path) -> None:
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


@pytest.fixture(scope="module")
def chute() -> Datasets:
    if not (CATTLE_CHUTE / "train").is_dir():
        pytest.skip(f"real data not found at {CATTLE_CHUTE}")
    return load_datasets(TrainConfig(data=str(CATTLE_CHUTE), imgsz=320), verbose=False)


def test_cattle_chute_loads_and_reports_the_unnamed_class(chute: Datasets) -> None:
    reason = f"{CATTLE_CHUTE}/train/frame_000490.txt:1: class id 1 but only 1 class named"
    assert chute.name == "cattle-chute"
    assert chute.names == ["Cow"]
    assert chute.test is None
    assert len(chute.train) == 677 - 1
    assert len(chute.val) == 99
    assert chute.train.report is not None
    assert chute.val.report is not None
    assert chute.train.report.reasons == [reason]
    assert chute.val.report.skipped == 0
    assert chute.train.images.shape == (676, 320, 320, 3)
    assert (chute.train.orig_sizes == [300, 500]).all()
    np.testing.assert_allclose(chute.train.letterbox[0], [0.64, 64.0, 0.0])
    assert sum(len(b) for b in chute.train.boxes + chute.val.boxes) == 1344 - 2
    assert all(((b >= 0) & (b <= 320)).all() for b in chute.train.boxes)
    assert all(((b[:, 2:] > b[:, :2]).all()) for b in chute.train.boxes)
    with pytest.raises(DataError, match=r"frame_000490\.txt:1: class id 1"):
        load_datasets(TrainConfig(data=str(CATTLE_CHUTE), strict=True), verbose=False)


def test_items_and_collate_shapes() -> None:
    ds = tiny_dataset()
    ds.boxes[1] = np.zeros((0, 4), np.float32)
    ds.labels[1] = np.zeros(0, np.int64)
    image, target, i = ds[-1]
    assert image.shape == (3, 64, 64)
    assert image.dtype == torch.uint8
    assert i == 5
    assert target.tolist() == [[1.0, 23.0, 22.0, 39.0, 46.0]]
    images, targets, indices = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 64, 64)
    assert images.dtype == torch.uint8
    assert targets.shape == (2, 6)
    assert targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [0.0, 2.0]
    assert targets[:, 1].tolist() == [0.0, 0.0]
    assert indices.tolist() == [0, 1, 2]
    assert indices.dtype == torch.long
    assert collate([ds[1]])[1].shape == (0, 6)


def test_augmentation_repeats_per_seed_epoch_and_index() -> None:
    cfg = TrainConfig(seed=3)
    a, b = tiny_dataset().with_augment(cfg), tiny_dataset().with_augment(cfg)
    a.set_epoch(4)
    b.set_epoch(4)
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][1], b[i][1])
    b.set_epoch(5)
    assert not torch.equal(a[2][0], b[2][0])
    c = tiny_dataset().with_augment(cfg.replace(seed=4))
    c.set_epoch(4)
    assert not torch.equal(a[2][0], c[2][0])
    plain = tiny_dataset()
    assert plain.aug is None
    assert torch.equal(plain[2][0], torch.from_numpy(plain.images[2]).permute(2, 0, 1))


def batches(loader: DataLoader[Item]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(x.clone(), t.clone(), i.clone()) for x, t, i in loader]


def test_loaders_are_seeded_and_worker_count_does_not_matter() -> None:
    cfg = TrainConfig(seed=1, batch=4, workers=0)
    rng_state = torch.get_rng_state()
    train = tiny_dataset(10).with_augment(cfg)
    one = batches(make_loader(train, cfg, train=True, epoch=1))
    two = batches(make_loader(train, cfg.replace(workers=2), train=True, epoch=1))
    again = batches(make_loader(tiny_dataset(10).with_augment(cfg), cfg, train=True, epoch=1))
    for (x1, t1, i1), (x2, t2, i2), (x3, t3, i3) in zip(one, two, again, strict=True):
        assert torch.equal(i1, i2)
        assert torch.equal(x1, x2)
        assert torch.equal(t1, t2)
        assert torch.equal(i1, i3)
        assert torch.equal(x1, x3)
        assert torch.equal(t1, t3)
    order = torch.cat([i for _, _, i in one]).tolist()
    assert sorted(order) == list(range(10))
    assert [len(b[2]) for b in one] == [4, 4, 2]
    other = torch.cat([i for _, _, i in make_loader(train, cfg, train=True, epoch=2)]).tolist()
    assert other != order
    assert train.epoch == 2
    val = torch.cat([i for _, _, i in make_loader(tiny_dataset(10), cfg, train=False)]).tolist()
    assert val == list(range(10))
    assert torch.equal(torch.get_rng_state(), rng_state)  # loaders never touch the global RNG


def test_pickle_is_about_the_image_bytes_and_round_trips() -> None:
    ds = tiny_dataset(40, 96).with_augment(TrainConfig(seed=2))
    ds.set_epoch(3)
    ds.boxes[5] = np.zeros((0, 4), np.float32)
    ds.labels[5] = np.zeros(0, np.int64)
    blob = pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < ds.images.nbytes * 1.01 + 8192
    back = pickle.loads(blob)
    assert np.array_equal(back.images, ds.images)
    assert back.epoch == 3
    assert back.seed == 2
    assert all(np.array_equal(a, b) for a, b in zip(back.boxes, ds.boxes, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(back.labels, ds.labels, strict=True))
    assert back.boxes[5].shape == (0, 4)
    assert back.files == ds.files
    assert back.names == ds.names
    assert torch.equal(back[7][0], ds[7][0])
    assert torch.equal(back[7][1], ds[7][1])


def test_subset_copies_the_chosen_items() -> None:
    ds = tiny_dataset()
    sub = ds.subset([4, 1])
    assert len(sub) == 2
    assert sub.files == ["4.png", "1.png"]
    assert sub.names == ds.names
    assert np.array_equal(sub.images[0], ds.images[4])
    assert np.array_equal(sub.boxes[1], ds.boxes[1])


def test_augment_and_sources_names_are_reexported_by_data() -> None:
    assert data.Augment is augment.Augment
    assert data.augment is augment.augment
    assert data.DataError is sources.DataError
    assert vars(augment)["PAD_VALUE"] == PAD_VALUE == 114  # augment fills as data pads
    assert set(data.__all__) <= set(dir(data))


def test_skipped_val_images_are_said_to_leave_the_metrics_on_a_subset(tmp_path: Path) -> None:
    """Non-strict loading drops a val image for one bad label line; the val metrics then cover a
    subset, which must be said (it was only in the loading summary's skip count)."""
    root = dataset(tmp_path, {"a": GOOD})
    labelimg(root, "val", {"v2": GOOD + "0 0.5 0.5 nan 0.1\n"})
    ds = load(root)
    note = ds.val_coverage()
    assert note is not None
    assert "cover 1 of 2 val images" in note
    assert "v2.txt:2" in note
    assert load(dataset(tmp_path / "clean", {"a": GOOD})).val_coverage() is None
    with pytest.raises(data.DataError, match="v2.txt:2"):
        load(root, strict=True)
