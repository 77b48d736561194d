"""Method ``"structured"``: the NTK from per-layer structure instead of per-example Jacobians.

One forward pass records the inputs of the layer calls with a rule (:mod:`.interception`), and one reverse
pass batched over the O model outputs (with respect to zero probes added to the layer outputs) gives the
cotangents of every layer output; no parameter gradient is formed by autograd. Both run on the whole batch as
plain autograd where each layer sees the batch at one axis and no parameter needs Jacobian contraction (the
examples are independent, so the cotangent of example n's probe is the per-example one); otherwise per
example under ``vmap(jacrev)``, whose dispatch costs more than a small model's arithmetic. Each parameter's
contribution is then contracted in the cheapest exact form (:mod:`.terms`, :mod:`.cost`):

- a linear or convolution weight in Gram form, (A1 A2ᵀ) ⊙ (G1 G2ᵀ) summed over positions, or in Jacobian form
  J = Σ_l g_l a_lᵀ formed from the same tensors while a block is contracted, one weight at a time; the bias of
  the same calls joins a weight in Gram form where that is cheaper (few positions, e.g. a dense layer): a
  constant 1 appended to every input a_l makes A1 A2ᵀ + 1, and (A1 A2ᵀ + 1) ⊙ (G1 G2ᵀ) is the weight's plus the
  bias's contribution (Σ_l g_l · Σ_l' g'_l'), so G1 G2ᵀ is computed once for both;
- an embedding table through index equality;
- biases and normalisation affine parameters (LayerNorm, GroupNorm, BatchNorm in eval mode) as small
  Jacobians Σ_l g_l, Σ_l x̂_l ⊙ g_l;
- every other selected parameter (layers without a rule, parameters used outside a rule, e.g. a transposed
  or reshaped weight) by Jacobian contraction, computed by ``jacrev`` in the same reverse pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass

import torch
from torch.func import jacrev, vmap

from .._functional import FunctionalModel
from ..errors import UnsupportedError
from .autodiff import autodiff_context
from .conv_chain import ConvChain, conv_chain
from .cost import MethodCost, Problem, SideCost
from .dense_chain import DenseChain, dense_chain
from .interception import LayerCall, LayerInterceptor
from .rules import LINEAR_FAMILY, embedding_term, linear_family_dims, linear_family_term, parameter_jacobian
from .terms import (
    FactoredJacobianTerm,
    GramTerm,
    IndexTerm,
    JacobianTerm,
    Term,
    Workspace,
    contract,
    contract_diagonal,
)
from .tracing import ModelTrace

__all__ = ["StructuredMethod"]

Uses = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class _Group:
    """How one parameter's contribution is computed: ``form`` is 'gram' or 'jacobian' (a weight used only
    by linear/conv calls of one shape), 'index' (an embedding table), or 'layout' (the sum over its uses of
    the rule Jacobians, e.g. a bias, a norm weight, a table tied to an output layer)."""

    name: str
    form: str
    uses: Uses
    pair_flops: float
    pair_words: float
    feature_flops: float
    feature_words: float
    block_flops: float = 0.0  # per example and block: forming the Jacobian of the 'jacobian' form
    workspace_words: float = 0.0  # per example of a block: that Jacobian
    bias: str | None = None  # 'gram' form: the bias of the same calls, computed with it (module docs)


def _with_bias(weight: _Group, bias: _Group, problem: Problem, o: int) -> _Group | None:
    """``weight`` (Gram form) computing ``bias`` too, if ``bias`` is used exactly by the same calls' bias slot
    and that costs fewer FLOPs than contracting it alone (each input gains an implicit constant entry, so the input
    Gram gains 1 per entry: K·L² more FLOPs per pair and no stored words, against 2·O^a·P_b for the bias on its
    own)."""
    if weight.form != "gram" or bias.form != "layout" or [i for i, _ in bias.uses] != [i for i, _ in weight.uses]:
        return None
    if any(slot != "bias" for _, slot in bias.uses):
        return None
    added = weight.pair_words / (2 + o**problem.output_power)  # K·L², the entries of one Gram
    if added >= bias.pair_flops:
        return None
    return dataclasses.replace(weight, pair_flops=weight.pair_flops + added, bias=bias.name)


def _use_flops(call: LayerCall, slot: str, o: int) -> float:
    """FLOPs per example of one use's rule Jacobian (N, O, P) from the recorded tensors."""
    if call.kind in LINEAR_FAMILY and slot == "weight":
        K, L, d_in, d_out = linear_family_dims(call)
        return 2.0 * o * L * K * d_in * d_out
    extra = o * math.prod(call.weight_shape) if call.kind == "embedding" else 0
    return 2.0 * o * math.prod(call.out_shape) + extra


