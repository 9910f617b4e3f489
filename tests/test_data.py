"""Detection data: data.yaml, label parsing, NWPU VHR-10 and RSOD conversion, the synthetic
task, augmentation, and the dataset and loader."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from graphprune.data import (DetectionDataset, add_data_parser, collate, convert_nwpu,
                             convert_rsod, flip_lr, flip_ud, hsv_jitter, label_path, letterbox,
                             load_data_config, make_loader, make_synthetic_dataset, mosaic,
                             parse_nwpu_labels, parse_voc_xml, parse_yolo_labels,
                             random_affine, read_yolo_labels, render_image)
from graphprune.data.augment import clip_and_filter
from graphprune.errors import GraphpruneError, GraphpruneWarning

NWPU = Path(__file__).resolve().parents[2] / "shared" / "data" / "nwpu_vhr10"


def write_image(path: Path, width: int = 64, height: int = 48, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value,) * 3).save(path)
    return path


def read_split(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(sorted image names, all label rows) of one split of a written YOLO dataset."""
    names = sorted(p.name for p in (root / "images" / split).iterdir())
    rows = [np.loadtxt(p, ndmin=2).reshape(-1, 5)
            for p in sorted((root / "labels" / split).glob("*.txt"))]
    return names, np.concatenate(rows)


# -- YOLO labels ----------------------------------------------------------------------------
@pytest.mark.parametrize("line, why", [
    ("1 0.5 0.5 0.2", "4 fields"),
    ("1 0.5 0.5 0.2 0.2 0.9", "6 fields"),
    ("1 0.5 x 0.2 0.2", "not a number"),
    ("1 nan 0.5 0.2 0.2", "nan or inf"),
    ("1 0.5 0.5 inf 0.2", "nan or inf"),
    ("3 0.5 0.5 0.2 0.2", "class 3 is not an integer"),
    ("-1 0.5 0.5 0.2 0.2", "class -1"),
    ("1.5 0.5 0.5 0.2 0.2", "class 1.5"),
    ("1 0.5 0.5 0 0.2", "not positive"),
    ("1 0.5 0.5 0.2 -0.1", "not positive"),
    ("1 0.95 0.5 0.2 0.2", "outside the image"),
    ("1 0.5 -0.01 0.2 0.2", "outside the image"),
])
def test_each_malformed_yolo_line_is_skipped_and_described(line, why):
    text = f"0 0.5 0.5 0.2 0.2\n{line}\n2 0.25 0.25 0.1 0.1"
    labels, problems = parse_yolo_labels(text, num_classes=3)
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.2, 0.2], [2, 0.25, 0.25, 0.1, 0.1]])
    assert len(problems) == 1 and problems[0].startswith("line 2:") and why in problems[0]


def test_yolo_boxes_within_tolerance_are_clipped_and_integral_floats_accepted():
    labels, problems = parse_yolo_labels("2.0 0.1 0.5 0.2004 0.2\r\n\n  \n", num_classes=3)
    assert problems == [] and labels.dtype == np.float32
    np.testing.assert_allclose(labels, [[2, 0.1001, 0.5, 0.2002, 0.2]], atol=1e-6)
    assert parse_yolo_labels("", 3)[0].shape == (0, 5)


def test_yolo_files_missing_empty_or_undecodable_never_raise(tmp_path):
    assert read_yolo_labels(tmp_path / "missing.txt", 3)[0].shape == (0, 5)
    (tmp_path / "empty.txt").write_text("")
    assert read_yolo_labels(tmp_path / "empty.txt", 3)[1] == []
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 1 0.5\n0 0.5 0.5 0.1 0.1\n")
    labels, problems = read_yolo_labels(tmp_path / "bin.txt", 3)
    assert len(labels) == 1 and len(problems) == 1


