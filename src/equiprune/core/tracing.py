"""Which channels of a model can be removed together: a channel-dependency analysis over torch.fx.

The model is traced symbolically once; every tensor the graph computes is given a *layout*: the
list of channel spaces its channel dimension is made of. A Linear or Conv2d layer opens a new space
(its output features or filters); channel-wise operations (activations, BatchNorm, pooling,
flatten) carry the layout through; an addition of two tensors merges their spaces, because a
residual sum only stays valid if both operands lose the same channels (a ResNet's stem and every
block writing to one stage share a space); concatenation along channels lays spaces side by side.

Each space ends with everything pruning it must touch: the layers that *produce* its channels (rows
of their weights), the BatchNorms that *follow* them (their per-channel statistics), and the layers
that *consume* them (input columns, repeated per spatial position after a flatten). A space that
reaches the model's output or input is fixed (class logits, image channels). A space that meets an
operation this analysis does not understand is *blocked*, with the operation named, so that a user
can exclude the layers that produce it instead of getting a silently wrong pruned model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx as fx
import torch.nn as nn

from equiprune.core.channel_spaces import ChannelSpace, Consumer, Follower, input_width
from equiprune.core.hf_players import is_transformers_model, transformers_spaces
from equiprune.errors import PruningError
from equiprune.layers import MultiHeadSelfAttention

#: Modules that act element by element: channels pass through them unchanged in position.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.PReLU,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
POOLING = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
#: Element-wise functions and methods, each with the module that computes the same (recorded in a
#: group's ``between``, where compaction checks which activations a scale may cross exactly).
ELEMENTWISE_FUNCTIONS = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
    "selu": nn.SELU, "celu": nn.CELU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "hardtanh": nn.Hardtanh, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "softplus": nn.Softplus, "dropout": nn.Dropout, "dropout2d": nn.Dropout2d, "contiguous": nn.Identity,
    "clone": nn.Identity,
}  # fmt: skip
POOLING_FUNCTIONS = {
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
}  # fmt: skip
ADDITIONS = {"add", "add_", "iadd", "sub", "sub_", "isub"}
SCALINGS = {"mul", "mul_", "imul", "truediv", "div", "div_", "itruediv"}
NON_TENSOR = {"size", "dim", "numel", "shape"}


@dataclass(frozen=True)
class Layout:
    """The channel dimension of a traced tensor: ``(space, channels)`` segments side by side.

    ``spatial``: a feature map (N, C, …) with its channels in dimension 1; otherwise features in the
    last dimension. ``repeat``: after flattening a feature map each channel spans ``repeat``
    consecutive features (None until a consumer's width tells it)."""

    segments: tuple[tuple[int, int], ...]
    spatial: bool
    repeat: int | None = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)


#: The layout of tensors whose channels are not prunable (the input, constants, opaque results).
FIXED = Layout((), spatial=False)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "get_attr":
        return f"parameter {node.target!r} used directly"
    return f"operation {_op_name(node)!r} (graph node {node.name!r})"