def _candidate_forms(fm: FunctionalModel, trace: ModelTrace, name: str, uses: Uses, problem: Problem) -> list[_Group]:
    """The exact forms one parameter's contribution can be computed in, with their costs."""
    calls = [trace.calls[i] for i, _ in uses]
    o, o_a = trace.n_outputs, trace.n_outputs**problem.output_power
    p = fm.params[name].numel()
    weights_only = all(slot == "weight" for _, slot in uses)
    layout = _Group(
        name,
        "layout",
        uses,
        pair_flops=2.0 * o_a * p,
        pair_words=o_a,
        feature_flops=sum(_use_flops(c, s, o) for c, (_, s) in zip(calls, uses, strict=True)),
        feature_words=o * p,
    )
    if weights_only and all(c.kind in LINEAR_FAMILY for c in calls):
        dims = [linear_family_dims(c) for c in calls]
        if len({(K, d_in, d_out) for K, _, d_in, d_out in dims}) == 1:
            K, _, d_in, d_out = dims[0]
            L = sum(d[1] for d in dims)
            factors = K * L * (d_in + o * d_out)
            gram_pair = 2.0 * K * L * L * (d_in + o_a * d_out)
            return [
                _Group(name, "gram", uses, gram_pair, K * L * L * (2 + o_a), 0.0, factors),
                _Group(name, "jacobian", uses, 2.0 * o_a * p, o_a, 0.0, factors, 2.0 * o * L * p, o * p),
            ]
    if weights_only and all(c.kind == "embedding" for c in calls):
        V, D = calls[0].weight_shape
        L = sum(math.prod(c.in_shape) for c in calls)
        rows = min(L * L, V)
        return [_Group(name, "index", uses, 2.0 * o_a * D * rows, rows * (1 + o_a), 0.0, L * (1 + o * D))]
    return [layout]


def _batch_axis(traced: tuple[int, ...], batched: tuple[int, ...], n: int) -> int | None:
    """The axis at which a call's batched shape holds the batch: the one axis where the traced shape (one
    example) has 1 and the batched shape n, all others equal; None if there is no such single axis."""
    if len(traced) != len(batched):
        return None
    differ = [i for i, (t, b) in enumerate(zip(traced, batched, strict=True)) if t != b]
    if not differ:  # n == 1: the first axis of size 1 (moving an axis of size 1 changes nothing)
        return next((i for i, t in enumerate(traced) if t == 1), None)
    i = differ[0]
    return i if len(differ) == 1 and traced[i] == 1 and batched[i] == n else None


def _per_example(t: torch.Tensor, axis: int | None, lead: int) -> torch.Tensor:
    """A batched tensor (``lead`` leading axes, then a call's shape with the batch at ``axis``) laid out as the
    per-example route gives it: batch first, then the leading axes, then the traced shape (batch axis of 1)."""
    assert axis is not None, "the caller returns None for calls without a batch axis"
    return t.movedim(lead + axis, 0).unsqueeze(lead + 1 + axis)


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Positions of several calls of one parameter, side by side (no copy for a single call)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _total(form: _Group, problem: Problem) -> float:
    return problem.examples * (form.feature_flops + form.block_flops) + problem.pairs * form.pair_flops


def _groups(fm: FunctionalModel, trace: ModelTrace, problem: Problem) -> list[_Group]:
    """Each rule parameter's cheapest form for this problem, biases joined to their weights where that pays."""
    groups = {
        name: min(_candidate_forms(fm, trace, name, tuple(uses), problem), key=lambda g: _total(g, problem))
        for name, uses in trace.uses.items()
    }
    for name, group in list(groups.items()):
        calls = [trace.calls[i] for i, _ in group.uses]
        bias = calls[0].params.get("bias", "") if group.form == "gram" else ""
        if bias not in groups or any(c.params.get("bias") != bias for c in calls):
            continue
        joined = _with_bias(group, groups[bias], problem, trace.n_outputs)
        if joined is not None:
            groups[name] = joined
            del groups[bias]
    return list(groups.values())


