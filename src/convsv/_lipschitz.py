"""A certified upper bound on a whole PyTorch network's Lipschitz constant, read from its graph.

The graph comes from ``torch.fx.symbolic_trace``, not ``torch.export.export``:
fx keeps every standard layer as a ``call_module`` node holding the
``nn.Module`` itself (a convolution's ``padding_mode``, a batch norm's running
statistics), which is what folding needs, and it traces an eval-mode module
without example-dependent shape guards. ``torch.export`` lowers the same model
to ATen calls whose weights are lifted to graph inputs (checked on PyTorch
2.13: ``aten.conv2d(input, p_0_weight, ...)``, ``aten.batch_norm(...)``), so
each layer would have to be re-assembled from its operands. The price is fx's:
Python control flow that depends on tensor values does not trace.

The walk keeps, for every value of the graph, a bound on its Lipschitz
constant as a function of the model's input and, while the value is still a
linear map of one earlier value (bias aside), that map, so the next linear
node can fold into it: convolution then batch norm is one kernel and one norm.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ._lipschitz_maps import (
    FUNCTION_RULES,
    FUNCTIONAL_LAYERS,
    IDENTITY_MODULES,
    MODULE_RULES,
    Map,
    arg,
    avg_pool_map,
    bn_scale,
    compose,
    conv_map,
    functional_layer,
    is_identity,
    max_pool_constant,
    norm_of,
    plus_identity,
    pool_dims,
    upsample_map,
)
from ._options import NormOptions

__all__ = ["LipschitzReport", "NodeBound", "lipschitz_bound"]


@dataclass(frozen=True)
class NodeBound:
    """One graph node's part in a :class:`LipschitzReport`.

    Parameters
    ----------
    name : str
        The fx node's name.
    kind : str
        The module class or function it calls (``"Conv2d"``, ``"add"``...).
    constant : float or None
        Its own Lipschitz constant as a map from its tensor operands (for a
        folded node, that of the whole folded map); ``None`` where it was
        folded into a later node, or combines several operands.
    how : str
        Where ``constant`` comes from: ``"exact norm"``, ``"folded into bn1"``...
    bound : float or None
        Certified bound on the node's value as a function of the model's
        input; ``None`` where the certificate never needed it (folded away).
    """

    name: str
    kind: str
    constant: float | None
    how: str
    bound: float | None


@dataclass(frozen=True)
class LipschitzReport:
    """What :func:`lipschitz_bound` found.

    Parameters
    ----------
    upper : float
        Certified upper bound on the model's Lipschitz constant (l2 norms,
        eval mode, as a function of an input of the example's shape).
    lower : float or None
        The largest ``||J(x) v||`` (``v`` a unit vector) found by power
        iteration on the Jacobian at sample inputs: a local Lipschitz constant
        the model attains, so ``lower <= true constant <= upper``. ``None``
        when no samples were asked for.
    nodes : tuple of NodeBound
        One row per graph node, in graph order.
    """

    upper: float
    lower: float | None
    nodes: tuple[NodeBound, ...]

    def __str__(self) -> str:
        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:.6g}"

        rows = [("node", "kind", "constant", "bound", "how")]
        rows += [(r.name, r.kind, number(r.constant), number(r.bound), r.how) for r in self.nodes]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
            for row in rows
        ]
        ratio = "" if not self.lower else f"  (upper / lower = {self.upper / self.lower:.4g})"
        lines.append(f"Lipschitz constant: lower {number(self.lower)}, upper {number(self.upper)}{ratio}")
        return "\n".join(lines)


class _Value:
    """What the walk knows of one node's value: a lazily computed bound, and its linear form if any."""

    def __init__(
        self,
        compute: Callable[[], tuple[float, float | None, str]],
        linear: Map | None = None,
        base: str | None = None,
        static: bool = False,
    ) -> None:
        self._compute = compute
        self.linear, self.base, self.static = linear, base, static
        self.result: tuple[float, float | None, str] | None = None

    def bound(self) -> float:
        """The bound on this value's Lipschitz constant (computed once, on first use)."""
        if self.result is None:
            self.result = self._compute()
        return self.result[0]


def _static() -> _Value:
    return _Value(lambda: (0.0, None, "does not depend on the input"), static=True)


_ADD = (operator.add, torch.add, "add", operator.sub, torch.sub, "sub")
_MUL = (operator.mul, torch.mul, "mul", operator.truediv, torch.div, "div")
_SHAPE_QUERIES = ("size", "dim", "numel", "ndimension")
_SHAPE_ATTRIBUTES = ("shape", "ndim", "dtype", "device")
_PIECES = (torch.chunk, "chunk", torch.split, "split", torch.unbind, "unbind")


