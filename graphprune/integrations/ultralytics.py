"""Sparse training inside the ultralytics trainer, with graphprune's regulariser.

    from ultralytics import YOLO
    from graphprune.integrations.ultralytics import add_sparsity

    model = YOLO("yolov8n.yaml")
    add_sparsity(model, mode="l1rr", theta=1e-3, phase_epochs=40)
    model.train(data="data.yaml", epochs=300, imgsz=640)

The ultralytics trainer has no callback between unscaling the gradients and the optimizer
step, so ``add_sparsity`` wraps the trainer's ``scaler.step`` once training starts: the
sparsity term goes in after the task's gradient is unscaled and clipped, in true units and
unclipped, as in graphprune's own trainer, and the regulariser's post-step work (the
progressive mode's fade, polar's clamp) runs after the step.  It works with every task's
trainer (detection, OBB, segmentation, pose).  ultralytics already keeps BatchNorm weights out
of weight decay.  The regulariser's state is saved beside the weights (``weights/sparsity.pt``, tensors
and plain data only) and restored when ultralytics resumes; each epoch appends to
``sparsity.jsonl`` and redraws the plots in the run directory.

After pruning, :func:`save_ultralytics_checkpoint` writes the slim model as a checkpoint that
ultralytics itself loads (``graphprune compile ... --ultralytics-checkpoint slim.pt``):

    YOLO("slim.pt").val(data="data.yaml")        # or predict, or .info()

and :func:`finetune` (or ``YOLO("slim.pt").train(trainer=SlimTrainer, ...)``) fine-tunes it in
ultralytics' own training loop, keeping it slim:

    finetune("slim.pt", data="data.yaml", epochs=30, imgsz=640)

ultralytics checkpoints are pickled modules, so the file holds a :class:`SlimDetectionModel`
(a ``DetectionModel`` whose forward runs the compiled graph; ``SlimOBBModel``,
``SlimSegmentationModel`` and ``SlimPoseModel`` for the other tasks, fine-tuned by
``SlimOBBTrainer`` ...); loading it needs graphprune importable.  It is stored in float32 and unfused; ultralytics' ``fuse()`` (which val and
predict call) folds each BatchNorm into its convolution.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils._pytree import tree_flatten

from .. import __version__
from ..attention import find_head
from ..errors import GraphpruneError, GraphpruneWarning, VerificationError
from ..export import atomic_path
from ..sparsity import SparsityRegularizer, default_phases, prunable_batchnorms

STATE_FILE = "sparsity.pt"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _layers(model: nn.Module, imgsz: int, device) -> list[str] | None:
    """The BatchNorms the compiler can prune, or None (every BatchNorm) when the model cannot
    be analysed here."""
    try:
        return prunable_batchnorms(model, torch.zeros(1, 3, imgsz, imgsz, device=device))
    except GraphpruneError as exc:
        warnings.warn(f"sparsity: could not analyse the model ({exc}); every affine BatchNorm "
                      "is regularised", GraphpruneWarning, stacklevel=2)
        return None


class SparsityCallbacks:
    """The ultralytics callbacks (``on_train_start``, ``on_train_epoch_start``,
    ``on_train_epoch_end``, ``on_model_save``) driving one ``SparsityRegularizer``.

    The term is added where graphprune's own trainer adds it: after the task's gradient is
    unscaled and clipped, just before the optimizer steps (``on_train_start`` wraps the
    trainer's ``scaler.step``, which ``BaseTrainer.optimizer_step`` calls after
    ``scaler.unscale_`` and ``clip_grad_norm_``), so the term is neither scaled by AMP nor
    clipped, and cannot shrink the task's gradient; ``after_step`` (the progressive mode's
    fade, the polarization clamp) follows the step."""

    def __init__(self, **options: Any):
        self.options = options
        self.regularizer: SparsityRegularizer | None = None

    def on_train_start(self, trainer) -> None:
        model = _unwrap(trainer.model)
        device = next(model.parameters()).device
        imgsz = int(trainer.args.imgsz)
        layers = _layers(model, imgsz, device)
        example = torch.zeros(1, 3, imgsz, imgsz, device=device)
        options = dict(self.options)
        epochs = getattr(trainer, "epochs", None)
        if isinstance(epochs, int) and epochs > 0 and "phase_epochs" not in options and \
                "phase_steps" not in options:      # the phases graphprune's trainer would use
            phase, phases = default_phases(options.get("mode", "l1rr"), epochs)
            options["phase_epochs"] = phase
            options.setdefault("max_phases", phases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GraphpruneWarning)
            self.regularizer = SparsityRegularizer(model, example, layers=layers, **options) \
                if layers is not None else SparsityRegularizer(model, **options)
        state = Path(trainer.wdir) / STATE_FILE
        if getattr(trainer.args, "resume", False) and state.exists():
            self.regularizer.load_state_dict(torch.load(state, map_location="cpu",
                                                        weights_only=True))
        scaler = getattr(trainer, "scaler", None)
        if scaler is None or not callable(getattr(scaler, "step", None)):
            raise GraphpruneError(f"add_sparsity: {type(trainer).__name__} has no GradScaler "
                                  "'scaler' whose step() the sparsity term can precede",
                                  hint="use ultralytics' own trainers (BaseTrainer's "
                                       "optimizer_step unscales, clips, then calls "
                                       "scaler.step), or graphprune's trainer")
        step = scaler.step

        def step_with_term(optimizer, *args, **kwargs):
            # BaseTrainer.optimizer_step has unscaled the task's gradient and clipped it by now:
            # the term goes in here, in true units and unclipped, as in graphprune's own
            # trainer; the fade (progressive) follows the optimizer's step
            self.regularizer.apply()
            out = step(optimizer, *args, **kwargs)
            self.regularizer.after_step()
            return out

        scaler.step = step_with_term

    def on_train_epoch_start(self, trainer) -> None:
        self.regularizer.set_epoch(int(trainer.epoch))

    def on_train_epoch_end(self, trainer) -> None:
        self.regularizer.on_epoch_end(_RunDir(trainer.save_dir), None)

    def on_model_save(self, trainer) -> None:
        with atomic_path(Path(trainer.wdir) / STATE_FILE) as tmp:
            torch.save(self.regularizer.state_dict(), tmp)

    def items(self) -> list[tuple[str, Callable]]:
        return [(name, getattr(self, name)) for name in
                ("on_train_start", "on_train_epoch_start", "on_train_epoch_end",
                 "on_model_save")]


class _RunDir:
    """What ``SparsityRegularizer.on_epoch_end`` needs of a trainer: where to write."""

    def __init__(self, out):
        self.out = out


def add_sparsity(model, **options: Any) -> SparsityCallbacks:
    """Register sparse training on an ultralytics ``YOLO`` model (or anything with
    ``add_callback``); ``options`` go to :class:`~graphprune.sparsity.SparsityRegularizer`
    (mode, theta, phase_epochs, phase_steps, max_phases, a, eps, near_zero, target, ...).
    Without ``phase_epochs`` or ``phase_steps`` the phases follow the run's epochs as in
    ``graphprune train`` (``graphprune.sparsity.default_phases``: the paper's 40-epoch phases
    for L1RR, a tenth of the run for the progressive mode)."""
    callbacks = SparsityCallbacks(**options)
    for event, fn in callbacks.items():
        model.add_callback(event, fn)
    return callbacks


# -- the slim model as an ultralytics checkpoint ------------------------------------------------
# Attributes of the DetectionModel that ultralytics' loaders, validators and predictors read.
_COPIED = ("yaml", "names", "nc", "stride", "args", "task", "save", "inplace", "kpt_shape",
           "kpt_names")
# how to train a slim checkpoint, for the errors that refuse the other ways
HOW_TO_TRAIN = ("train it with graphprune.integrations.ultralytics.finetune(path, data=..., "
                "epochs=...), or YOLO(path).train(trainer=SlimTrainer, ...) with SlimTrainer "
                "from graphprune.integrations.ultralytics")


class SlimYaml(dict):
    """The yaml of a slim model.  ultralytics reads it as a dict (``nc``, ``channels``,
    ``yaml_file`` ...); rebuilding a network from its layer lists — what ``YOLO("slim.pt")
    .train()`` does with ultralytics' own trainer, which would then train the unpruned network
    with the slim weights loaded where their shapes happen to match — is refused in one line
    that says how to train the slim model."""

    def __getitem__(self, key):
        if key in ("backbone", "head"):
            raise GraphpruneError("this is a graphprune slim model: ultralytics' own trainer "
                                  "would rebuild the unpruned network from its yaml",
                                  hint=HOW_TO_TRAIN)
        return super().__getitem__(key)


def is_detection_model(model: nn.Module) -> bool:
    """Whether ``model`` is an ultralytics ``DetectionModel`` (False when ultralytics is not
    installed)."""
    try:
        from ultralytics.nn.tasks import DetectionModel  # deferred: ultralytics is optional
    except ImportError:
        return False
    return isinstance(model, DetectionModel)


def _head_name(net: nn.Module) -> str:
    found = find_head(net)
    if found is None or not found[0]:
        raise GraphpruneError("the slim model has no detection head (no module with nc and "
                              "reg_max)", hint="--ultralytics-checkpoint writes detection "
                                               "models only")
    return found[0]


def fold_batchnorms(gm: torch.fx.GraphModule) -> int:
    """Fold every BatchNorm2d that follows a Conv2d into it, in place, where both are called
    once and the convolution feeds only the BatchNorm; returns how many were folded."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn, src = gm.get_submodule(node.target), node.args[0]
        if type(bn) is not nn.BatchNorm2d or not isinstance(src, torch.fx.Node) or \
                src.op != "call_module" or len(src.users) != 1:
            continue
        conv = gm.get_submodule(src.target)
        if type(conv) is not nn.Conv2d or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        parent, _, name = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name,
                fuse_conv_bn_eval(conv.eval(), bn.eval()))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def _fuse_kept_modules(net: nn.Module) -> None:
    """ultralytics' own fusing, for its modules the compile kept whole (the head)."""
    # deferred: ultralytics is optional
    from ultralytics.nn.modules import Conv, Conv2, Detect, RepConv
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    for m in net.modules():
        if isinstance(m, Conv) and hasattr(m, "bn"):
            if isinstance(m, Conv2):
                m.fuse_convs()
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
        elif isinstance(m, RepConv) and hasattr(m, "conv1"):
            m.fuse_convs()
            m.forward = m.forward_fuse
        elif isinstance(m, Detect):
            m.fuse()


