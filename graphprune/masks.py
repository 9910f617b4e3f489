"""Channel masks: the zero-masked reference, and masks from a threshold or a prune ratio.

A mask is a bool array per *channel producer*, ``True`` = keep.  The producers are the layers whose
output channels a mask may name: BatchNorms (however they are written), GroupNorms (whole groups),
LayerNorms over the channel dimension, and convolutions (``groups=1``) and linear layers whose
output does not go straight into a BatchNorm.  The zero-masked model (DESIGN.md) is the original
model in which every pruned channel's output is exactly 0 at its producer: a norm layer's γ and β
are set to 0, so norm(x) = 0·x̂ + 0 for those channels whatever the statistics; a convolution's or
linear layer's output rows (weights and bias) are set to 0.  That is the semantics every compile
is checked against.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import MaskError


class _FrozenMeta(type):
    def __instancecheck__(cls, module: Any) -> bool:
        if not isinstance(module, nn.Module) or \
                isinstance(module, nn.modules.batchnorm._BatchNorm) or any(module.children()):
            return False
        tensors = [getattr(module, k, None) for k in FROZEN_FIELDS]
        return all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in tensors) and \
            len({t.shape[0] for t in tensors}) == 1 and \
            type(module).forward is not nn.Module.forward


FROZEN_FIELDS = ("weight", "bias", "running_mean", "running_var")


class FrozenBatchNorm(metaclass=_FrozenMeta):
    """Any module that is a BatchNorm written by hand: no children, 1-D ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` of one length (parameters or buffers), and a forward
    of its own (torchvision's and detectron2's FrozenBatchNorm2d). ``isinstance`` checks the
    module itself, so no such class needs to be imported."""


# the layer types the compiler slims: every module that reads them imports them from here.
# Every BatchNorm counts, however it is written: BatchNorm1d/2d/3d, SyncBatchNorm, subclasses
# that fuse more into their forward (timm's BatchNormAct2d: batch norm, then its activation)
# and frozen ones written as buffers; the tracer keeps them whole, and one whose forward does not
# send a zeroed channel to zero is left unpruned, with the reason (passes/collect_statistics.py).
BATCHNORMS = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm)
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# the other norm layers a mask may name: GroupNorm (whole groups) and LayerNorm over the channel
# dimension (nn.LayerNorm on [N, C], or a subclass normalising dim 1, such as timm's LayerNorm2d)
GROUPNORMS = (nn.GroupNorm,)
LAYERNORMS = (nn.LayerNorm,)
NORMS = BATCHNORMS + GROUPNORMS + LAYERNORMS
# every module type a mask may name
PRODUCERS = NORMS + CONVS + (nn.Linear,)


def kind_of(module: nn.Module) -> str:
    """The producer kind of ``module``: batchnorm, groupnorm, layernorm, conv or linear."""
    if isinstance(module, BATCHNORMS):
        return "batchnorm"
    if isinstance(module, GROUPNORMS):
        return "groupnorm"
    if isinstance(module, LAYERNORMS):
        return "layernorm"
    if isinstance(module, CONVS):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    raise TypeError(f"{type(module).__name__} is not a channel producer")


def as_mask(value: Any, name: str, size: int) -> np.ndarray:
    """A user's mask (bool/0-1 tensor, array or list) as a bool array of ``size``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise MaskError(f"mask for {name!r} has shape {tuple(arr.shape)}",
                        hint=f"give a 1-D mask of {size} booleans (True = keep)")
    if len(arr) != size:
        raise MaskError(f"mask for {name!r} has {len(arr)} entries but the layer has {size} "
                        "channels", hint=f"give {size} booleans (True = keep)")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise MaskError(f"mask for {name!r} holds values other than 0/1 and True/False",
                            hint="True (or 1) keeps a channel, False (or 0) prunes it")
        arr = arr.astype(bool)
    return arr.copy()


def unknown_layer_error(name: str, known: Iterable[str]) -> MaskError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else \
        f"masks name channel producers (BatchNorm, GroupNorm, LayerNorm, convolution or linear " \
        f"layers), e.g. {', '.join(map(repr, known[:3]))}"
    return MaskError(f"mask names {name!r}, which is not a channel producer of the model",
                     hint=hint)


def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BATCHNORMS)}


def producers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` a mask may name (see the module docstring), prunable or not."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRODUCERS)}


# A batch norm written as a function call on tensors a module holds
# (``F.batch_norm(x, self.mean, self.var, self.bn_weight, self.bn_bias, ...)``) is a producer too:
# a mask names its weight tensor, and its bias is the tensor of the same module named as the
# weight's pair (weight → bias, gamma → beta, scale → shift, a trailing _w → _b).
_PAIRS = (("weight", "bias"), ("gamma", "beta"), ("scale", "shift"))


