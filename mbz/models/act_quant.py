"""Activation quantizers a rebuilt model needs at inference (and QAT trains): ActQuant, QReLU6, QReLU.

* Per-tensor fake quantization to `bits`: unsigned [0, alpha] after ReLU / ReLU6, signed
  [-alpha, alpha] at the other tensors a conv / linear reads (MobileNet-v2's block outputs);
  ranges learned with LSQ (Esser et al. 2020, "Learned Step Size Quantization", eq. 3) and a
  straight-through estimator.
* `act_points` finds where they go in the module graph (torch.fx), for any CNN made of
  Conv / BatchNorm / ReLU / pooling / Linear / add (MobileNet-v2, ResNets, VGGs);
  `insert_act_quant` puts them there without renaming any weight.  The ranges it takes back
  (`alphas`, {key: alpha}) are the file's `arch.act_alpha` metadata, so `mbz.load_model`
  rebuilds the exported network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import MbzError


def round_ste(x):
    return (x.round() - x).detach() + x


def grad_scale(x, s):
    return (x - x * s).detach() + x * s


class _LsqFakeQuant(torch.autograd.Function):
    """round(clamp(x / s)) * s with LSQ's gradients, in fewer passes over x than autograd's graph.

    Forward equals ``clamp(round_ste(x / s), lo, hi) * s`` bit for bit; backward gives
    d/dx = 1 where x/s lies in [lo, hi] (straight-through), 0 outside, and
    d/ds = sum(g * (q - x/s) inside, g * q outside) * grad_scale (Esser et al. 2020, eq. 3).
    """

    @staticmethod
    def forward(ctx, x, s, lo: int, hi: int, gscale: float):
        v = x / s
        q = torch.clamp(torch.round(v), lo, hi)
        ctx.save_for_backward(v, s)
        ctx.lo, ctx.hi, ctx.gscale = lo, hi, gscale
        return q * s

    @staticmethod
    def backward(ctx, g):
        v, s = ctx.saved_tensors
        inside = (v >= ctx.lo) & (v <= ctx.hi)
        gx = g * inside
        q = torch.clamp(torch.round(v), ctx.lo, ctx.hi)
        gs = (g * torch.where(inside, q - v, q)).sum(dtype=torch.float32) * ctx.gscale
        return gx, gs.reshape(s.shape).to(s.dtype), None, None, None


def lsq_fake_quant(x, s, lo: int, hi: int, gscale: float = 1.0):
    return _LsqFakeQuant.apply(x, s, lo, hi, gscale)


class ActQuant(nn.Module):
    """Fake-quantize activations to `bits` (unsigned [0, a] or signed [-a, a]); identity at bits >= 32."""

    def __init__(self, bits: int = 32, signed: bool = False, alpha: float = 6.0, learn: bool = True):
        super().__init__()
        self.bits, self.signed = int(bits), bool(signed)
        a = torch.tensor(float(alpha))
        if learn:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a, persistent=False)
        self.calibrating = False
        self.owns_input = False  # set where the input is a fresh tensor (inference then works in place)
        self.register_buffer("obs", torch.zeros(()), persistent=False)

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def step(self):
        return self.alpha.abs().clamp_min(1e-4) / self.levels

    def forward(self, x):
        if self.bits >= 32:
            return x
        if self.calibrating:  # running max of a high percentile
            v = x.detach().float().abs().flatten()
            if v.numel() > 1_000_000:
                v = v[torch.randint(0, v.numel(), (1_000_000,), device=v.device)]
            q = torch.quantile(v, 0.9995)
            self.obs = torch.maximum(self.obs.to(q.device), q)
            return x
        s = self.step()
        lo = -self.levels if self.signed else 0
        if not torch.is_grad_enabled():
            # inference: the same numbers as below (round_ste(v) == round(v) bit for bit), fewer passes
            # in place when the input is ours to overwrite (owns_input: a new tensor nobody else holds)
            y = x.div_(s) if self.owns_input else torch.div(x, s)
            return y.round_().clamp_(lo, self.levels).mul_(s)
        gscale = 1.0 / (x.numel() * self.levels) ** 0.5 if self.training else 1.0
        return lsq_fake_quant(x, s, lo, self.levels, gscale)

    def extra_repr(self):
        return f"bits={self.bits}, signed={self.signed}"


class QReLU6(ActQuant):
    """ReLU6 followed by an unsigned activation quantizer (keeps the ReLU6's module path)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owns_input = True  # the quantizer sees the ReLU6's own output

    relu_inplace = True  # the input is a new tensor used nowhere else (act_points says so from the graph)

    def forward(self, x):
        # in place at inference: x is the conv/BN output, used nowhere else (a new tensor per call costs 8x)
        return super().forward(F.relu6(x, inplace=self.relu_inplace and not torch.is_grad_enabled()))


class QReLU(QReLU6):
    """ReLU followed by an unsigned activation quantizer (keeps the ReLU's module path); range [0, alpha]."""

    def forward(self, x):
        return ActQuant.forward(self, F.relu(x, inplace=self.relu_inplace and not torch.is_grad_enabled()))


def _block_hook(q):
    def hook(module, inputs, output):
        return q(output)
    return hook


# -- where the quantizers go: found in the module graph (torch.fx) ---------------------------------------------

_ACT_MODULES = {nn.ReLU: QReLU, nn.ReLU6: QReLU6}
_ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.relu_, F.relu_}
_ACT_METHODS = {"relu", "relu_"}
# ops whose output holds the same values as their input (same tensor, or the same values reshaped)
_ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Flatten)
_ALIAS_FUNCTIONS = {torch.flatten, F.dropout}
_ALIAS_METHODS = {"view", "reshape", "flatten", "contiguous"}
# ops a quantized activation passes through to a conv / linear (their outputs are computed from codes on one grid)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}