# the ultralytics model and trainer classes of each task (module, class), most specific first:
# a slim model subclasses its task's model class, so the task's loss, validator and predictor
# are ultralytics' own
TASKS = {
    "obb": (("ultralytics.nn.tasks", "OBBModel"), ("ultralytics.models.yolo.obb", "OBBTrainer"),
            "SlimOBBModel", "SlimOBBTrainer"),
    "segment": (("ultralytics.nn.tasks", "SegmentationModel"),
                ("ultralytics.models.yolo.segment", "SegmentationTrainer"),
                "SlimSegmentationModel", "SlimSegmentationTrainer"),
    "pose": (("ultralytics.nn.tasks", "PoseModel"), ("ultralytics.models.yolo.pose", "PoseTrainer"),
             "SlimPoseModel", "SlimPoseTrainer"),
    "detect": (("ultralytics.nn.tasks", "DetectionModel"),
               ("ultralytics.models.yolo.detect", "DetectionTrainer"),
               "SlimDetectionModel", "SlimTrainer"),
}
_CLASSES: dict[str, type] = {}


def _import(where: tuple[str, str]) -> type:
    module, name = where
    return getattr(importlib.import_module(module), name)


def model_task(model: nn.Module) -> str:
    """The ultralytics task of a ``DetectionModel`` (``detect``, ``obb``, ``segment``,
    ``pose``): the most specific of ultralytics' model classes it is an instance of."""
    for task, (base, *_rest) in TASKS.items():
        cls = _import(base)
        if isinstance(model, cls):
            if type(model) is not cls and not isinstance(model, _SlimModel):
                # a further subclass (YOLO-World, YOLOE, ...) has its own loss and heads
                raise GraphpruneError(f"{type(model).__name__} is a kind of {cls.__name__} "
                                      "that graphprune's slim checkpoints do not cover yet",
                                      hint="drop --ultralytics-checkpoint; the compiled module "
                                           "(slim.graphprune.pt, slim.onnx) is written as usual")
            return task
    raise GraphpruneError(f"{type(model).__name__} is not an ultralytics detection, OBB, "
                          "segmentation or pose model")


