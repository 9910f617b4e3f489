"""The labels of every ultralytics task (OBB corners, segmentation polygons, pose keypoints),
the rotated-rectangle mask M of an oriented-box detector, and the synthetic set in each
task's format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphprune.attention import (CalibrationSet, is_oriented_head, label_rectangles,
                                  target_mask)
from graphprune.cli import main
from graphprune.data import DetectionDataset, load_data_config, make_synthetic_dataset
from graphprune.data.labels import min_area_rectangle, parse_yolo_labels, parse_yolo_shapes
from graphprune.errors import GraphpruneError


# -- M from rotated rectangles, by hand -------------------------------------------------------
DIAMOND = np.array([[[4, 1], [7, 4], [4, 7], [1, 4]]], dtype=float)    # |x−4| + |y−4| ≤ 3


def test_rotated_mask_marks_the_cells_whose_centre_lies_inside_the_rectangle():
    # an 8 × 8 image read at stride 1: the cell (r, c) has its centre at (c + ½, r + ½), which
    # lies in the diamond when |c − 3.5| + |r − 3.5| ≤ 3
    expected = np.array([[0, 0, 0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 1, 1, 0, 0, 0],
                         [0, 0, 1, 1, 1, 1, 0, 0],
                         [0, 1, 1, 1, 1, 1, 1, 0],
                         [0, 1, 1, 1, 1, 1, 1, 0],
                         [0, 0, 1, 1, 1, 1, 0, 0],
                         [0, 0, 0, 1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0, 0]], dtype=bool)
    got = target_mask(DIAMOND, (8, 8), (8, 8)).numpy()
    np.testing.assert_array_equal(got, expected)
    # the corners' winding does not matter
    np.testing.assert_array_equal(target_mask(DIAMOND[:, ::-1], (8, 8), (8, 8)).numpy(),
                                  expected)
    # its axis-aligned bounds would mark the whole 6 × 6 square instead
    assert target_mask(np.array([[1, 1, 7, 7]]), (8, 8), (8, 8)).numpy().sum() == 36 > 24
    # at stride 2 the centres lie at 1, 3, 5, 7: only the four around the middle are inside
    np.testing.assert_array_equal(target_mask(DIAMOND, (4, 4), (8, 8)).numpy(),
                                  [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_a_rotated_box_smaller_than_the_stride_marks_the_cell_holding_its_centre():
    tiny = np.array([[[5.2, 2.9], [5.9, 3.6], [5.2, 4.3], [4.5, 3.6]]])   # centre (5.2, 3.6)
    got = target_mask(tiny, (4, 4), (8, 8)).numpy()
    assert got.sum() == 1 and got[1, 2]


def test_min_area_rectangle_gives_a_rectangle_back_and_fits_a_quadrilateral():
    np.testing.assert_allclose(sorted(map(tuple, min_area_rectangle(DIAMOND[0]).round(9))),
                               sorted(map(tuple, DIAMOND[0])))
    # an irregular quadrilateral: a 4 × 2 rectangle at 30° with one corner pulled inwards;
    # the smallest rectangle around it is that rectangle
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    turn = np.array([[c, s], [-s, c]])
    rect = np.array([[0, 0], [4, 0], [4, 2], [0, 2]], dtype=float) @ turn + 10
    quad = rect.copy()
    quad[2] = (rect[2] * 3 + rect[0]) / 4
    got = min_area_rectangle(quad)
    np.testing.assert_allclose(sorted(map(tuple, got.round(9))),
                               sorted(map(tuple, rect.round(9))), atol=1e-9)
    # collinear and repeated points give a flat rectangle (the centre cell still counts)
    flat = min_area_rectangle(np.array([[1.0, 1.0], [4.0, 4.0], [2.0, 2.0], [1.0, 1.0]]))
    assert np.allclose(flat.mean(0), [2.5, 2.5])
    got = target_mask(flat[None], (4, 4), (8, 8)).numpy()
    assert got.sum() == 1 and got[1, 1]          # a flat rectangle marks its centre cell only


def test_label_rectangles_are_fitted_in_pixels_of_a_non_square_image():
    # a 45° square in a 200 × 100 (w × h) image: its normalised corners are skewed, its pixel
    # corners are a square again
    pixel = np.array([[100, 20], [130, 50], [100, 80], [70, 50]], dtype=float)
    outline = (pixel / [200, 100]).astype(np.float32)
    labels = np.array([[0, 0.5, 0.5, 0.3, 0.6], [1, 0.25, 0.5, 0.1, 0.2]], dtype=np.float32)
    got = label_rectangles(labels, [outline, None], (100, 200))
    np.testing.assert_allclose(sorted(map(tuple, got[0].round(4))),
                               sorted(map(tuple, pixel)), atol=1e-3)
    # a plain box keeps its own corners
    np.testing.assert_allclose(got[1], [[40, 40], [60, 40], [60, 60], [40, 60]], atol=1e-4)


def test_only_a_head_with_an_angle_branch_is_oriented():
    class Head(torch.nn.Module):
        def __init__(self, ne=None):
            super().__init__()
            self.nc, self.reg_max = 3, 16
            if ne is not None:
                self.ne = ne

    assert is_oriented_head(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), Head(ne=1)))
    assert not is_oriented_head(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), Head()))
    assert not is_oriented_head(torch.nn.Conv2d(3, 3, 1))


# -- label lines of each task ----------------------------------------------------------------
def test_polygon_and_obb_lines_give_their_bounds_and_keep_their_points():
    text = ("0 0.5 0.5 0.2 0.2\n"
            "1 0.1 0.2 0.4 0.1 0.5 0.4 0.2 0.5\n"                  # DOTA-style corners
            "2 0.3 0.3 0.6 0.3 0.45 0.7\n"                          # a triangle
            "1 0.1 0.2 1.2 0.1 0.5 0.4 0.2 0.5\n"                   # reaches outside
            "1 0.1 0.2 0.4 0.1 0.5 0.4 0.2\n")                      # 8 fields: no shape
    boxes, outlines, problems = parse_yolo_shapes(text, 3)
    np.testing.assert_allclose(boxes, [[0, 0.5, 0.5, 0.2, 0.2], [1, 0.3, 0.3, 0.4, 0.4],
                                       [2, 0.45, 0.5, 0.3, 0.4]], atol=1e-6)
    assert outlines[0] is None
    np.testing.assert_allclose(outlines[1], [[0.1, 0.2], [0.4, 0.1], [0.5, 0.4], [0.2, 0.5]])
    assert outlines[2].shape == (3, 2)
    assert len(problems) == 2
    assert problems[0].startswith("line 4:") and "polygon reaches outside" in problems[0]
    assert problems[1].startswith("line 5:") and "8 fields" in problems[1]


def test_keypoint_lines_need_the_datasets_kpt_shape():
    line = "0 0.5 0.5 0.2 0.2 0.45 0.5 2 0.5 0.5 2"       # box and 2 keypoints of 3 values
    boxes, problems = parse_yolo_labels(line, 3, kpt_shape=(2, 3))
    np.testing.assert_allclose(boxes, [[0, 0.5, 0.5, 0.2, 0.2]])
    assert problems == []
    # without kpt_shape the 11 fields read as a 5-point polygon (ultralytics reads them so
    # too); a line of the wrong length for the shape is refused and says what was expected
    _, problems = parse_yolo_labels(line + " 0.1", 3, kpt_shape=(2, 3))
    assert len(problems) == 1 and "12 fields" in problems[0] and "5 + 2·3" in problems[0]
    # one value missing, leaving an odd count, is refused too, not read as a 6-point polygon
    three = line + " 0.55 0.5"                       # 3 keypoints, the last one's v missing
    boxes, problems = parse_yolo_labels(three, 3, kpt_shape=(3, 3))
    assert len(boxes) == 0 and len(problems) == 1 and "13 fields" in problems[0]


@pytest.mark.parametrize("shape, ok", [([17, 3], True), ([4, 2], True), ([17, 4], False),
                                       ([0, 3], False), ("17,3", False), ([17.0, 3], False)])
def test_kpt_shape_in_data_yaml_is_checked(tmp_path, shape, ok):
    (tmp_path / "images").mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "data.yaml").write_text(f"train: images\nval: images\nnames: [a]\n"
                                        f"kpt_shape: {shape!r}\n".replace("'", ""))
    if ok:
        assert load_data_config(tmp_path / "data.yaml").kpt_shape == tuple(shape)
    else:
        with pytest.raises(GraphpruneError, match="kpt_shape"):
            load_data_config(tmp_path / "data.yaml")


# -- the synthetic set in each task's format --------------------------------------------------
@pytest.fixture(scope="module")
def task_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    for task in ("detect", "obb", "segment", "pose"):
        assert main(["data", "synthetic", str(root / task), "--train", "2", "--val", "3",
                     "--size", "128", "--task", task]) == 0
    return root


def _dataset(root, task):
    config = load_data_config(root / task)
    return DetectionDataset(config.val, config.names, 128, kpt_shape=config.kpt_shape)


def test_each_task_labels_the_same_images_and_reads_back_to_the_same_boxes(task_sets):
    detect = _dataset(task_sets, "detect")
    images = [p.read_bytes() for p in detect.images]
    for task in ("obb", "segment", "pose"):
        other = _dataset(task_sets, task)
        assert [p.read_bytes() for p in other.images] == images
        assert other.problems == []
        for a, b, outlines in zip(detect.labels, other.labels, other.outlines):
            assert len(a) == len(b) > 0
            np.testing.assert_array_equal(a[:, 0], b[:, 0])
            if task == "obb":       # the rotated rectangle holds the outline: bounds as large
                assert (b[:, 3:] >= a[:, 3:] - 1e-5).all()
                assert all(o.shape == (4, 2) for o in outlines)
            else:                   # a convex hull (or the box itself) has the same bounds
                np.testing.assert_allclose(b, a, atol=2e-6)
    assert load_data_config(task_sets / "pose").kpt_shape == (3, 3)
    assert load_data_config(task_sets / "obb").kpt_shape is None


def test_an_obb_calibration_set_marks_the_rotated_rectangles_only(task_sets):
    dataset = _dataset(task_sets, "obb")
    axis = CalibrationSet.from_dataset(dataset, 3)
    rotated = CalibrationSet.from_dataset(dataset, 3, rotated=True)
    assert rotated.rotated is not None and axis.rotated is None
    inside = outside = 0
    for i in range(len(dataset)):
        m_rot, m_axis = rotated.mask(0, i, (32, 32)), axis.mask(0, i, (32, 32))
        # each rectangle lies within its letterboxed bounds (up to the cell holding a centre)
        np.testing.assert_allclose(rotated.boxes[0][i], axis.boxes[0][i], atol=1e-3)
        inside += int((m_rot & m_axis).sum())
        outside += int((m_rot & ~m_axis).sum())
    assert outside == 0
    assert 0 < inside < sum(int(axis.mask(0, i, (32, 32)).sum()) for i in range(len(dataset)))


def test_unknown_task_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "synthetic", str(tmp_path / "x"), "--task", "depth"])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()