class _Tracer(torch.fx.Tracer):
    """torch.fx tracer that keeps convs, linears, BatchNorms and quantizers (subclasses too) as leaves."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, ActQuant)) \
            or super().is_leaf_module(m, qualname)


def graph_tracer() -> torch.fx.Tracer:
    """The torch.fx tracer act_points uses: convs, linears, BatchNorms and activation quantizers are leaves."""
    return _Tracer()


@dataclass
class ActPoint:
    """One activation quantizer: its metadata key, signedness, how it is inserted, and the fx node it follows.

    how: 'module' (an activation module called once is replaced by QReLU / QReLU6 at its path),
    'hook' (the output of the module `key`, quantized by a forward hook) or 'graph' (a node of the
    traced graph, which then becomes the model's forward: torch.fx.GraphModule)."""
    key: str
    signed: bool
    how: str
    node: object = field(repr=False, default=None)
    fresh: bool = True      # the quantized tensor is a new one that nothing else holds (inference works in place)
    relu_inplace: bool = True


def _is(node, modules, functions, methods, mods) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), modules)
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _scope(node) -> list:
    """Module paths the node runs inside, outermost first (the module itself for a call_module node).

    torch.fx records them as {path: (path, type)} (older releases: {path: type}); the path is read either way."""
    return [v[0] if isinstance(v, tuple) else k for k, v in node.meta.get("nn_module_stack", {}).items()]


def act_points(model: nn.Module) -> list:
    """The activation quantizers of `model`, found in its torch.fx graph (ActPoint list, in graph order).

    * after every ReLU / ReLU6 (module, function or method): unsigned;
    * at every other tensor a Conv / Linear reads (looking back through pooling, flatten, dropout and
      identity), unless it is the network's input: signed.  In MobileNet-v2 these are the inverted-residual
      block outputs (linear bottlenecks and residual sums); ResNets and VGGs have none (every conv reads a
      ReLU output).
    Keys (the file's `arch.act_alpha` names): an activation module called once: its path; otherwise the
    outermost module called once whose output the tensor is; otherwise `PATH#i` (the i-th call of a module
    called several times, e.g. the first ReLU of a torchvision BasicBlock) or `SCOPE#node` (a function).
    ValueError when the model cannot be traced by torch.fx or already holds activation quantizers."""
    return _find(model)[1]


def _find(model: nn.Module) -> tuple:
    """(traced torch.fx graph, [ActPoint]) of act_points."""
    if any(isinstance(m, ActQuant) for m in model.modules()):
        raise ValueError("the model already holds activation quantizers")
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported the same way
        raise ValueError(f"cannot trace the model's graph for activation quantizers: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    mods = dict(model.named_modules())
    calls = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)

    def is_act(n):
        return _is(n, tuple(_ACT_MODULES), _ACT_FUNCTIONS, _ACT_METHODS, mods)

    def is_alias(n):
        return _is(n, _ALIAS_MODULES, _ALIAS_FUNCTIONS, _ALIAS_METHODS, mods)

    def is_pool(n):
        return _is(n, _POOL_MODULES, _POOL_FUNCTIONS, set(), mods)

    def fresh(n) -> bool:  # a new tensor nobody else holds (aliases and in-place ops: their input must be one)
        if n.op in ("placeholder", "get_attr"):
            return False
        inplace = (is_alias(n) and not (n.op == "call_method" and n.target == "contiguous")) \
            or (n.op == "call_method" and str(n.target).endswith("_")) \
            or (n.op == "call_module" and getattr(mods.get(n.target), "inplace", False)) \
            or (n.op == "call_function" and n.kwargs.get("inplace", False))
        if not inplace:
            return True
        src = n.args[0] if n.args else None
        return isinstance(src, torch.fx.Node) and len(src.users) == 1 and fresh(src)

    used = set()

    def key_of(n) -> tuple[str, str]:
        scope = _scope(n)
        user_scopes = [set(_scope(u)) for u in n.users]
        for path in scope:
            if path in mods and not any(path in s for s in user_scopes) \
                    and len(calls.get(path, [None])) == 1 and path not in used:
                return path, "hook"
        if n.op == "call_module":
            k = f"{n.target}#{calls[n.target].index(n)}"
        else:
            k = f"{scope[-1] if scope else ''}#{n.name}"
        while k in used:
            k += "_"
        return k, "graph"

    points = {}
    for n in graph.nodes:
        if is_act(n):
            if n.op == "call_module" and len(calls[n.target]) == 1:
                key, how = n.target, "module"
            else:
                key, how = key_of(n)
            src = n.args[0] if n.args else None
            used.add(key)
            points[n] = ActPoint(key, False, how, n, fresh(n),
                                 isinstance(src, torch.fx.Node) and len(src.users) == 1 and fresh(src))
        elif n.op == "call_module" and isinstance(mods.get(n.target), (nn.modules.conv._ConvNd, nn.Linear)):
            s = n.args[0]
            while isinstance(s, torch.fx.Node) and (is_alias(s) or is_pool(s)):
                s = s.args[0]
            if not isinstance(s, torch.fx.Node) or s.op == "placeholder" or is_act(s):
                continue
            while len(s.users) == 1 and _is(next(iter(s.users)), (nn.Identity, nn.Dropout), {F.dropout}, set(), mods):
                s = next(iter(s.users))  # the same tensor: quantized where its module hands it on
            if s in points:
                continue
            key, how = key_of(s)
            used.add(key)
            points[s] = ActPoint(key, True, how, s, fresh(s))
    order = {n: i for i, n in enumerate(graph.nodes)}
    return graph, sorted(points.values(), key=lambda p: order[p.node])