class _SlimModel:
    """What a slim model adds to its task's ultralytics model class (``DetectionModel``,
    ``OBBModel``, ``SegmentationModel``, ``PoseModel``): its forward is graphprune's compiled
    slim graph.

    Built from the original model's attributes (names, stride, yaml, args, ...) without
    running the class's ``__init__``, which would build the unpruned network from the yaml.
    ``net`` is the compiled ``GraphModule``; ``model[-1]`` is its detection head, as
    ultralytics expects.  ``embed`` (per-layer embeddings) and ``profile`` are not available:
    the graph has no ultralytics layer list."""

    def __init__(self, net: nn.Module, source: nn.Module | None = None):
        nn.Module.__init__(self)
        for key in _COPIED:
            if source is not None and hasattr(source, key):
                setattr(self, key, copy.deepcopy(getattr(source, key)))
        if not hasattr(self, "task"):
            self.task = self.slim_task
        if isinstance(getattr(self, "yaml", None), dict):
            self.yaml = SlimYaml(self.yaml)
        self.net = net
        self.head_name = _head_name(net)
        self.fused = False
        self.criterion = None

    @property
    def model(self) -> tuple[nn.Module, ...]:
        """What ultralytics reads of a model's layer list: its last entry, the head."""
        return (self.net.get_submodule(self.head_name),)

    def _predict_once(self, x, profile=False, embed=None):
        if embed:
            raise NotImplementedError("embed is not available on a graphprune slim model "
                                      "(the compiled graph has no ultralytics layer list)")
        return self.net(x)

    def __setstate__(self, state):
        super().__setstate__(state)
        # a checkpoint written before SlimYaml existed: guard its yaml too
        if isinstance(self.__dict__.get("yaml"), dict) and \
                not isinstance(self.__dict__["yaml"], SlimYaml):
            self.__dict__["yaml"] = SlimYaml(self.__dict__["yaml"])

    def is_fused(self) -> bool:
        return self.fused

    def fuse(self, verbose=True, imgsz=640):
        """Fold the BatchNorms into their convolutions (the compiled graph's and those in
        the modules it kept whole) and drop the head's unused branch, like ultralytics."""
        if not self.fused:
            # the compiled graph's, and those of the blocks compiled inside the modules it
            # kept whole (graphprune.inner: the head's pruned branches)
            for m in list(self.net.modules()):
                if isinstance(m, torch.fx.GraphModule):
                    fold_batchnorms(m)
            _fuse_kept_modules(self.net)
            self.fused = True
            self.info(verbose=verbose, imgsz=imgsz)
        return self