def test_arbitrary_text_never_crashes_any_parser():
    rng = np.random.default_rng(0)
    alphabet = list("0123456789.,-+() \t\r\nabcdefnaix<>/=e") + ["\x00", "é", "nan", "inf"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 80))))
        for labels, problems in (parse_yolo_labels(text, 3), parse_nwpu_labels(text, 50, 40),
                                 parse_voc_xml(text, 50, 40)):
            assert labels.shape[1] == 5 and isinstance(problems, list)


# -- data.yaml ------------------------------------------------------------------------------
def make_yolo_tree(root: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            write_image(root / "images" / split / f"{i}.png")


def test_label_path_replaces_the_last_images_folder():
    assert label_path("/d/images/x/images/train/a.jpg") == Path("/d/images/x/labels/train/a.txt")
    assert label_path("/d/pics/a.png") == Path("/d/pics/a.txt")


def test_data_yaml_with_dirs_lists_dict_names_and_relative_path(tmp_path):
    make_yolo_tree(tmp_path / "ds")
    (tmp_path / "ds" / "val.txt").write_text("images/val/0.png\n\nimages/val/1.png\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.yaml").write_text(
        "path: ../ds\ntrain: [images/train]\nval: val.txt\nnames: {0: plane, 1: ship}\nnc: 2\n")
    cfg = load_data_config(tmp_path / "cfg")
    assert cfg.names == ["plane", "ship"] and cfg.nc == 2
    assert [p.name for p in cfg.train] == ["0.png", "1.png", "2.png"]
    assert [p.name for p in cfg.val] == ["0.png", "1.png"] and all(p.is_file() for p in cfg.val)


@pytest.mark.parametrize("text, message", [
    ("train: images/train\nnames: [a]\n", "no 'val' key"),
    ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", "nc is 3"),
    ("train: images/train\nval: images/none\nnames: [a]\n", "is not a folder"),
    ("train: images/train\nval: images/empty\nnames: [a]\n", "no images found"),
    ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", "are not 0..1"),
    ("train: [images/train\n", "not valid YAML"),
    ("- just a list\n", "not a YAML mapping"),
])
def test_bad_data_yaml_is_one_clear_error(tmp_path, text, message):
    make_yolo_tree(tmp_path)
    (tmp_path / "images" / "empty").mkdir()
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(GraphpruneError, match=message) as info:
        load_data_config(tmp_path / "data.yaml")
    assert info.value.hint and "\n" not in str(info.value)


def test_missing_data_yaml_is_reported(tmp_path):
    with pytest.raises(GraphpruneError, match="does not exist"):
        load_data_config(tmp_path / "nope.yaml")


# -- NWPU VHR-10 ----------------------------------------------------------------------------
def test_nwpu_parser_accepts_the_formats_quirks_and_reports_junk():
    text = ("(563,478),(630,573),1 \r\n"        # trailing space, CRLF
            "( 68,316),(111, 354),10\r\n"       # space padding
            "\r\n"
            "hello world\n"                     # junk
            "(1,2),(3,4)\n"                     # no class
            "(1,2),(30,40),11\n"                # class out of range
            "(5,5),(5,9),2\n"                   # zero width
            "(990,10),(1020,30),3\n"            # reaches outside: clipped
            "(40,30),(20,10),4\n"               # corners reversed: reordered
            "(  7,  8 ),( 9 , 12 ),2")          # no final newline
    boxes, problems = parse_nwpu_labels(text, width=1000, height=600)
    np.testing.assert_array_equal(boxes, [[0, 563, 478, 630, 573], [9, 68, 316, 111, 354],
                                          [2, 990, 10, 1000, 30], [3, 20, 10, 40, 30],
                                          [1, 7, 8, 9, 12]])
    assert [p.split(":")[0] for p in problems] == ["line 4", "line 5", "line 6", "line 7",
                                                   "line 8", "line 9"]
    assert "no area" in problems[3] and "clipped" in problems[4] and "reordered" in problems[5]


def make_nwpu_tree(root: Path, count: int = 5) -> None:
    for i in range(1, count + 1):
        write_image(root / "positive image set" / f"{i:03d}.jpg", 100, 80)
        (root / "ground truth").mkdir(parents=True, exist_ok=True)
        (root / "ground truth" / f"{i:03d}.txt").write_text(f"(10,20),(50,60),{i}\n(1,1),(9,9),3")
    (root / "ground truth" / "999.txt").write_text("(1,1),(9,9),3\n")     # no image


def test_nwpu_converter_on_spaced_folder_names_reports_problems(tmp_path):
    make_nwpu_tree(tmp_path / "src")
    report = convert_nwpu(tmp_path / "src", tmp_path / "out", val_fraction=0.4, seed=3)
    assert report.images == {"train": 3, "val": 2} and sum(report.boxes.values()) == 10
    assert len(report.problems) == 1 and "999.txt" in report.problems[0]
    labels = np.loadtxt(next((tmp_path / "out" / "labels").rglob("001.txt")))
    np.testing.assert_allclose(labels, [[0, 0.3, 0.5, 0.4, 0.5], [2, 0.05, 0.0625, 0.08, 0.1]])


@pytest.fixture(scope="module")
def nwpu_out(tmp_path_factory):
    if not NWPU.is_dir():
        pytest.skip(f"the shared NWPU VHR-10 data is not at {NWPU}")
    out = tmp_path_factory.mktemp("nwpu") / "yolo"
    return convert_nwpu(NWPU, out, val_fraction=0.2, seed=0)


def test_nwpu_real_data_converts_every_image_and_box(nwpu_out):
    out = nwpu_out.out
    assert sorted(p.name for p in out.iterdir()) == ["data.yaml", "images", "labels"]
    assert nwpu_out.problems == []
    assert nwpu_out.images == {"train": 363, "val": 91}
    cfg = load_data_config(out / "data.yaml")
    assert len(cfg.train) + len(cfg.val) == 454 and cfg.names[0] == "airplane" and cfg.nc == 10
    total = 0
    for split in ("train", "val"):
        names, rows = read_split(out, split)
        assert len(names) == nwpu_out.images[split] and len(rows) == nwpu_out.boxes[split]
        total += len(rows)
        assert set(np.unique(rows[:, 0])) <= set(range(10))
        corners = np.concatenate([rows[:, 1:3] - rows[:, 3:5] / 2, rows[:, 1:3] + rows[:, 3:5] / 2])
        assert (rows[:, 3:5] > 0).all() and corners.min() >= -1e-6 and corners.max() <= 1 + 1e-6
    assert total == 2790
    assert len(set(np.unique(read_split(out, "train")[1][:, 0]))) == 10
    image = out / "images" / "val" / names[0]                     # linked, not re-encoded
    assert image.read_bytes() == (NWPU / "positive_image_set" / names[0]).read_bytes()


def test_nwpu_split_is_deterministic_and_output_refused_unless_overwrite(nwpu_out, tmp_path):
    again = convert_nwpu(NWPU, tmp_path / "again", seed=0)
    assert read_split(again.out, "val")[0] == read_split(nwpu_out.out, "val")[0]
    with pytest.raises(GraphpruneError, match="already exists"):
        convert_nwpu(NWPU, tmp_path / "again", seed=1)
    other = convert_nwpu(NWPU, tmp_path / "again", seed=1, overwrite=True)
    assert read_split(other.out, "val")[0] != read_split(nwpu_out.out, "val")[0]
    assert len(read_split(other.out, "val")[0]) == 91
    assert [p.name for p in tmp_path.iterdir()] == ["again"]       # no temporary left


def test_images_are_copied_where_links_fail(tmp_path, monkeypatch):
    make_nwpu_tree(tmp_path / "src", count=3)
    monkeypatch.setattr("os.link", lambda *a: (_ for _ in ()).throw(OSError("cross-device")))
    report = convert_nwpu(tmp_path / "src", tmp_path / "out", val_fraction=0.34)
    copied = next((tmp_path / "out" / "images" / "train").iterdir())
    assert copied.stat().st_nlink == 1 and report.images == {"train": 2, "val": 1}
    source = tmp_path / "src" / "positive image set" / copied.name
    assert copied.read_bytes() == source.read_bytes()


def test_missing_source_and_impossible_split_are_clear_errors(tmp_path):
    with pytest.raises(GraphpruneError, match="no positive_image_set folder"):
        convert_nwpu(tmp_path, tmp_path / "out")
    make_nwpu_tree(tmp_path / "src", count=2)
    with pytest.raises(GraphpruneError, match="outside"):
        convert_nwpu(tmp_path / "src", tmp_path / "out", val_fraction=1.5)
    with pytest.raises(GraphpruneError, match="cannot be split"):
        convert_nwpu(tmp_path / "src", tmp_path / "out", val_fraction=0.1)
    assert not (tmp_path / "out").exists()


# -- RSOD -----------------------------------------------------------------------------------
def voc_xml(*objects: tuple[str, tuple]) -> str:
    body = "".join(f"<object><name>{name}</name><bndbox>"
                   + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"),
                                                               box))
                   + "</bndbox></object>" for name, box in objects)
    return f"<annotation><size><width>100</width><height>80</height></size>{body}</annotation>"