class _Analysis:
    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())
        self.spaces: list[ChannelSpace] = []
        self.parent: list[int] = []
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.calls: dict[str, int] = {}

    # --- spaces ---------------------------------------------------------------------------------

    def new_space(self, size: int, producer: tuple[str, nn.Module]) -> Layout:
        self.spaces.append(ChannelSpace(size, producers=[producer]))
        self.parent.append(len(self.parent))
        return Layout(((len(self.spaces) - 1, size),), spatial=isinstance(producer[1], nn.Conv2d))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def space(self, i: int) -> ChannelSpace:
        return self.spaces[self.find(i)]

    def block(self, layout: Layout | None, reason: str) -> None:
        for sid, _ in layout.segments if layout else ():
            self.space(sid).blocked.append(reason)

    def fix(self, layout: Layout | None) -> None:
        for sid, _ in layout.segments if layout else ():
            self.space(sid).fixed = True

    def unify(self, layouts: list[Layout], reason: str) -> Layout:
        """Tensors combined element by element: their channels must be removed together."""
        real = [lay for lay in layouts if lay is not None and lay.segments]
        if len([lay for lay in layouts if lay is not None]) >= 2:
            for lay in real:
                for sid, _ in lay.segments:
                    self.space(sid).summed = True
        if len(real) < len([lay for lay in layouts if lay is not None]):  # one operand is fixed
            for lay in real:
                self.fix(lay)
            return FIXED
        if not real:
            return FIXED
        first = real[0]
        for other in real[1:]:
            if [n for _, n in other.segments] != [n for _, n in first.segments] or other.spatial != first.spatial:
                for lay in real:
                    self.block(lay, reason + " combines tensors whose channels do not line up")
                return FIXED
            for (a, _), (b, _) in zip(first.segments, other.segments):
                ra, rb = self.find(a), self.find(b)
                if ra != rb:
                    merged, gone = self.spaces[ra], self.spaces[rb]
                    merged.producers += gone.producers
                    merged.followers += gone.followers
                    merged.consumers += gone.consumers
                    merged.between += gone.between
                    merged.blocked += gone.blocked
                    merged.fixed |= gone.fixed
                    merged.summed |= gone.summed
                    self.parent[rb] = ra
        return first

    # --- the nodes ------------------------------------------------------------------------------

    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            self.layouts[node] = self.visit(node)

    def arg(self, node: fx.Node, i: int = 0) -> Layout | None:
        a = node.args[i] if len(node.args) > i else None
        return self.layouts.get(a) if isinstance(a, fx.Node) else None

    def tensor_inputs(self, node: fx.Node) -> list[Layout | None]:
        return [self.layouts.get(a) for a in node.all_input_nodes]

    def opaque(self, node: fx.Node, why: str | None = None) -> Layout:
        """An operation this analysis does not follow: the channels entering it cannot be pruned."""
        reason = why or _describe(node, self.modules)
        for lay in self.tensor_inputs(node):
            self.block(lay, reason)
        return FIXED

    def visit(self, node: fx.Node) -> Layout | None:
        if node.op in ("placeholder", "get_attr"):
            return FIXED
        if node.op == "output":
            for lay in self.tensor_inputs(node):
                self.fix(lay)
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        return self.visit_function(node, _op_name(node))

    def visit_module(self, node: fx.Node, module: nn.Module) -> Layout | None:
        name = node.target
        self.calls[name] = self.calls.get(name, 0) + 1
        x = self.arg(node)
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            conv = isinstance(module, nn.Conv2d)
            if x is not None and x.segments:
                if x.spatial != conv:
                    return self.opaque(node, f"layer {name!r} ({type(module).__name__}) reads a tensor whose "
                                             "channels are not in the dimension it mixes")  # fmt: skip
                width = input_width(module)
                repeat = x.repeat if x.repeat is not None else width // max(x.channels, 1)
                if x.channels * repeat != width:
                    return self.opaque(
                        node, f"layer {name!r} reads {width} features where {x.channels} channels arrive"
                    )
                offset = 0
                for sid, n in x.segments:
                    self.space(sid).consumers.append(Consumer(name, module, offset, repeat))
                    offset += n * repeat
            size = module.out_channels if conv else module.out_features
            return self.new_space(size, (name, module))
        if isinstance(module, MultiHeadSelfAttention):
            return self.attention(node, module, x)
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            # Normalising across channels: removing one changes every other's output, so these
            # channels are fixed (a transformer's residual stream), not prunable.
            self.fix(x)
            return FIXED
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if x is not None and x.segments:
                offset = 0
                for sid, n in x.segments:
                    self.space(sid).followers.append(Follower(name, module, offset))
                    offset += n
            return x
        if isinstance(module, ELEMENTWISE):
            for sid, _ in x.segments if x else ():
                self.space(sid).between.append(module)
            return x
        if isinstance(module, POOLING):
            return x if x is None or not x.segments or x.spatial else self.opaque(node)
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                return self.opaque(node, f"layer {name!r} (Flatten from dimension {module.start_dim})")
            return self.flatten(x)
        return self.opaque(node)

    def attention(self, node: fx.Node, module: MultiHeadSelfAttention, x: Layout | None) -> Layout:
        """Heads are players of their own; the block reads its input through ``qkv``, writes its
        output through ``proj``."""
        name = node.target
        if x is not None and x.segments:
            if x.spatial:
                return self.opaque(node, f"layer {name!r} (attention) reads a feature map")
            offset = 0
            for sid, n in x.segments:
                self.space(sid).consumers.append(Consumer(f"{name}.qkv", module.qkv, offset, 1))
                offset += n
        heads = ChannelSpace(module.heads, producers=[(f"{name}.qkv", module.qkv)], kind="head")
        heads.consumers.append(Consumer(f"{name}.proj", module.proj, 0, module.head_dim))
        heads.row_pattern, heads.resize = (module.head_dim, 3), [(name, "heads")]
        self.spaces.append(heads)
        self.parent.append(len(self.parent))
        return self.new_space(module.proj.out_features, (f"{name}.proj", module.proj))

    @staticmethod
    def flatten(x: Layout | None) -> Layout | None:
        if x is None or not x.segments or not x.spatial:
            return x
        return Layout(x.segments, spatial=False, repeat=None)

    def visit_function(self, node: fx.Node, op: str) -> Layout | None:
        x = self.arg(node)
        if op in NON_TENSOR or (op == "getattr" and len(node.args) > 1 and node.args[1] in NON_TENSOR):
            return None
        if op in ELEMENTWISE_FUNCTIONS:
            for sid, _ in x.segments if x else ():
                self.space(sid).between.append(ELEMENTWISE_FUNCTIONS[op]())
            return x
        if op in POOLING_FUNCTIONS:
            return x if x is None or not x.segments or x.spatial else self.opaque(node)
        if op in ADDITIONS:
            return self.unify(self.tensor_inputs(node), _describe(node, self.modules))
        if op in SCALINGS:
            others = [a for a in node.args[1:] if isinstance(a, fx.Node)]
            return x if not others else self.opaque(node, f"{_describe(node, self.modules)} by a tensor")
        if op == "cat":
            return self.cat(node)
        if op == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(x) if (start, end) == (1, -1) else self.opaque(node)
        if op in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1:
            return self.flatten(x)  # x.view(x.size(0), -1)
        if op in ("mean", "sum", "amax") and x is not None and x.segments and x.spatial:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            if set(dims) in ({2, 3}, {-1, -2}):
                return x if keep else Layout(x.segments, spatial=False, repeat=1)
        return self.opaque(node)

    def cat(self, node: fx.Node) -> Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", [])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        layouts = [self.layouts.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        real = [lay for lay in layouts if lay is not None and lay.segments]
        if not real:
            return FIXED
        spatial = real[0].spatial
        if dim not in ((1,) if spatial else (1, -1)):
            return self.unify(layouts, _describe(node, self.modules))
        if len(real) < len(layouts) or any(lay.spatial != spatial or lay.repeat != 1 for lay in real):
            for lay in real:  # a concatenation with a fixed or differently shaped tensor
                self.block(lay, _describe(node, self.modules) + " joins these channels to ones it cannot follow")
            return FIXED
        return Layout(tuple(seg for lay in real for seg in lay.segments), spatial=spatial)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping equiprune's attention layer whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MultiHeadSelfAttention) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, …) for untraceable code
        raise PruningError(
            f"cannot find the players of {type(model).__name__} automatically: torch.fx could not trace "
            f"its forward ({type(exc).__name__}: {exc}). Data-dependent control flow is the usual cause; "
            "build the PlayerGroups yourself (equiprune.core.players.PlayerGroup) or make forward traceable."
        ) from exc