class _SlimTrainer:
    """What a slim trainer adds to its task's ultralytics trainer (``DetectionTrainer``,
    ``OBBTrainer``, ``SegmentationTrainer``, ``PoseTrainer``): ``get_model`` returns the slim
    model it is given (the loaded ``slim.pt``, or the checkpoint a resumed run reloads)
    instead of building the network from the yaml; the rest — data, augmentation, AMP, EMA,
    the task's loss, validation, saving, resuming — is ultralytics' own.  ``best.pt`` and
    ``last.pt`` hold the slim model, which ``YOLO`` loads, validates, predicts with and exports
    as any checkpoint."""

    def get_model(self, cfg=None, weights=None, verbose=True):
        slim = slim_model_class(self.slim_task)
        if not isinstance(weights, slim):
            got = "no model" if weights is None else type(weights).__name__
            raise GraphpruneError(f"{type(self).__name__} trains a graphprune slim "
                                  f"{self.slim_task} checkpoint, got {got}",
                                  hint="give the .pt file graphprune compile "
                                  "--ultralytics-checkpoint wrote: finetune('slim.pt', ...)")
        if weights.is_fused():
            raise GraphpruneError("the slim model was fused for inference (val or predict "
                                  "fuse it in place), so it cannot be trained",
                                  hint="load the checkpoint again and train that")
        head = weights.model[-1]
        if getattr(head, "nc", self.data["nc"]) != self.data["nc"]:
            raise GraphpruneError(f"the slim model detects {head.nc} classes and the data "
                                  f"has {self.data['nc']}",
                                  hint="fine-tune on data with the model's classes (its "
                                       "head was pruned for them)")
        shape = self.data.get("kpt_shape")
        if self.slim_task == "pose" and shape is not None and \
                list(getattr(head, "kpt_shape", shape)) != list(shape):
            raise GraphpruneError(f"the slim model predicts keypoints {list(head.kpt_shape)} "
                                  f"and the data has kpt_shape {list(shape)}",
                                  hint="fine-tune on data with the model's keypoints")
        weights.requires_grad_(True)          # a compiled best.pt is stored frozen
        weights.criterion = None
        if verbose:
            weights.info()
        return self.set_model_names_for_load(weights)