def make_rsod_tree(root: Path) -> None:
    for cls in ("aircraft", "oiltank"):
        for i in range(3):
            write_image(root / cls / "JPEGImages" / f"{cls}_{i}.jpg", 100, 80)
            xml = voc_xml((cls, (10, 20, 30, 40)), ("Oiltank", (50, 40, 70, 60)))
            (root / cls / "Annotation" / "xml").mkdir(parents=True, exist_ok=True)
            (root / cls / "Annotation" / "xml" / f"{cls}_{i}.xml").write_text(xml)
    xml_dir = root / "aircraft" / "Annotation" / "xml"
    (xml_dir / "aircraft_0.xml").write_text(voc_xml(("aircraft", (10, 20, 30, 40)),
                                                    ("tank", (1, 1, 5, 5)),
                                                    ("aircraft", (1, "x", 5, 5)),
                                                    ("aircraft", (90, 70, 130, 90))))
    (xml_dir / "aircraft_1.xml").write_text("<annotation><object><name>air")   # broken


def test_voc_xml_parser():
    boxes, problems = parse_voc_xml(voc_xml(("playground", (10, 20, 30, 40)), ("car", (1, 1, 2, 2)),
                                            ("overpass", (5, 5, 5, 9))), 100, 80)
    np.testing.assert_array_equal(boxes, [[3, 10, 20, 30, 40]])
    assert "unknown class 'car'" in problems[0] and "no area" in problems[1]
    assert "not valid XML" in parse_voc_xml("<a><b></a>", 10, 10)[1][0]