# --- the walk over the graph ------------------------------------------------------------------------


class _Walk:
    """Visits an fx graph in order, one :class:`_Value` per node (rules: the ``_rule_*`` methods)."""

    def __init__(self, graph_module: fx.GraphModule, tol: float | None, method: str) -> None:
        self.gm, self.tol, self.method = graph_module, tol, method
        self.modules = dict(graph_module.named_modules())
        self.values: dict[str, _Value] = {}
        self.kinds: dict[str, str] = {}
        self.folded: dict[str, str] = {}  # node -> the later node whose map absorbed it
        self.needed: list[str] = []  # nodes whose bound some rule uses, in graph order
        self.alias: dict[str, str] = {}  # identity / eval dropout node -> the node whose values it returns

    def run(self) -> tuple[float, tuple[NodeBound, ...]]:
        """The certified bound of the output, and one row per node."""
        for node in self.gm.graph.nodes:
            self.kinds[node.name] = kind = self._kind(node)
            try:
                self.values[node.name] = self._visit(node)
            except (TypeError, ValueError) as error:  # every message names its node
                msg = f"node {node.name!r} ({node.op} {kind}): {error}"
                raise type(error)(msg) from error
        order = {node.name: i for i, node in enumerate(self.gm.graph.nodes)}
        for name in sorted(self.needed, key=order.__getitem__):  # no bound then recurses deeper than a node
            self.values[name].bound()
        output = next(node for node in reversed(self.gm.graph.nodes) if node.op == "output")
        upper = self.values[output.name].bound()
        return upper, tuple(self._row(node.name) for node in self.gm.graph.nodes)

    def _row(self, name: str) -> NodeBound:
        result = self.values[name].result
        if name in self.alias:
            bound = None if result is None else result[0]
            return NodeBound(name, self.kinds[name], 1.0, f"the values of {self.alias[name]}", bound)
        if result is not None:
            return NodeBound(name, self.kinds[name], result[1], result[2], result[0])
        how = f"folded into {self.folded[name]}" if name in self.folded else "not used by the output"
        how = "does not depend on the input" if self.values[name].static else how
        return NodeBound(name, self.kinds[name], None, how, None)

    def _kind(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[str(node.target)]).__name__
        if node.op in ("call_function", "call_method"):
            return str(getattr(node.target, "__name__", node.target))
        return {"placeholder": "input", "get_attr": "constant"}.get(node.op, node.op)

    def _visit(self, node: fx.Node) -> _Value:
        inputs = [self.values[n.name] for n in node.all_input_nodes]
        if node.op == "placeholder":
            return _Value(lambda: (1.0, 1.0, "the model's input"))
        if node.op == "output":
            values = [self._need(n.name) for n in node.all_input_nodes if not self.values[n.name].static]
            return _Value(lambda: (math.hypot(*(v.bound() for v in values)), None, "the model's output"))
        if node.op == "get_attr" or all(value.static for value in inputs):
            return _static()
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, IDENTITY_MODULES) or (module is None and is_identity(node)):
            x = self._operand(node)  # one value under two names: a residual through nn.Identity still folds
            self.alias[node.name] = self._root(x.name)
            return self.values[x.name]
        if module is not None:
            return self._rule_module(node, module)
        return self._rule_function(node)

    def _root(self, name: str) -> str:
        return self.alias.get(name, name)

    def _need(self, name: str) -> _Value:
        if name not in self.needed:
            self.needed.append(name)
        return self.values[name]

    def _shape(self, node: Any) -> tuple[int, ...]:
        meta: Any = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if hasattr(meta, "shape") else ()

    def _operand(self, node: fx.Node) -> fx.Node:
        """The one input that depends on the model's input: the first argument, all others static."""
        first = node.args[0]
        others = [n for n in node.all_input_nodes if n is not first and not self.values[n.name].static]
        if not isinstance(first, fx.Node) or self.values[first.name].static or others:
            msg = "only its first argument may depend on the model's input"
            raise TypeError(msg)
        return first

    def _scaled(self, node: fx.Node, constant: float, why: str, x: fx.Node | None = None) -> _Value:
        source = self._need((self._operand(node) if x is None else x).name)
        return _Value(lambda: (source.bound() * constant, constant, why))

    def _map_value(self, linear: Map, base: str) -> _Value:
        source = self._need(base)

        def compute() -> tuple[float, float | None, str]:
            norm, how = norm_of(linear, self.tol, self.method)
            return source.bound() * norm, norm, how

        return _Value(compute, linear, base)

    def _linear(self, node: fx.Node, linear: Map) -> _Value:
        """A linear node: folded into its operand's map when they compose, else a new map."""
        x = self._operand(node)
        source, ndim = self.values[x.name], len(self._shape(x))
        first = source.linear
        if first is not None and source.base is not None:
            # Batch norm acts on axis 1, a linear layer on the last, a convolution on (batch, channel, ...).
            fits = ndim == 2 if {first.kind, linear.kind} == {"matrix", "scale"} else True
            conv = first if first.kind == "conv" else linear if linear.kind == "conv" else None
            fits = fits and (conv is None or ndim == conv.weight.ndim)
            composed = compose(first, linear) if fits else None
            if composed is not None:
                self.folded[self._root(x.name)] = node.name
                return self._map_value(composed, source.base)
        return self._map_value(linear, self._root(x.name))

    def _rule_module(self, node: fx.Node, module: nn.Module) -> _Value:
        name, x = node.name, self._operand(node)

        def spatial_of(n: fx.Node, d: int) -> tuple[int, ...]:
            return self._shape(n)[-d:]

        if isinstance(module, nn.modules.conv._ConvNd):
            d = module.weight.ndim - 2
            return self._linear(node, conv_map(name, module, spatial_of(x, d), spatial_of(node, d)))
        if isinstance(module, nn.Linear):
            return self._linear(node, Map("matrix", module.weight.detach().double(), (name,)))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return self._linear(node, Map("scale", bn_scale(module), (name,)))
        pooling = nn.modules.pooling
        if isinstance(module, (pooling._AvgPoolNd, pooling._AdaptiveAvgPoolNd)):
            return self._linear(node, avg_pool_map(name, module, spatial_of(x, pool_dims(module))))
        if isinstance(module, (pooling._MaxPoolNd, pooling._AdaptiveMaxPoolNd)):
            if module.return_indices:
                msg = "max pooling that returns indices"
                raise TypeError(msg)
            d = pool_dims(module)
            constant = max_pool_constant(module, spatial_of(x, d), spatial_of(node, d))
            return self._scaled(node, constant, "sqrt(most windows a pixel is in)")
        if isinstance(module, nn.Upsample):
            d = len(self._shape(x)) - 2
            return self._linear(node, upsample_map(name, module, spatial_of(x, d), spatial_of(node, d)))
        rule = MODULE_RULES.get(type(module))
        if rule is None:
            msg = f"no Lipschitz rule for {type(module).__name__}"
            raise TypeError(msg)
        return self._scaled(node, *rule(module))

    def _rule_function(self, node: fx.Node) -> _Value:
        target = node.target
        shape_query = target in _SHAPE_QUERIES or (target is getattr and node.args[1] in _SHAPE_ATTRIBUTES)
        if shape_query:
            return _static()  # a shape: the same for every input of the example's shape
        if target in _ADD:
            return self._rule_add(node)
        if target in (torch.cat, torch.concat, torch.stack):
            items = node.args[0] if isinstance(node.args[0], (list, tuple)) else ()
            tensors = [n for n in items if isinstance(n, fx.Node) and not self.values[n.name].static]
            values = [self._need(n.name) for n in tensors]
            return _Value(lambda: (math.hypot(*(v.bound() for v in values)), None, "sqrt(sum of L^2)"))
        if target in _MUL:
            return self._rule_product(node)
        if target is operator.getitem:
            return self._rule_getitem(node)
        if target in ("mean", torch.mean, "sum", torch.sum):
            return self._rule_reduce(node)
        if target in _PIECES:
            return self._scaled(node, 1.0, "pieces of its input")
        if target in FUNCTIONAL_LAYERS:  # F.conv2d(x, self.weight), F.avg_pool2d(x, 2)...: as the layer
            return self._rule_module(node, functional_layer(node, self._constant))
        rule = FUNCTION_RULES.get(target)
        if rule is None:
            msg = f"no Lipschitz rule for {self.kinds[node.name]}"
            raise TypeError(msg)
        return self._scaled(node, *rule(node))

    def _spread(self, node: fx.Node, operand: fx.Node) -> float:
        """``sqrt`` of how many times broadcasting repeats each entry of ``operand`` in ``node``."""
        return math.sqrt(math.prod(self._shape(node)) / math.prod(self._shape(operand)))

    def _rule_add(self, node: fx.Node) -> _Value:
        """``a + b`` or ``a - b``: ``L(a) + L(b)``, unless one is a single linear map of the other."""
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
            msg = "add/sub with alpha"
            raise TypeError(msg)
        a, b = node.args
        live = [n for n in (a, b) if isinstance(n, fx.Node) and not self.values[n.name].static]
        if len(live) == 1:  # plus a constant
            return self._scaled(node, self._spread(node, live[0]), "adds a constant", live[0])
        assert isinstance(a, fx.Node)
        assert isinstance(b, fx.Node)
        if self._shape(a) == self._shape(b) == self._shape(node):
            for x, f in ((a, b), (b, a)):
                residual = self._residual(node, x, f)
                if residual is not None:
                    return residual
        va, vb = self._need(a.name), self._need(b.name)
        ka, kb = self._spread(node, a), self._spread(node, b)
        return _Value(lambda: (ka * va.bound() + kb * vb.bound(), None, "L(a) + L(b)"))

    def _residual(self, node: fx.Node, x: fx.Node, f: fx.Node) -> _Value | None:
        """``x +- A x``, ``A`` a linear map of ``x``: ``||I +- A||``, or ``1 + ||A||``; None for other ``f``.

        One norm of ``I +- A`` where the identity fits in ``A`` (a square
        matrix, a per-channel scale, a convolution with a tap that reads each
        output's own pixel).
        """
        value = self.values[f.name]
        if value.linear is None or value.base != self._root(x.name):
            return None
        self.folded[self._root(f.name)] = node.name
        sign = -1.0 if node.target in (operator.sub, torch.sub, "sub") else 1.0
        plus = plus_identity(value.linear, sign)
        if plus is not None and (plus.kind != "conv" or len(self._shape(x)) == plus.weight.ndim):
            return self._map_value(plus, self._root(x.name))
        linear, source = value.linear, self._need(self._root(x.name))

        def compute() -> tuple[float, float | None, str]:
            norm, how = norm_of(linear, self.tol, self.method)
            return source.bound() * (1.0 + norm), 1.0 + norm, f"1 + L(f), L(f) the {how}"

        return _Value(compute)

    def _rule_product(self, node: fx.Node) -> _Value:
        """``x * c``, ``c * x``, ``x / c``, ``c`` a number or stored tensor: ``max |c|`` (``1 / min |c|``)."""
        divide = node.target in (operator.truediv, torch.div, "div")
        live = [n for n in node.args if isinstance(n, fx.Node) and not self.values[n.name].static]
        if node.kwargs or len(node.args) != 2 or len(live) != 1 or (divide and live[0] is not node.args[0]):
            msg = "a product or quotient of values that depend on the input is not globally Lipschitz"
            raise TypeError(msg)
        x = live[0]
        constant = self._constant(node.args[1] if x is node.args[0] else node.args[0])
        if constant is None:
            msg = "the constant factor is neither a number nor a tensor stored in the model"
            raise TypeError(msg)
        factor = 1.0 / float(constant.abs().min()) if divide else float(constant.abs().max())
        return self._scaled(node, factor * self._spread(node, x), "times a constant", x)

    def _constant(self, c: Any) -> torch.Tensor | None:
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            return torch.tensor(float(c))
        if isinstance(c, fx.Node) and c.op == "get_attr":
            value: Any = self.gm
            for part in str(c.target).split("."):
                value = getattr(value, part)
            return value.detach().double() if isinstance(value, torch.Tensor) else None
        return None

    def _rule_getitem(self, node: fx.Node) -> _Value:
        x, index = node.args
        meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
        if isinstance(meta, (tuple, list)) and isinstance(index, int):
            return self._scaled(node, 1.0, "one of its pieces")
        if hasattr(meta, "shape") and self._basic(index):
            return self._scaled(node, 1.0, "selects entries")
        msg = (
            "indexing with a list or tensor can repeat entries; only ints, slices, None and ... are modelled"
        )
        raise TypeError(msg)

    def _basic(self, index: Any) -> bool:
        """Whether ``index`` is basic indexing (each entry taken at most once)."""
        if isinstance(index, tuple):
            return all(self._basic(item) for item in index)
        if isinstance(index, slice):
            return all(self._basic(item) for item in (index.start, index.stop, index.step))
        if isinstance(index, fx.Node):  # an int computed from shapes
            return self.values[index.name].static and "tensor_meta" not in index.meta
        return index is None or index is Ellipsis or (isinstance(index, int) and not isinstance(index, bool))

    def _rule_reduce(self, node: fx.Node) -> _Value:
        """Mean (sum) over ``m`` entries per output: ``1 / sqrt(m)`` (``sqrt(m)``), by Cauchy-Schwarz."""
        x = self._operand(node)
        shape, dim = self._shape(x), arg(node, 1, "dim", None)
        dims = range(len(shape)) if dim is None else (dim,) if isinstance(dim, int) else dim
        if not all(isinstance(d, int) for d in dims):
            msg = f"reduction over dim={dim!r}"
            raise TypeError(msg)
        count = math.prod(shape[d] for d in dims)
        mean = node.target in ("mean", torch.mean)
        constant = 1.0 / math.sqrt(count) if mean else math.sqrt(count)
        return self._scaled(node, constant, f"{'mean' if mean else 'sum'} of {count} entries")