def bias_pair(name: str) -> str | None:
    """The qualified name of the bias that pairs with the weight tensor ``name``, or None."""
    owner, dot, attr = name.rpartition(".")
    for w, b in _PAIRS:
        if w in attr:
            return owner + dot + attr.replace(w, b, 1)
    if attr.endswith("_w"):
        return owner + dot + attr[:-2] + "_b"
    return None


def tensor_norm_pair(model: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) when ``name`` is a 1-D tensor (parameter or buffer) of ``model`` that a
    functional batch norm could use: held by a module that is not itself a producer, with a
    bias of the same length named as its pair; else None."""
    owner, _, attr = name.rpartition(".")
    pair = bias_pair(name)
    try:
        holder = model.get_submodule(owner) if owner else model
    except AttributeError:
        return None
    if pair is None or isinstance(holder, PRODUCERS):
        return None
    weight, bias = getattr(holder, attr, None), getattr(holder, pair.rpartition(".")[2], None)
    if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)) or \
            weight.dim() != 1 or bias.shape != weight.shape:
        return None
    return weight, bias


def tensor_norms(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{weight name: (weight, bias)} of every tensor pair a functional batch norm could use
    (:func:`tensor_norm_pair`)."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    found = {n: tensor_norm_pair(model, n) for n in names}
    return {n: pair for n, pair in found.items() if pair is not None}


def features(layer: nn.Module) -> int:
    """A producer's output channel count: a BatchNorm's ``num_features`` (for a frozen one,
    which has none, the length of its ``weight``), a GroupNorm's ``num_channels``, a
    LayerNorm's last normalised size, a convolution's ``out_channels``, a linear layer's
    ``out_features``."""
    if isinstance(layer, GROUPNORMS):
        return int(layer.num_channels)
    if isinstance(layer, LAYERNORMS):
        return int(layer.normalized_shape[-1])
    if isinstance(layer, CONVS):
        return int(layer.out_channels)
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    count = getattr(layer, "num_features", None)
    return int(count) if count is not None else int(layer.weight.shape[0])


def is_affine(layer: nn.Module) -> bool:
    """Whether a producer has a per-channel scale to zero: a norm layer's γ (and β, where it has
    one: a LayerNorm may be built without), a convolution's or linear layer's weight rows."""
    if isinstance(layer, CONVS + (nn.Linear,)):
        return True
    if isinstance(layer, LAYERNORMS):
        return getattr(layer, "weight", None) is not None and len(layer.normalized_shape) == 1
    flag = getattr(layer, "affine", True)
    return bool(flag) and layer.weight is not None and layer.bias is not None


def group_size(layer: nn.Module) -> int:
    """How many consecutive channels a mask of ``layer`` keeps or prunes together (a
    GroupNorm's groups; 1 for every other producer)."""
    if isinstance(layer, GROUPNORMS):
        return int(layer.num_channels) // int(layer.num_groups)
    return 1


def whole_groups(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` grown to whole groups of ``size`` consecutive channels (a group with one kept
    channel keeps all of them)."""
    if size <= 1:
        return mask
    return np.repeat(mask.reshape(-1, size).any(1), size)


def zero_channels(layer: nn.Module, keep: torch.Tensor, zero_bias: bool) -> None:
    """Zero, in place, the scale of the channels ``keep`` prunes (a norm's γ, a convolution's or
    linear layer's weight rows), and their bias when ``zero_bias``."""
    keep = keep.to(layer.weight.device)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(keep.to(layer.weight.dtype).reshape(shape))
    bias = getattr(layer, "bias", None)
    if zero_bias and bias is not None:
        bias.mul_(keep.to(bias.dtype))


def fused_batchnorm_problem(bn: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Why a BatchNorm (or GroupNorm) subclass with its own forward (a fused activation, drop
    path, ...) cannot be pruned, or None when it can: run on a throw-away copy with γ = β = 0, a
    channel must come out exactly 0 and the shape unchanged, as for a norm followed by a
    zero-preserving op. A plain BatchNorm or GroupNorm needs no probe."""
    if type(bn) in PLAIN_BATCHNORMS + GROUPNORMS or not is_affine(bn):
        return None
    probe = copy.deepcopy(bn).eval()
    shape = (1, *input_shape[1:])
    try:
        with torch.no_grad():
            probe.weight.zero_()
            probe.bias.zero_()
            out = probe(torch.zeros(shape, dtype=bn.weight.dtype, device=bn.weight.device))
    except Exception as exc:             # its forward is its own: anything may fail
        return f"its own forward ({type(bn).__name__}) failed on a probe: {type(exc).__name__}"
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        return f"its own forward ({type(bn).__name__}) changes the shape of its input"
    if bool(out.any()):
        return (f"its own forward ({type(bn).__name__}) turns a zeroed channel into a non-zero "
                "output (a fused op such as sigmoid)")
    return None


def layernorm_problem(ln: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Why a LayerNorm on inputs of ``input_shape`` does not normalise their channel dimension
    (dim 1), or None when it does.  A plain ``nn.LayerNorm`` normalises the last dimensions, so
    it must see ``[N, C]``; a subclass with its own forward (timm's LayerNorm2d permutes NCHW
    around ``F.layer_norm``) is run once on a throw-away copy with random γ, β and input and
    compared with a layer norm over dim 1."""
    shape = tuple(input_shape)
    if getattr(ln, "weight", None) is None:
        return "has no affine γ to prune"
    if len(ln.normalized_shape) != 1 or len(shape) < 2 or shape[1] != ln.normalized_shape[0]:
        return (f"it normalises the last {len(ln.normalized_shape)} dimension(s) "
                f"{tuple(ln.normalized_shape)}, not the channels of its {list(shape)} input")
    if type(ln).forward is nn.LayerNorm.forward:
        return None if len(shape) == 2 else \
            f"it normalises the last dimension of its {list(shape)} input, not the channels"
    probe = copy.deepcopy(ln).eval()
    gen = torch.Generator().manual_seed(0)
    device, dtype = ln.weight.device, ln.weight.dtype
    x = torch.randn((2, *shape[1:]), generator=gen).to(device, dtype)
    try:
        with torch.no_grad():
            probe.weight.copy_(torch.rand(probe.weight.shape, generator=gen) + 0.5)
            if probe.bias is not None:
                probe.bias.copy_(torch.randn(probe.bias.shape, generator=gen))
            out = probe(x)
            ref = torch.nn.functional.layer_norm(x.movedim(1, -1), tuple(ln.normalized_shape),
                                                 probe.weight, probe.bias, ln.eps).movedim(-1, 1)
    except Exception as exc:             # its forward is its own: anything may fail
        return f"its own forward ({type(ln).__name__}) failed on a probe: {type(exc).__name__}"
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape or \
            not torch.allclose(out, ref, atol=1e-5, rtol=1e-4):
        return (f"its own forward ({type(ln).__name__}) does not normalise the channel "
                "dimension of its input")
    return None


def producer_sizes(model: nn.Module) -> dict[str, int]:
    """{name: channels} of every channel producer of ``model``, prunable or not (what a mask
    request may name): the producer modules, and the weight tensors a functional batch norm
    could use."""
    sizes = {n: features(m) for n, m in producers(model).items()}
    sizes.update({n: len(w) for n, (w, _) in tensor_norms(model).items()})
    return sizes


def zero_mask(model: nn.Module, masks: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` in which each pruned channel outputs exactly 0 at its producer.

    ``masks``: {producer name: keep mask}; layers not named keep every channel.  The caller's
    model is not modified."""
    return masked_copy(model, masks, zero_bias=True)


def masked_copy(model: nn.Module, masks: Mapping[str, Any], zero_bias: bool) -> nn.Module:
    """A copy of ``model`` with the scale of the pruned channels set to 0 (γ of a norm layer,
    the weight rows of a convolution or linear layer), and their bias (β) too when
    ``zero_bias`` (then the channel outputs 0; otherwise a constant)."""
    ref = copy.deepcopy(model)
    layers = producers(ref)
    functional = tensor_norms(ref) if any(n not in layers for n in masks) else {}
    with torch.no_grad():
        for name, value in masks.items():
            if name in functional:          # a functional batch norm's weight and bias
                weight, bias = functional[name]
                keep = torch.as_tensor(as_mask(value, name, len(weight))).to(weight.device)
                weight.mul_(keep.to(weight.dtype))
                if zero_bias:
                    bias.mul_(keep.to(bias.dtype))
                continue
            if name not in layers:
                raise unknown_layer_error(name, layers)
            layer = layers[name]
            keep = torch.as_tensor(as_mask(value, name, features(layer)))
            if not is_affine(layer):
                raise MaskError(f"{type(layer).__name__} {name!r} has no affine parameters to "
                                "zero", hint="only norm layers with a γ (affine) can be masked")
            zero_channels(layer, keep, zero_bias)
    return ref


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``exclude`` patterns: fnmatch on the layer name, or a module prefix (``model.24``)."""
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip(".") + "."):
            return True
    return False


def global_order(gammas: Mapping[str, np.ndarray], candidates: Mapping[str, np.ndarray]
                 ) -> tuple[np.ndarray, list[str]]:
    """Candidate channels sorted by pruning priority.

    Importance is |γ|; ties broken by layer order, then channel index, so that an untrained
    model (every γ = 1) still prunes exactly the requested number.  Returns an array of
    (layer index, channel) rows, least important first, and the layer names."""
    names = list(gammas)
    layer_ids, chans, values = [], [], []
    for i, name in enumerate(names):
        idx = np.flatnonzero(candidates[name])
        layer_ids.append(np.full(len(idx), i))
        chans.append(idx)
        values.append(gammas[name][idx])
    if not names:
        return np.zeros((0, 2), dtype=np.int64), names
    layer_ids, chans, values = (np.concatenate(a) for a in (layer_ids, chans, values))
    order = np.lexsort((chans, layer_ids, values))
    return np.stack([layer_ids[order], chans[order]], 1).astype(np.int64), names


def masks_from_ranking(gammas: Mapping[str, np.ndarray], candidates: Mapping[str, np.ndarray],
                       n_prune: int) -> dict[str, np.ndarray]:
    """Prune the ``n_prune`` least important candidate channels (Algorithm 2, as a count)."""
    ranked, names = global_order(gammas, candidates)
    masks = {name: np.ones(len(g), dtype=bool) for name, g in gammas.items()}
    for layer, channel in ranked[:n_prune]:
        masks[names[layer]][channel] = False
    return masks


def count_below(gammas: Mapping[str, np.ndarray], candidates: Mapping[str, np.ndarray],
                threshold: float) -> int:
    """How many candidate channels have |γ| < ``threshold`` (the global δ of Algorithm 2)."""
    return int(sum((g[candidates[n]] < threshold).sum() for n, g in gammas.items()))


def enforce_min_channels(masks: dict[str, np.ndarray], gammas: Mapping[str, np.ndarray],
                         min_channels: int) -> dict[str, str]:
    """Keep at least ``min_channels`` per layer (the largest |γ| first).  Returns the reasons."""
    grown = {}
    for name, mask in masks.items():
        need = min(min_channels, len(mask)) - int(mask.sum())
        if need <= 0:
            continue
        g = gammas[name]
        pruned = np.flatnonzero(~mask)
        best = pruned[np.lexsort((pruned, -g[pruned]))][:need]
        mask[best] = True
        grown[name] = f"min_channels={min_channels}"
    return grown


def round_up_count(kept: int, total: int, multiple: int) -> int:
    """``kept`` rounded up to a multiple of ``multiple``, at most ``total``."""
    return min(-(-kept // multiple) * multiple, total)


def round_up_channels(masks: dict[str, np.ndarray], gammas: Mapping[str, np.ndarray],
                      multiple: int | Callable[[str, int, int], int],
                      why: str | None = None) -> dict[str, str]:
    """Keep a multiple of ``multiple`` channels per layer (or all of them) — or, when
    ``multiple`` is a function ``(layer, kept, total) -> width``, the width it gives — adding
    the pruned channels with the largest |γ| first.  Returns the reasons (``why``, by default
    ``round_to=<multiple>``) for the layers that grew."""
    grown = {}
    if not callable(multiple) and multiple <= 1:
        return grown
    for name, mask in masks.items():
        kept, total = int(mask.sum()), len(mask)
        if callable(multiple):
            want = min(max(int(multiple(name, kept, total)), kept), total)
        else:
            want = round_up_count(kept, total, multiple)
        if want <= kept:
            continue
        g = gammas[name]
        pruned = np.flatnonzero(~mask)
        mask[pruned[np.lexsort((pruned, -g[pruned]))][:want - kept]] = True
        grown[name] = why or f"round_to={multiple}"
    return grown


__all__ = ["BATCHNORMS", "CONVS", "FrozenBatchNorm", "GROUPNORMS", "LAYERNORMS", "NORMS",
           "PLAIN_BATCHNORMS", "PRODUCERS", "features", "group_size", "is_affine", "kind_of",
           "as_mask", "batchnorms", "bias_pair", "count_below", "layernorm_problem", "tensor_norm_pair", "tensor_norms", "producer_sizes", "producers",
           "whole_groups", "zero_channels",
           "enforce_min_channels", "global_order", "masked_copy", "masks_from_ranking", "matches",
           "round_up_channels", "round_up_count", "unknown_layer_error", "zero_mask"]