def test_rsod_class_folders_convert_with_problems_reported(tmp_path):
    make_rsod_tree(tmp_path / "rsod")
    report = convert_rsod(tmp_path / "rsod", tmp_path / "out", val_fraction=0.34, seed=0)
    assert report.images == {"train": 3, "val": 2}                   # aircraft_1 left out
    assert sum(report.boxes.values()) == 2 + 2 + 2 * 3                # aircraft_0 keeps 2
    text = "\n".join(report.problems)
    assert "unknown class 'tank'" in text and "numeric" in text and "clipped" in text
    assert "aircraft_1.xml not valid XML" in text and "image left out" in text
    labels = np.loadtxt(label_path(next(p for p in (tmp_path / "out" / "images").rglob(
        "oiltank_2.jpg"))))
    np.testing.assert_allclose(labels, [[1, 0.2, 0.375, 0.2, 0.25], [1, 0.6, 0.625, 0.2, 0.25]])


def test_rsod_flat_voc_layout(tmp_path):
    for i in range(4):
        write_image(tmp_path / "src" / "JPEGImages" / f"{i}.jpg", 100, 80)
        (tmp_path / "src" / "Annotations").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "Annotations" / f"{i}.xml").write_text(
            voc_xml(("overpass", (0, 0, 50, 40))))
    report = convert_rsod(tmp_path / "src", tmp_path / "out", val_fraction=0.25)
    assert report.images == {"train": 3, "val": 1} and report.problems == []
    _, rows = read_split(tmp_path / "out", "train")
    np.testing.assert_allclose(rows, [[2, 0.25, 0.25, 0.5, 0.5]] * 3)