class _Buffers:
    """Buffers kept with the trace for later calls on the same model and shapes (a fresh large tensor costs page
    faults on first touch, about half the time of the product that fills it: 0.2 s of a 1 s call on the CNN of
    benchmarks/empirical.py): the contractions' workspace, and for the fused features of a convolution chain
    (:meth:`.ConvChain.jacobians`) and the capture of a dense chain one workspace per side (x1, x2). Features of
    one side live in its workspace until that side's next features, which :func:`.blocks.assemble` computes only
    once the previous ones are no longer used; ``generation`` counts them, so that features used after that raise
    instead of being wrong. One per thread, so that concurrent calls never share one, and one per model
    (:meth:`.ModelTrace.scratch`): the memory stays held while the model's traces are cached."""

    def __init__(self) -> None:
        self.workspace = Workspace()
        self.sides = (Workspace(), Workspace())
        self.generation = [0, 0]


def _buffers(trace: ModelTrace) -> _Buffers:
    local = trace.scratch("structured buffers", threading.local)
    if not hasattr(local, "buffers"):
        local.buffers = _Buffers()
    buffers: _Buffers = local.buffers
    return buffers


class _Features(list[Term]):
    """Terms whose tensors live in one side's buffers (:class:`_Buffers`), valid while ``generation`` is current."""

    def __init__(self, terms: list[Term], side: int, generation: int) -> None:
        super().__init__(terms)
        self.side, self.generation = side, generation


def _fusable(chain: ConvChain, groups: list[_Group]) -> bool:
    """Whether every convolution parameter's contribution can come from :meth:`.ConvChain.jacobians`: each used by
    its own call, a weight in Jacobian form without a joined bias or a bias alone, convolutions of one group."""
    for g in groups:
        layers = [chain.call_layers[i] for i, _ in g.uses]
        if all(layer == len(chain.convs) for layer in layers):
            continue  # the head
        if len(g.uses) != 1 or chain.convs[layers[0]].groups != 1 or g.bias is not None:
            return False
        if (g.form, g.uses[0][1]) not in (("jacobian", "weight"), ("layout", "bias")):
            return False
    return True


