"""Shared test helpers: random masks, and the three-way check every compile test makes.

``check_compile`` compiles a model and checks the numbers independently of the compiler's own
verification: the slim module against ``graphprune.zero_mask`` of the original model, and the
exported ONNX file in onnxruntime against the slim module, both elementwise within
|a − b| ≤ 1e-4 + 1e-4·|b|.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

import graphprune as gp
from graphprune.export import onnx_parity
from graphprune.masks import batchnorms, features

ATOL = RTOL = 1e-4

# pytest-xdist runs one worker per core: more than one torch thread per worker oversubscribes
# the cores, and OpenMP's spinning threads then slow every op down many times over.
torch.set_num_threads(1)

# what graphprune measures and caches (runtime-aware widths) stays out of the user's cache
os.environ["GRAPHPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="graphprune-test-cache-")


def random_masks(model: nn.Module, p: float = 0.5, seed: int = 0, names=None):
    rng = np.random.default_rng(seed)
    return {n: rng.random(features(m)) < p for n, m in batchnorms(model).items()
            if names is None or n in names}


def assert_close(out, ref, atol=ATOL, rtol=RTOL):
    flat_out, flat_ref = tree_flatten(out)[0], tree_flatten(ref)[0]
    assert len(flat_out) == len(flat_ref)
    for o, r in zip(flat_out, flat_ref):
        assert o.shape == r.shape
        diff = (o.float() - r.float()).abs()
        bound = atol + rtol * r.float().abs()
        assert bool((diff <= bound).all()), f"max |diff| {float(diff.max()):.3g}"


def outputs(model: nn.Module, x):
    model.eval()
    with torch.no_grad():
        return model(*x) if isinstance(x, tuple) else model(x)


def check_compile(model: nn.Module, x, tmp_path=None, onnx: bool = True, **kwargs):
    """Compile, then check slim == zero-masked (and ORT == slim when ``tmp_path``)."""
    model = model.eval()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, x, **kwargs)
    for k, v in model.state_dict().items():      # the caller's model is untouched
        assert torch.equal(v, before[k]), f"compile modified {k}"
    ref = gp.zero_mask(model, result.masks)
    assert_close(outputs(result.module, x), outputs(ref, x))
    if onnx and tmp_path is not None:
        path = result.export_onnx(tmp_path / "slim.onnx")
        inputs = x if isinstance(x, tuple) else (x,)
        expected = [t for t in tree_flatten(outputs(result.module, x))[0]]
        assert onnx_parity(path, inputs, expected, ATOL, RTOL) is None
    return result


def slim_layer(result, name: str) -> nn.Module:
    return result.module.get_submodule(name)


def graph_targets(result) -> list:
    return [n.target for n in result.module.graph.nodes if n.op == "call_function"]


__all__ = ["assert_close", "check_compile", "graph_targets", "outputs", "random_masks",
           "slim_layer"]


# ultralytics tests (marked ``ultralytics``) run in the second environment of ``make test``;
# where ultralytics is not installed they are not collected, unless GP_REQUIRE_ULTRALYTICS says
# they must run (then the import error fails the run instead of hiding the tests).
import importlib.util  # noqa: E402

# The timm tests (test_timm*.py, also marked ``ultralytics``) live in the same environment.
collect_ignore_glob = []
if not os.environ.get("GP_REQUIRE_ULTRALYTICS"):
    if importlib.util.find_spec("ultralytics") is None:
        collect_ignore_glob.append("test_ultralytics*.py")
    if importlib.util.find_spec("timm") is None:
        collect_ignore_glob.append("test_timm*.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "ultralytics: needs the ultralytics package "
                                       "(make test runs these in its second environment)")


# Property tests: a fixed example sequence in CI (a landing gate must not depend on luck);
# HYPOTHESIS_PROFILE=explore draws new examples on every run.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