def _define(task: str, index: int) -> type:
    """The slim model (``index`` 0) or trainer (1) class of ``task``, defined on first use so
    that this module imports without ultralytics (pickle finds them by name through the
    module's ``__getattr__``)."""
    name = TASKS[task][2 + index]
    if name not in _CLASSES:
        mixin = (_SlimModel, _SlimTrainer)[index]
        cls = type(name, (mixin, _import(TASKS[task][index])),
                   {"slim_task": task, "__doc__": mixin.__doc__, "__module__": __name__,
                    "__qualname__": name})
        _CLASSES[name] = cls
    return _CLASSES[name]


def slim_model_class(task: str = "detect") -> type:
    """The slim model class of an ultralytics task (``SlimDetectionModel`` ...)."""
    return _define(task, 0)


def slim_trainer_class(task: str = "detect") -> type:
    """The trainer of a slim model of an ultralytics task (``SlimTrainer`` for detection,
    ``SlimOBBTrainer``, ``SlimSegmentationTrainer``, ``SlimPoseTrainer``)."""
    return _define(task, 1)


def is_slim_model(model: nn.Module) -> bool:
    return isinstance(model, _SlimModel)


def finetune(path: str | Path, **train_args: Any):
    """Fine-tune the slim ultralytics checkpoint ``path`` (written by ``graphprune compile
    --ultralytics-checkpoint``) with ultralytics' own training loop: ``train_args`` are
    ``YOLO.train``'s (``data``, ``epochs``, ``imgsz``, ``batch``, ``device``, ``project``,
    ``name``, ``resume`` ...).  Returns the ``YOLO`` object, holding the trained slim model."""
    from ultralytics import YOLO  # deferred: ultralytics is optional

    if "trainer" in train_args:
        raise GraphpruneError("finetune chooses the trainer itself (SlimTrainer)",
                              hint="drop trainer=...")
    model = YOLO(str(path))
    if not is_slim_model(model.model):
        raise GraphpruneError(f"{str(path)!r} holds a {type(model.model).__name__}, not a "
                              "graphprune slim model",
                              hint="compile it first: graphprune compile MODEL ... "
                                   "--ultralytics-checkpoint slim.pt")
    model.train(trainer=slim_trainer_class(model.model.slim_task), **train_args)
    return model