# -- synthetic ------------------------------------------------------------------------------
def test_synthetic_images_are_deterministic_and_valid():
    img, boxes = render_image(7)
    again, boxes_again = render_image(np.random.default_rng(7))
    assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
    assert np.array_equal(img, again) and np.array_equal(boxes, boxes_again)
    assert not np.array_equal(img, render_image(8)[0])
    classes = []
    for seed in range(40):
        _, boxes = render_image(seed)
        assert 3 <= len(boxes) <= 12
        sides = boxes[:, 3:5] - boxes[:, 1:3]
        assert boxes[:, 1:].min() >= 0 and boxes[:, 1:].max() <= 256
        assert (sides.max(1) >= 8).all() and (sides.max(1) <= 48).all() and (sides > 1).all()
        classes += boxes[:, 0].tolist()
    assert set(classes) == {0, 1, 2}


def test_synthetic_targets_stand_out_from_the_ground_inside_their_boxes():
    img, boxes = render_image(3)
    spread = [img[int(y1):int(y2), int(x1):int(x2)].astype(float).std() for _, x1, y1, x2, y2
              in boxes]
    assert min(spread) > 15          # each box holds a drawn target, not plain ground


def test_synthetic_dataset_writes_identical_bytes_for_the_same_seed(tmp_path):
    paths = [make_synthetic_dataset(tmp_path / name, n_train=6, n_val=2, seed=seed)
             for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    cfg = load_data_config(paths[0])
    assert cfg.names == ["aircraft", "ship", "storage_tank"]
    assert len(cfg.train) == 6 and len(cfg.val) == 2

    def contents(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a") != contents(tmp_path / "c")


# -- augmentation ---------------------------------------------------------------------------
def rectangle_image(width, height, box, colour=(255, 255, 255)):
    img = np.full((height, width, 3), 60, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = colour
    return img, np.array([[0, x1, y1, x2, y2]], np.float32)


def covered(img, colour=(255, 255, 255)):
    """The bounding box of the pixels close to ``colour``."""
    ys, xs = np.nonzero((np.abs(img.astype(int) - colour) < 60).all(-1))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_letterbox_and_flips_keep_boxes_on_the_drawn_rectangle():
    img, boxes = rectangle_image(300, 200, (40, 30, 120, 90))
    out, ratio, pad = letterbox(img, 160)
    assert out.shape == (160, 160, 3) and ratio == pytest.approx(160 / 300) and pad == (0, 26)
    assert (out[:26] == 114).all() and (out[-27:] == 114).all()
    moved = boxes[0, 1:] * ratio + [pad[0], pad[1]] * 2
    np.testing.assert_allclose(covered(out), moved, atol=1.01)
    for flip in (flip_lr, flip_ud):
        flipped, fboxes = flip(out, np.array([[0, *moved]], np.float32))
        np.testing.assert_allclose(covered(flipped), fboxes[0, 1:], atol=1.01)


def test_random_affine_keeps_boxes_aligned_and_drops_lost_ones():
    img, boxes = rectangle_image(128, 128, (50, 40, 90, 70))
    for seed in range(10):
        out, moved = random_affine(img, boxes, np.random.default_rng(seed), 128, 0.5, 0.3)
        if len(moved):
            np.testing.assert_allclose(covered(out), moved[0, 1:], atol=1.6)
    dropped = clip_and_filter(np.array([[0, -30, 0, 5, 10], [0, 5, 5, 6, 40], [1, -2, 0, 8, 8]],
                                       np.float32), 100, 100)
    np.testing.assert_array_equal(dropped, [[1, 0, 0, 8, 8]])


def test_mosaic_keeps_each_box_on_its_own_rectangle():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    kept = 0
    for seed in range(6):
        items = []
        for k, colour in enumerate(colours):
            img, boxes = rectangle_image(96 + 8 * k, 80, (20, 15, 70, 60), colour)
            boxes[:, 0] = k
            items.append((img, boxes))
        out, boxes = mosaic(items, np.random.default_rng(seed), 128, scale=0.3, translate=0.1)
        assert out.shape == (128, 128, 3)
        for cls, *box in boxes:
            np.testing.assert_allclose(covered(out, colours[int(cls)]), box, atol=1.6)
        kept += len(boxes)
    assert kept >= 6


def test_hsv_jitter_is_seeded_and_keeps_grey_grey():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = hsv_jitter(img, np.random.default_rng(1))
    assert np.array_equal(a, hsv_jitter(img, np.random.default_rng(1)))
    assert not np.array_equal(a, img)
    grey = np.full((8, 8, 3), 100, np.uint8)
    out = hsv_jitter(grey, np.random.default_rng(2))
    assert (out == out[..., :1]).all()


# -- dataset and loader ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_data_config(make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds",
                                                   n_train=16, n_val=4, seed=0, size=128))


def test_dataset_item_maps_file_labels_through_the_letterbox(tmp_path):
    image = write_image(tmp_path / "images" / "a.png", 200, 100)
    label_path(image).parent.mkdir(parents=True)
    label_path(image).write_text("1 0.25 0.5 0.1 0.2\n")
    ds = DetectionDataset([image], ["a", "b"], imgsz=64)
    img, targets, path, meta = ds[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and path == str(image)
    assert meta["orig"] == (100, 200) and meta["ratio"] == pytest.approx(0.32)
    assert meta["pad"] == (0, 16)
    # x: 0.25 · 200 · 0.32 = 16 of 64; y: 50 · 0.32 + 16 = 32; w: 20 · 0.32 = 6.4; h: 6.4
    np.testing.assert_allclose(targets, [[0, 1, 0.25, 0.5, 0.1, 0.1]], atol=1e-6)
    assert ds.shapes == [(100, 200)]
    np.testing.assert_allclose(ds.box_sizes(), [[6.4, 6.4]], rtol=1e-6)
    np.testing.assert_allclose(ds.box_sizes(400), [[40, 40]], rtol=1e-6)


def test_dataset_reports_bad_labels_and_unreadable_images_once(tmp_path):
    good = [write_image(tmp_path / "images" / f"{i}.png") for i in range(2)]
    label_path(good[0]).parent.mkdir(parents=True)
    label_path(good[0]).write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\nfoo\n")
    bad = tmp_path / "images" / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.warns(GraphpruneWarning, match="3 dataset problems") as record:
        ds = DetectionDataset([*good, bad], ["a"], imgsz=32)
    assert len(record) == 1 and len(ds) == 2 and len(ds.labels[0]) == 1
    assert any("bad.jpg" in p for p in ds.problems)
    with pytest.raises(GraphpruneError, match="none of the 1 images"):
        DetectionDataset([bad], ["a"])


def test_truncated_image_is_reported_and_replaced_or_skipped_with_cache(tmp_path):
    path = write_image(tmp_path / "images" / "t.jpg", 64, 64)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    ok = write_image(tmp_path / "images" / "ok.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = DetectionDataset([path], ["a"], imgsz=32)
    # found only when read: reported, and replaced by the next readable image (issue 18)
    with pytest.warns(GraphpruneWarning, match="t.jpg: cannot decode"), \
            pytest.raises(GraphpruneError, match="none of the dataset's images can be decoded"):
        ds[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphpruneWarning)
        both = DetectionDataset([path, ok], ["a"], imgsz=32)
    with pytest.warns(GraphpruneWarning, match="t.jpg: cannot decode.*replaced"):
        assert both[0][2] == str(ok)
    assert both[0][2] == str(ok) and both.unreadable == {0}      # not read again
    with pytest.warns(GraphpruneWarning, match="1 dataset problems"):
        assert len(DetectionDataset([path, ok], ["a"], imgsz=32, cache=True)) == 1


def test_augmentation_depends_only_on_seed_epoch_and_index(synthetic):
    ds = DetectionDataset(synthetic.train, synthetic.names, imgsz=128, augment=True,
                          mosaic=True, seed=5)
    first = ds[3]
    assert first[3] == {"orig": (128, 128), "ratio": None, "pad": None}     # geometry is random
    assert torch.equal(first[0], ds[3][0]) and torch.equal(first[1], ds[3][1])
    assert torch.equal(first[0], ds[(3, 0)][0])
    ds.set_epoch(1)
    assert not torch.equal(first[0], ds[3][0])
    other = DetectionDataset(synthetic.train, synthetic.names, imgsz=128, augment=True,
                             mosaic=True, seed=6)
    assert not torch.equal(first[0], other[3][0])
    for i in range(len(ds)):
        targets = ds[i][1]
        assert targets[:, 2:].min() >= 0 and targets[:, 2:].max() <= 1


def test_collate_numbers_targets_by_image():
    items = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(n, 6), f"{n}", {})
             for n in (2, 0, 1)]
    images, targets, paths, metas = collate(items)
    assert images.shape == (3, 3, 8, 8) and paths == ("2", "0", "1")
    assert targets[:, 0].tolist() == [0, 0, 2] and (targets[:, 1:] == 1).all()


def test_loader_batches_are_identical_with_and_without_workers(synthetic):
    def epochs(workers):
        ds = DetectionDataset(synthetic.train, synthetic.names, imgsz=128, augment=True,
                              mosaic=True, seed=1)
        loader = make_loader(ds, batch_size=5, shuffle=True, workers=workers)
        runs = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            runs.append(list(loader))
        return runs
    serial, parallel = epochs(0), epochs(2)
    for run_s, run_p in zip(serial, parallel):
        assert len(run_s) == 4
        for (img_s, t_s, p_s, _), (img_p, t_p, p_p, _) in zip(run_s, run_p):
            assert torch.equal(img_s, img_p) and torch.equal(t_s, t_p) and p_s == p_p
    assert [b[2] for b in serial[0]] != [b[2] for b in serial[1]]      # reshuffled per epoch


def test_cached_validation_items_equal_uncached(synthetic):
    plain = DetectionDataset(synthetic.val, synthetic.names, imgsz=96)
    cached = DetectionDataset(synthetic.val, synthetic.names, imgsz=96, cache=True)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], cached[i][0]) and torch.equal(plain[i][1], cached[i][1])