def channel_spaces(model: nn.Module) -> list[ChannelSpace]:
    """Every channel space of ``model`` that some layer produces, in execution order of its first
    producer. A space's ``fixed`` and ``blocked`` say whether it may be pruned (see the module doc).
    A transformers model, which fx cannot trace, is read by module pattern (``core.hf_players``)."""
    if is_transformers_model(model):
        return transformers_spaces(model)
    analysis = _Analysis(model)
    analysis.run(trace(model).graph)
    shared = {name for name, n in analysis.calls.items() if n > 1}
    roots: list[int] = []
    for i in range(len(analysis.spaces)):
        r = analysis.find(i)
        if r not in roots:
            roots.append(r)
    order = {sp.producer_names[0]: i for i, sp in reversed(list(enumerate(analysis.spaces)))}  # first call wins
    out = []
    for r in roots:
        space = analysis.spaces[r]
        space.producers.sort(key=lambda p: order[p[0]])  # execution order: the group is named after the first
        touched = set(space.producer_names) | {f.name for f in space.followers} | {c.name for c in space.consumers}
        for name in sorted(touched & shared):
            space.blocked.append(f"layer {name!r} is called more than once per forward pass")
        out.append(space)
    owner = {name: space for space in out for name in space.producer_names}
    for space in out:
        space.bypassed = bool(space.consumers) and all(
            c.name in owner and owner[c.name].summed for c in space.consumers
        )
    return out


def layer_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules() if name}


def check_exclude(model: nn.Module, exclude: Iterable[str]) -> set[str]:
    exclude = set(exclude)
    unknown = exclude - layer_names(model)
    if unknown:
        raise PruningError(
            f"exclude names no layer of the model: {sorted(unknown)}; layers: {sorted(layer_names(model))}"
        )
    return exclude