def insert_act_quant(model: nn.Module, abits: int, learn: bool = True, alphas: dict | None = None) -> nn.Module:
    """Quantize the activations of a CNN at `abits` (2..8; 32: the model unchanged) without renaming any weight.

    The places come from the module graph (act_points): every ReLU / ReLU6 output (unsigned, [0, alpha]) and
    every other tensor a conv / linear reads (signed, [-alpha, alpha]).  An activation module called once
    becomes a QReLU / QReLU6 at its path; the other quantizers live in `model.block_q` and are applied by
    forward hooks on the modules whose outputs they quantize, or, where a tensor is no module's output (a
    ReLU module called twice, as in a torchvision BasicBlock; a functional relu), by nodes of the traced
    graph: the model returned is then a torch.fx.GraphModule with the same submodule paths and state_dict
    names.  Use the returned module.

    `alphas` ({key: range}, the file's `arch.act_alpha`) restores ranges; when given it must name exactly the
    model's quantizers (MbzError naming the first key that differs).  Default ranges: 6 after activations,
    4 at signed points.  ValueError when the model cannot be traced by torch.fx."""
    if abits >= 32:
        return model
    graph, points = _find(model)
    alphas = dict(alphas or {})
    if alphas:
        keys = [p.key for p in points]
        extra = sorted(set(alphas) - set(keys))
        missing = [k for k in keys if k not in alphas]
        if extra or missing:
            what = (f"names {extra[0]!r}, which is no activation quantizer of the model" if extra
                    else f"has no range for the model's quantizer {missing[0]!r}")
            raise MbzError(f"arch.act_alpha {what} (the model has {len(keys)}: {', '.join(keys[:3])}, ...)")
    graph_mode = any(p.how == "graph" for p in points)
    if graph_mode:
        model_out = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
        for k in ("mbz_arch",):
            if hasattr(model, k):
                setattr(model_out, k, getattr(model, k))
    else:
        model_out = model
    if any(p.how != "module" for p in points):
        model_out.block_q = nn.ModuleDict()
    for p in points:
        default = 6.0 if not p.signed else 4.0
        alpha = alphas.get(p.key, default)
        if p.how == "module":
            parent, _, leaf = p.key.rpartition(".")
            holder = model_out.get_submodule(parent) if parent else model_out
            q = _ACT_MODULES[type(holder._modules[leaf])](abits, False, alpha, learn)
            q.relu_inplace = p.relu_inplace
            holder._modules[leaf] = q
            continue
        q = ActQuant(abits, p.signed, alpha, learn)
        q.owns_input = p.fresh
        q.act_key = p.key
        name = re.sub(r"\W", "_", p.key) or "_"
        while name in model_out.block_q:
            name += "_"
        model_out.block_q[name] = q
        if graph_mode:
            with graph.inserting_after(p.node):
                qn = graph.call_module(f"block_q.{name}", (p.node,))
            p.node.replace_all_uses_with(qn, delete_user_cb=lambda u, qn=qn: u is not qn)
        else:
            model.get_submodule(p.key).register_forward_hook(_block_hook(q))
    if graph_mode:
        graph.lint()
        model_out.recompile()
    return model_out


def act_quantizers(model: nn.Module) -> dict:
    """{key: quantizer} with the keys insert_act_quant takes back as `alphas` (the file's arch.act_alpha)."""
    out = {name: m for name, m in model.named_modules() if isinstance(m, QReLU6)}
    for name, q in getattr(model, "block_q", {}).items():
        out[getattr(q, "act_key", f"features.{name}")] = q
    return out