# -- command line ---------------------------------------------------------------------------
def data_cli(argv):
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_converts_and_summarises(tmp_path, capsys):
    make_nwpu_tree(tmp_path / "src")
    assert data_cli(["data", "nwpu", str(tmp_path / "src"), str(tmp_path / "out"),
                     "--val-fraction", "0.4", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "problems handled: 1" in text and "data.yaml" in text
    assert data_cli(["data", "synthetic", str(tmp_path / "syn"), "--train", "3", "--val", "1",
                     "--size", "128"]) == 0
    assert len(load_data_config(tmp_path / "syn").train) == 3
    with pytest.raises(GraphpruneError, match="already exists"):
        data_cli(["data", "synthetic", str(tmp_path / "syn"), "--train", "3", "--val", "1"])
    assert data_cli(["data", "synthetic", str(tmp_path / "syn"), "--train", "2", "--val", "1",
                     "--overwrite"]) == 0
    assert yaml.safe_load((tmp_path / "syn" / "data.yaml").read_text())["nc"] == 3


def test_non_finite_corners_are_skipped():
    from graphprune.data.rsod import parse_voc_xml
    xml = ("<annotation><object><name>aircraft</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
           "<xmax>1</xmax><ymax>NAN</ymax></bndbox></object></annotation>")
    rows, problems = parse_voc_xml(xml, 1, 1)
    assert len(rows) == 0 and "nan or inf" in problems[0]