def _local_lower(model: nn.Module, example: torch.Tensor, samples: int, iterations: int, seed: int) -> float:
    """The largest ``||J(x) v||``, ``||v|| = 1``, of power iteration on ``J^T J`` at ``samples`` inputs.

    The inputs are the example and Gaussian perturbations of it, as large as
    the example's spread; each such value is attained, so it is a lower bound
    on the Lipschitz constant wherever the model is differentiable.
    """
    generator = torch.Generator(device=example.device).manual_seed(seed)
    state = {name: tensor.detach() for name, tensor in (*model.named_parameters(), *model.named_buffers())}

    def function(x: torch.Tensor) -> torch.Tensor:  # the weights as constants: derivatives in x only
        return torch.func.functional_call(model, state, (x,))  # type: ignore[no-any-return]

    x0 = example.detach()
    spread = float(x0.std()) if x0.numel() > 1 else 0.0
    best = 0.0
    for i in range(samples):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = x0 if i == 0 else x0 + (spread or 1.0) * noise
        v = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        v = v / torch.linalg.vector_norm(v)
        result = torch.func.vjp(function, x)
        out, pullback = result[0], result[1]
        # J v as the vjp of the (linear) vjp: reverse mode only (torch.func.jvp scripts decompositions).
        push = torch.func.vjp(lambda u, pull=pullback: pull(u)[0], torch.zeros_like(out))[1]
        for _ in range(iterations):
            (jv,) = push(v)
            best = max(best, float(torch.linalg.vector_norm(jv)))
            (back,) = pullback(jv)
            size = torch.linalg.vector_norm(back)
            if not size > 0:
                break
            v = back / size
    return best