def __getattr__(name: str) -> Any:
    for task, (_model, _trainer, model_name, trainer_name) in TASKS.items():
        if name in (model_name, trainer_name):
            return _define(task, int(name == trainer_name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain_args(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def _flat(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def slim_detection_model(module: nn.Module, source: nn.Module) -> nn.Module:
    """The slim model of ``source``'s task (:class:`SlimDetectionModel`, ``SlimOBBModel``,
    ...) running ``module`` (the compiled slim graph of ``source``, an ultralytics
    ``DetectionModel`` or one of its task subclasses), on the CPU in float32 and eval mode; the
    compiled module itself is left untouched."""
    if not is_detection_model(source):
        raise GraphpruneError(f"an ultralytics checkpoint needs an ultralytics DetectionModel, "
                              f"got {type(source).__name__}",
                              hint="drop --ultralytics-checkpoint for other models")
    # moved as a whole, so that DetectionModel._apply also moves the head's cached anchors
    return slim_model_class(model_task(source))(copy.deepcopy(module), source) \
        .cpu().float().eval()


def save_ultralytics_checkpoint(result, source: nn.Module, path: str | Path,
                                extra: dict[str, Any] | None = None) -> Path:
    """Write ``result`` (a :class:`~graphprune.CompileResult` of ``source``, an ultralytics
    ``DetectionModel``) as an ultralytics checkpoint at ``path`` (atomically).

    The layout follows ultralytics' own (``model``, ``train_args``, ``date``, ``version``, ...)
    plus a ``graphprune`` entry (plain data: the compile's statistics and ``extra``).  Before
    the file is moved into place it is read back and its model's outputs are checked to be
    exactly the compiled module's on the compile's example input."""
    import ultralytics  # deferred: ultralytics is optional

    path = Path(path)
    if path.suffix != ".pt":
        raise GraphpruneError(f"--ultralytics-checkpoint {str(path)!r} must end in .pt",
                              hint="ultralytics loads PyTorch checkpoints by their .pt suffix")
    slim = slim_detection_model(result.module, source)
    args = _plain_args(getattr(source, "args", None))
    checkpoint = {
        "date": datetime.now(timezone.utc).isoformat(),
        "version": ultralytics.__version__,
        "epoch": -1,
        "best_fitness": None,
        "model": slim,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": args,
        "train_metrics": {},
        "graphprune": {"version": _graphprune_version(), "stats": result.stats.as_dict(),
                       **(extra or {})},
    }
    inputs = tuple(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x
                   for x in result.example_inputs)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
        with torch.no_grad():
            expected = _flat(slim(*inputs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(tmp, map_location="cpu", weights_only=False)["model"]
        with torch.no_grad():
            got = _flat(loaded.eval()(*inputs))
        if len(got) != len(expected) or not all(
                g.shape == e.shape and torch.equal(g, e) for g, e in zip(got, expected)):
            raise VerificationError(f"the ultralytics checkpoint {str(path)!r} read back does "
                                    "not compute what the compiled module computes",
                                    hint="please report this model")
    return path


def _graphprune_version() -> str:
    return __version__


# SlimDetectionModel, SlimTrainer and the other tasks' slim classes (TASKS) are importable too
# (they need ultralytics, so they are not in __all__)
__all__ = ["HOW_TO_TRAIN", "STATE_FILE", "TASKS", "SlimYaml", "SparsityCallbacks",
           "add_sparsity", "finetune", "fold_batchnorms", "is_detection_model", "is_slim_model",
           "model_task", "save_ultralytics_checkpoint", "slim_detection_model",
           "slim_model_class", "slim_trainer_class"]