class StructuredMethod:
    name = "structured"
    same_features = True

    def __init__(self, fm: FunctionalModel, trace: ModelTrace, problem: Problem) -> None:
        self.fm, self.trace, self.problem = fm, trace, problem
        self.groups = trace.memo(("structured groups", problem), lambda: _groups(fm, trace, problem))
        self.fallback_size = sum(fm.params[k].numel() for k in trace.fallback)
        self.buffers = _buffers(trace)
        self.workspace = self.buffers.workspace
        self.chain = dense_chain(fm, trace) or conv_chain(fm, trace, traced=not problem.full)
        # the traced kernel of a convolution chain: its parameters' Jacobians formed in the capture, chunk by chunk
        self.fused = isinstance(self.chain, ConvChain) and not problem.full and _fusable(self.chain, self.groups)

    def cost(self) -> MethodCost:
        t, o_a = self.trace, self.trace.n_outputs**self.problem.output_power
        o, fp = t.n_outputs, t.forward_flops
        fallback_share = self.fallback_size / max(1, t.n_params)
        side = SideCost(
            flops=(1 + o + o * fallback_share) * fp + sum(g.feature_flops for g in self.groups),
            words=sum(g.feature_words for g in self.groups) + o * self.fallback_size,
            transient=(2 + o) * t.activation_words,
        )
        pair_words = max([g.pair_words for g in self.groups], default=0.0) + o_a
        pair_flops = sum(g.pair_flops for g in self.groups) + 2.0 * o_a * self.fallback_size
        return MethodCost(
            side,
            side,
            pair_flops,
            pair_words,
            same_features=True,
            block_flops=sum(g.block_flops for g in self.groups),
            workspace_words=max([g.workspace_words for g in self.groups], default=0.0),
        )

    def _capture(self, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """Per-example inputs of the recorded calls (N, *in_shape), output cotangents (N, O, *out_shape) per call,
        and the Jacobians (N, O, *shape) of the fallback parameters: from one forward and one backward pass of
        the whole batch where that is possible (:meth:`_capture_batched`), else per example under ``vmap``."""
        if not self.trace.fallback:
            captured = self._capture_batched(x)
            if captured is not None:
                return captured
        return self._capture_per_example(x)

    def _check_calls(self, calls: list[LayerCall]) -> None:
        if [c.signature() for c in calls] != [c.signature() for c in self.trace.calls]:
            raise UnsupportedError(
                "the model calls its layers differently for different examples (data-dependent control "
                "flow?), so the structured method cannot be used; pass method='jacobian'."
            )

    def _capture_batched(
        self, x: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]] | None:
        """The capture as plain autograd on the batch, without per-example transforms (their dispatch costs more
        than the arithmetic of a small model): the model runs once on x with a zero probe added to each recorded
        call's output, and one backward pass batched over the O outputs (``is_grads_batched``) gives the
        cotangents of all probes. Examples are independent (checked when the model was traced), so the cotangent
        of example n's probe is ∂f_o(x_n)/∂y_n, the per-example cotangent. Each call's batched tensors must be its
        traced per-example tensors with the batch at one axis (traced size 1, here N); else (a model that folds
        the batch into another axis) None, and the caller takes the per-example route. None too if the model
        reads tensor values into Python numbers (``.item()``): autograd would treat them as constants, where
        the per-example route raises a clear error. Needs no parameter Jacobians: only used without fallback
        parameters."""
        n = x.shape[0]
        icpt = LayerInterceptor({id(v): k for k, v in self.fm.params.items()}, make_probes=True, flag_uses=False)
        with autodiff_context(self.fm.module), torch.enable_grad():
            with icpt:
                out = self.fm.fn(self.fm.params, x)
            self._check_calls(icpt.calls)
            pairs = list(zip(self.trace.calls, icpt.calls, strict=True))
            out_axes = [_batch_axis(c.out_shape, b.out_shape, n) for c, b in pairs]
            recorded = {i: t for i, t in enumerate(icpt.inputs) if t is not None}
            in_axes = {i: _batch_axis(pairs[i][0].in_shape, pairs[i][1].in_shape, n) for i in recorded}
            if None in out_axes or None in in_axes.values() or icpt.read_values:
                return None
            o = out.shape[1]
            seeds = torch.eye(o, dtype=out.dtype, device=out.device).unsqueeze(1).expand(o, n, o)
            grads = torch.autograd.grad(out, icpt.made_probes, seeds, is_grads_batched=True, materialize_grads=True)
        cotangents = [_per_example(g.detach(), a, lead=1) for g, a in zip(grads, out_axes, strict=True)]
        return {i: _per_example(t.detach(), in_axes[i], lead=0) for i, t in recorded.items()}, cotangents, {}

    def _capture_per_example(
        self, x: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """The capture by ``vmap(jacrev)`` of one example's forward pass (works for any model whose examples are
        independent, and gives the fallback parameters' Jacobians in the same reverse pass)."""
        calls = self.trace.calls
        rule = {k: v for k, v in self.fm.params.items() if k in self.trace.uses}
        fallback = {k: self.fm.params[k] for k in self.trace.fallback}
        watched = {id(v): k for k, v in rule.items()}
        dtype, device = self.fm.dtype, next(iter(self.fm.params.values())).device
        probes = [torch.zeros(c.out_shape, dtype=dtype, device=device) for c in calls]

        def per_example(
            xn: torch.Tensor, probes: list[torch.Tensor], fallback: dict[str, torch.Tensor]
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            icpt = LayerInterceptor(watched, probes=probes, flag_uses=False)
            with icpt:
                out = self.fm.fn({**rule, **fallback}, xn.unsqueeze(0)).squeeze(0)
            self._check_calls(icpt.calls)
            return out, {str(i): t for i, t in enumerate(icpt.inputs) if t is not None}

        with autodiff_context():
            grad = jacrev(per_example, argnums=(1, 2), has_aux=True)
            (cotangents, fallback_jac), inputs = vmap(grad, in_dims=(0, None, None))(x, probes, fallback)
        return {int(k): v for k, v in inputs.items()}, cotangents, fallback_jac

    def features(self, x: torch.Tensor) -> list[Term]:
        return self._features(x, 0)

    def features2(self, x: torch.Tensor) -> list[Term]:
        return self._features(x, 1)

    def _features(self, x: torch.Tensor, side: int) -> list[Term]:
        """The terms of a chunk of examples of side ``side`` (0: x1, 1: x2). A hand-evaluated capture of a dense
        chain keeps its tensors in the side's buffers (:class:`_Buffers`): the features of both sides are alive
        while a block is contracted, never those of two chunks of one side."""
        if self.fused:
            return self._fused_features(x, side)
        outer: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
        fallback_jac: dict[str, torch.Tensor] = {}
        if isinstance(self.chain, DenseChain):
            self.buffers.generation[side] += 1
            inputs, cots, outer = self.chain.capture(x, self.buffers.sides[side])
            terms = self._terms(self.groups, inputs, dict(enumerate(cots)), outer)
            return _Features(terms, side, self.buffers.generation[side])
        if self.chain is not None:
            inputs, cots, _ = self.chain.capture(x)
        else:
            inputs, cots, fallback_jac = self._capture(x)
        terms = self._terms(self.groups, inputs, dict(enumerate(cots)), outer)
        return terms + [JacobianTerm(fallback_jac[k].flatten(2)) for k in self.trace.fallback]

    def _fused_features(self, x: torch.Tensor, side: int) -> list[Term]:
        """The traced kernel's features of a convolution chain: each convolution parameter's (N, 1, P') tensor from
        :meth:`.ConvChain.jacobians` (its Gram matrix is the kernel summed over outputs), the head's terms as usual,
        all in the order of the groups."""
        assert isinstance(self.chain, ConvChain), "fused is set for convolution chains only"
        workspace, self.buffers.generation[side] = self.buffers.sides[side], self.buffers.generation[side] + 1
        head, jacobians = self.chain.jacobians(x, lambda slot, shape: workspace.take(slot, shape, x))
        n, o = x.shape[0], self.trace.n_outputs
        calls = [i for i, layer in enumerate(self.chain.call_layers) if layer == len(self.chain.convs)]
        cots = {i: torch.eye(o, dtype=x.dtype, device=x.device)[:, None].expand(n, o, 1, o) for i in calls}
        others = [g for g in self.groups if g.name not in jacobians]
        rest = self._terms(others, {i: head[:, None] for i in calls}, cots, {})
        ordered = [JacobianTerm(jacobians[g.name]) if g.name in jacobians else rest.pop(0) for g in self.groups]
        return _Features(ordered, side, self.buffers.generation[side])

    def _terms(
        self,
        groups: list[_Group],
        inputs: dict[int, torch.Tensor],
        cots: dict[int, torch.Tensor],
        outer: dict[int, tuple[torch.Tensor | None, torch.Tensor]],
    ) -> list[Term]:
        """The terms of ``groups`` from the captured inputs and cotangents of the calls (see :meth:`_capture`)."""
        calls = self.trace.calls
        terms: list[Term] = []
        for g in groups:
            if g.form in ("gram", "jacobian"):
                parts = [linear_family_term(calls[i], inputs[i], cots[i]) for i, _ in g.uses]
                factors = outer.get(g.uses[0][0]) if len(g.uses) == 1 else None
                A, G = _cat([t.A for t in parts], 2), _cat([t.G for t in parts], 3)
                term = GramTerm(A, G, factors, bias=g.bias is not None)
                terms.append(term if g.form == "gram" else FactoredJacobianTerm(term))
            elif g.form == "index":
                tables = [embedding_term(calls[i], inputs[i], cots[i]) for i, _ in g.uses]
                indices, G = _cat([t.indices for t in tables], 1), _cat([t.G for t in tables], 2)
                terms.append(IndexTerm(indices, G, tables[0].num_embeddings))
            else:
                jacobians = [parameter_jacobian(calls[i], s, inputs.get(i), cots[i]).J for i, s in g.uses]
                terms.append(JacobianTerm(functools.reduce(torch.add, jacobians)))
        return terms

    def _current(self, *features: list[Term]) -> None:
        for f in features:
            if isinstance(f, _Features) and f.generation != self.buffers.generation[f.side]:
                raise RuntimeError(
                    "ntkit internal error: features of a chain were used after their buffers were "
                    "reused (blocks.assemble must finish with one side's features before computing the next)."
                )

    def pair(self, f1: list[Term], f2: list[Term], full: bool) -> torch.Tensor:
        self._current(f1, f2)
        if full and self.trace.n_outputs == 1:  # the full block is the traced one, which takes the Gram shortcuts
            return contract(f1, f2, False, self.workspace)[:, :, None, None]
        return contract(f1, f2, full, self.workspace)

    def diag(self, f1: list[Term], f2: list[Term], full: bool) -> torch.Tensor:
        self._current(f1, f2)
        return contract_diagonal(f1, f2, full, self.workspace)