def _check_arguments(model: object, example_input: object) -> None:
    if not isinstance(model, nn.Module) or not isinstance(example_input, torch.Tensor):
        msg = "lipschitz_bound takes a torch.nn.Module and an example torch.Tensor"
        raise TypeError(msg)


def lipschitz_bound(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    tol: float | None = None,
    method: str = "auto",
    lower_bound_samples: int = 4,
    lower_bound_iterations: int = 30,
    seed: int = 0,
) -> LipschitzReport:
    """A certified upper bound on a network's Lipschitz constant, and a local lower bound beside it.

    The model is traced with ``torch.fx.symbolic_trace`` in eval mode (fx
    keeps each layer as its ``nn.Module``, which folding reads; see the module
    notes) and its graph is walked in order. Each value carries a bound on its
    Lipschitz constant (l2 norms) as a function of the input: linear layers by
    their norms, nonlinear ones by their constants, compositions multiply,
    sums add. Linear maps are folded before a norm is taken: a batch norm
    into the convolution or linear layer beside it (a per-channel scale of the
    kernel), a convolution into a non-overlapping average pool before it, and
    the identity of a residual ``x + f(x)`` into ``f`` when ``f`` is a single
    linear map of ``x`` (``||I + A||``, exact).

    Parameters
    ----------
    model : torch.nn.Module
        The network. Its mode is set to eval for the analysis and restored.
    example_input : torch.Tensor
        An input of the shape to certify (the batch included): the feature-map
        sizes the convolutions' norms depend on come from it. The bound is on
        the map from inputs of this shape; for a model that treats samples
        independently it is the per-sample constant.
    tol : float, optional
        Passed to :func:`convsv.operator_norm_bounds` for every convolution;
        it matters with ``method="gram"``, whose upper bound is certified
        within ``tol`` of the norm. Circular padding gives the exact norm;
        zero padding the norm of the circular layer on the padded map, an
        upper bound.
    method : str, optional
        As in :func:`convsv.operator_norm_bounds` (``"power"`` is refused: it
        is not a bound). Default ``"auto"``.
    lower_bound_samples : int, optional
        Inputs at which to run power iteration on the Jacobian (the example,
        then Gaussian perturbations of it); 0 skips the lower bound. Default 4.
    lower_bound_iterations : int, optional
        Power-iteration steps at each sample (default 30).
    seed : int, optional
        Seed of the perturbations and starting vectors (default 0).

    Returns
    -------
    LipschitzReport
        ``upper`` (certified), ``lower`` (attained locally) and one
        :class:`NodeBound` per graph node.

    Raises
    ------
    TypeError
        If a node has no rule (an unknown module or function, a product of
        two values that depend on the input, indexing that repeats entries,
        a second model input): the message names the node and its target.
        Also if ``model`` or ``example_input`` has the wrong type.
    ValueError
        If a known layer is used in a way that is not modelled (reflect
        padding, dropout in training mode, batch norm without running
        statistics), naming the node; or for a bad option.

    Notes
    -----
    Constants used: ReLU, ReLU6, Hardtanh, tanh, clamp 1; LeakyReLU and ELU
    ``max(1, |slope|)``; sigmoid 1/4; hardsigmoid 1/6; hardswish 3/2; GELU
    ``(1 + erf 1) / 2 + exp(-1) / sqrt(pi)`` (1.1289); tanh-GELU and SiLU their
    largest slope on a fine grid, plus ``1e-6``; dropout (eval), flatten,
    reshapes, permutes, basic indexing and constant ``F.pad`` 1; max pooling
    ``sqrt(c)``, ``c`` the most windows any pixel is in (1 without overlap);
    average pooling its exact norm (product of the per-axis averaging
    matrices' norms); upsampling (nearest, (bi/tri)linear) its exact norm, the
    same way; a mean over ``m`` entries ``1 / sqrt(m)``; ``torch.cat``
    ``sqrt(sum L_i^2)``; broadcasting that repeats each entry ``r`` times
    ``sqrt(r)``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from convsv.torch import lipschitz_bound
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    ...     _ = model[2].weight.copy_(torch.tensor([[1.0, 0.0]]))
    >>> report = lipschitz_bound(model, torch.ones(1, 2))
    >>> report.upper, report.lower
    (3.0, 3.0)
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    node     kind    constant  bound  how
    input_1  input   1         1      the model's input
    _0      Linear  3         3      exact norm of _0
    _1      ReLU    1         3      slopes in [0, 1]
    _2      Linear  1         3      exact norm of _2
    output  output  -         3      the model's output
    Lipschitz constant: lower 3, upper 3  (upper / lower = 1)
    """
    _check_arguments(model, example_input)
    training = model.training
    model.eval()
    try:
        # fx keeps torch.nn layers as call_module nodes, but traces the root's own forward: wrap a bare layer.
        root = nn.Sequential(model) if fx.Tracer().is_leaf_module(model, "") else model
        graph_module = fx.symbolic_trace(root)
        return certify_graph(
            graph_module,
            example_input,
            tol=tol,
            method=method,
            lower_bound_samples=lower_bound_samples,
            lower_bound_iterations=lower_bound_iterations,
            seed=seed,
        )
    finally:
        model.train(training)


def certify_graph(
    graph_module: fx.GraphModule,
    example_input: torch.Tensor,
    *,
    tol: float | None = None,
    method: str = "auto",
    lower_bound_samples: int = 4,
    lower_bound_iterations: int = 30,
    seed: int = 0,
) -> LipschitzReport:
    """:func:`lipschitz_bound` of an fx graph module in eval mode (PyTorch's, or an ONNX file's)."""
    if method == "power":
        msg = "method='power' estimates a norm from below; a certificate needs an upper bound"
        raise ValueError(msg)
    NormOptions(method, tol)  # checked before any work
    for value, name in ((lower_bound_samples, "lower_bound_samples"), (lower_bound_iterations, "iterations")):
        if not isinstance(value, int) or value < 0:
            msg = f"`{name}` must be a non-negative int, got {value!r}"
            raise ValueError(msg)
    inputs = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        msg = f"node {inputs[-1].name!r} (placeholder input): lipschitz_bound takes models of one input"
        raise TypeError(msg)
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_input)
    upper, rows = _Walk(graph_module, tol, method).run()
    lower = None
    if lower_bound_samples:
        lower = _local_lower(graph_module, example_input, lower_bound_samples, lower_bound_iterations, seed)
    return LipschitzReport(upper, lower, rows)
