"""The requirements pass of ``nk.kernel``: what the architecture needs, and its memory, before computing.

1. Layout: the full spatial covariance if any layer mixes positions (pooling), else only its diagonal
   (enough when the network flattens), as neural-tangents does, but chosen from the module tree.
2. No weight sharing: a module used twice would correlate branches in ways the recursions ignore.
3. A dry run of every layer's kernel map for one example per side: it checks the whole architecture
   (unsupported layers, shapes) and records the largest working set per pair of examples. With diagonal
   spatial covariances one pair is no bigger than one feature map, so it runs on the inputs' device (fast);
   with full covariances one pair can be huge, so it runs on the ``meta`` device, allocating nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._derivatives import tracks_derivatives
from .._memory import format_bytes
from ..errors import UnsupportedError
from .conv_chain import ConvChain, conv_chain
from .dense_chain import Record, Step, chain_recorder, linked_chain
from .inputs import Inputs, Patterns
from .kernel_type import KERNEL_TEMPORARIES, Kernel, pair_entries, working_set_probe
from .registry import apply_kernels, mixes_positions

__all__ = ["Plan", "plan", "plan_inputs"]


@dataclass(frozen=True)
class Plan:
    """What the dry run found. ``outputs``: each output layer's kernel on the meta device (its metadata), one per
    output of the network; ``several_outputs``: the network gives a tuple (even of one: no fast path then)."""

    diagonal_spatial: bool
    working_entries: int  # tensor entries alive at once per pair of examples, at the most demanding layer
    output_entries: int  # entries of the output kernels per pair of examples (all outputs)
    outputs: tuple[Kernel, ...]
    several_outputs: bool
    requires_grad: bool  # derivatives are taken (reverse mode records, or forward mode is active)
    chain: tuple[Step, ...] | None = None  # dense layers and ReLU-family activations only (``dense_chain``)
    conv_chain: ConvChain | None = None  # a pooled CNN of convolutions, ReLU-family, pooling (``conv_chain``)

    @property
    def output(self) -> Kernel:
        """The output layer's kernel of a network with one output (the fast paths')."""
        assert not self.several_outputs
        return self.outputs[0]

    @property
    def kernel_entries(self) -> int:
        """Entries per pair of examples of the largest kernel tensor."""
        return max(self.working_entries // KERNEL_TEMPORARIES, 1)

    def tile_bytes(self, b1: int, b2: int, itemsize: int) -> int:
        """Memory of one tile of b1 x b2 pairs (per-example covariances counted as pairs too)."""
        return self.working_entries * itemsize * (b1 * b2 + b1 + b2)

    def output_bytes(self, n1: int, n2: int, itemsize: int, n_kernels: int) -> int:
        return self.output_entries * itemsize * (n_kernels * n1 * n2 + n1 + n2)

    def describe_pair(self, itemsize: int) -> str:
        layout = "diagonal" if self.diagonal_spatial else "full"
        return (
            f"{self.working_entries:,} entries ({format_bytes(self.working_entries * itemsize)}) per pair of "
            f"examples at the largest layer ({layout} spatial layout)"
        )


def _check_no_weight_sharing(model: nn.Module) -> None:
    seen: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            raise UnsupportedError(
                f"parameters {seen[id(param)]!r} and {name!r} are the same tensor (weight sharing); the "
                "infinite-width recursions assume independent weights in every layer. Use nk.monte_carlo_kernel."
            )
        seen[id(param)] = name


def needs_full_spatial(model: nn.Module) -> bool:
    """True if some layer's outputs at one position depend on inputs at other positions."""
    return any(mixes_positions(m) for m in model.modules())


def plan(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    dtype: torch.dtype,
    ntk: bool,
    diagonal_spatial: bool | None,
    mask_constant: float | None = None,
    patterns: Patterns | None = None,
) -> Plan:
    """Run the requirements pass (see the module docstring) for a network with one input (and the examples'
    graphs ``patterns``, :mod:`.graphs`)."""
    inputs = Inputs((x1,), None if x2 is None else (x2,), several=False, patterns=patterns)
    return plan_inputs(
        model, inputs, dtype=dtype, ntk=ntk, diagonal_spatial=diagonal_spatial, mask_constant=mask_constant
    )


def plan_inputs(
    model: nn.Module,
    inputs: Inputs,
    *,
    dtype: torch.dtype,
    ntk: bool,
    diagonal_spatial: bool | None,
    mask_constant: float | None = None,
) -> Plan:
    """Run the requirements pass (see the module docstring) for checked inputs (one tensor or several)."""
    _check_no_weight_sharing(model)
    if diagonal_spatial is None:
        diagonal_spatial = not needs_full_spatial(model)
    probe: list[int] = [0]
    records: list[Record] = []
    token, chain_token = working_set_probe.set(probe), chain_recorder().set(records)
    try:
        first = inputs.tile(slice(0, 1), None if inputs.x2 is None else slice(0, 1))
        first = first.to(inputs.device if diagonal_spatial else "meta", dtype)
        k_input = first.kernel(diagonal_spatial=diagonal_spatial, ntk=ntk, mask_constant=mask_constant)
        out = apply_kernels(model, k_input)
    finally:
        working_set_probe.reset(token)
        chain_recorder().reset(chain_token)
    outs = out if isinstance(out, tuple) else (out,)
    requires_grad = tracks_derivatives(*(t for k in outs for t in (k.nngp, k.ntk)))
    entries = sum(pair_entries(k.nngp) for k in outs)
    several = isinstance(out, tuple)
    if isinstance(out, tuple) or isinstance(k_input, tuple) or requires_grad or mask_constant is not None:
        # the fast paths take one input and one output, and run no layer maps (so no masks)
        return Plan(diagonal_spatial, probe[0], entries, outs, several, requires_grad)
    x1 = inputs.x1[0]
    chain = linked_chain(records, k_input, out) if x1.ndim == 2 else None
    convs = conv_chain(records, k_input, out) if x1.ndim > 2 else None
    return Plan(diagonal_spatial, probe[0], entries, outs, several, requires_grad, chain, convs)
