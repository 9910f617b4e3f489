"""Property tests (hypothesis): the label parsers on arbitrary text, and random small conv graphs
with random masks.

Parsers must never raise and never accept an invalid box; a random graph (residual adds,
concats, chunks) with random masks must compile to a slim model equal to the zero-masked one,
or be refused with a named reason."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphprune as gp
from graphprune.data.labels import parse_yolo_labels
from graphprune.data.nwpu import parse_nwpu_labels
from graphprune.data.rsod import RSOD_NAMES, parse_voc_xml

from conftest import assert_close

PARSER_EXAMPLES = settings(max_examples=250, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])

number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.integers(-10**6, 10**6), st.sampled_from(["nan", "inf", "-0", "1e309",
                                                                "", "x", "0x10", "1,5"]))
junk = st.text(st.characters(codec="utf-8"), max_size=60)


@st.composite
def yolo_text(draw):
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            lines.append(" ".join(str(draw(number)) for _ in range(draw(st.integers(0, 7)))))
        elif kind == 1:
            lines.append(f"{draw(st.integers(-2, 5))} " + " ".join(
                f"{draw(st.floats(-0.5, 1.5))}" for _ in range(4)))
        else:
            lines.append(draw(junk))
    sep = draw(st.sampled_from(["\n", "\r\n", "\n\n", " \n"]))
    return sep.join(lines)


@PARSER_EXAMPLES
@given(text=yolo_text(), nc=st.integers(1, 5), as_bytes=st.booleans())
def test_yolo_parser_never_raises_and_never_accepts_an_invalid_box(text, nc, as_bytes):
    rows, problems = parse_yolo_labels(text.encode("utf-8", "surrogatepass") if as_bytes
                                       else text, nc)
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == 5
    assert isinstance(problems, list)
    for c, cx, cy, w, h in rows.tolist():
        assert all(math.isfinite(v) for v in (c, cx, cy, w, h))
        assert c == int(c) and 0 <= c < nc
        assert w > 0 and h > 0
        assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
        assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6


@st.composite
def nwpu_text(draw):
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            x1, y1, x2, y2 = (draw(st.integers(-50, 700)) for _ in range(4))
            pad = draw(st.sampled_from(["", " ", "  "]))
            lines.append(f"({pad}{x1},{y1}),({x2},{pad}{y2}),{draw(st.integers(-1, 12))}"
                         f"{draw(st.sampled_from(['', ' ', '  ']))}")
        else:
            lines.append(draw(junk))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@PARSER_EXAMPLES
@given(text=nwpu_text(), width=st.integers(1, 640), height=st.integers(1, 640))
def test_nwpu_parser_never_raises_and_never_accepts_an_invalid_box(text, width, height):
    assert_valid_pixel_boxes(*parse_nwpu_labels(text, width, height), width, height, 10)


def assert_valid_pixel_boxes(rows, problems, width, height, classes):
    assert rows.shape[1:] == (5,) and isinstance(problems, list)
    for c, x1, y1, x2, y2 in rows.tolist():
        assert c == int(c) and 0 <= c < classes
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


@st.composite
def voc_xml(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(junk)
    objects = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(RSOD_NAMES), junk))
        fields = {k: draw(st.one_of(st.integers(-50, 700).map(str), junk))
                  for k in ("xmin", "ymin", "xmax", "ymax")
                  if draw(st.integers(0, 9))}          # sometimes a corner is missing
        box = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
        objects.append(f"<object><name>{name}</name><bndbox>{box}</bndbox></object>")
    return f"<annotation>{''.join(objects)}</annotation>"


@PARSER_EXAMPLES
@given(text=voc_xml(), width=st.integers(1, 640), height=st.integers(1, 640))
def test_rsod_parser_never_raises_and_never_accepts_an_invalid_box(text, width, height):
    assert_valid_pixel_boxes(*parse_voc_xml(text, width, height), width, height,
                             len(RSOD_NAMES))


# -- random graphs ----------------------------------------------------------------------------
class ConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, k=3):
        super().__init__(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.SiLU())


class RandomNet(nn.Module):
    """A chain of blocks drawn from: conv, residual add, concat of two branches, chunk into
    two halves that are added, max-pool; then a 1×1 head."""

    def __init__(self, blocks: list[tuple[str, int]], width: int):
        super().__init__()
        self.kinds = [kind for kind, _ in blocks]
        self.stem = ConvBN(3, width)
        layers, c = [], width
        for kind, size in blocks:
            if kind == "conv":
                layers.append(nn.ModuleList([ConvBN(c, size)]))
                c = size
            elif kind == "residual":
                layers.append(nn.ModuleList([ConvBN(c, c), ConvBN(c, c, 1)]))
            elif kind == "concat":
                layers.append(nn.ModuleList([ConvBN(c, size), ConvBN(c, size, 1)]))
                c = 2 * size
            elif kind == "chunk":
                layers.append(nn.ModuleList([ConvBN(c, 2 * size)]))
                c = size
            else:
                layers.append(nn.ModuleList([nn.MaxPool2d(3, 1, 1)]))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        for kind, layer in zip(self.kinds, self.layers):
            if kind == "residual":
                x = x + layer[1](layer[0](x))
            elif kind == "concat":
                x = torch.cat([layer[0](x), layer[1](x)], 1)
            elif kind == "chunk":
                a, b = layer[0](x).chunk(2, 1)
                x = a + b
            else:
                x = layer[0](x)
        return self.head(x)


blocks = st.lists(st.tuples(st.sampled_from(["conv", "residual", "concat", "chunk", "pool"]),
                            st.integers(2, 6)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=blocks, width=st.integers(2, 6), seed=st.integers(0, 2**16),
       p=st.floats(0.0, 1.0), residual=st.sampled_from(["reconstruct", "couple"]))
def test_random_graphs_compile_to_the_zero_masked_model_or_say_why(spec, width, seed, p,
                                                                   residual):
    torch.manual_seed(seed)
    model = gp.models.randomize_batchnorm(RandomNet(spec, width), seed).eval()
    rng = np.random.default_rng(seed)
    masks = {n: rng.random(m.num_features) < p for n, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d)}
    x = torch.rand(2, 3, 8, 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gp.GraphpruneWarning)
            result = gp.compile(model, x, masks=masks, residual=residual)
    except gp.GraphpruneError as exc:             # a refusal must name its reason
        assert str(exc).strip()
        return
    with torch.no_grad():
        assert_close(result.module(x), gp.zero_mask(model, result.masks)(x))
    for name, keep in result.masks.items():        # only grows what was asked
        assert bool((keep | torch.as_tensor(masks[name])).eq(keep).all()), name
    assert result.stats.params_after <= result.stats.params_before
