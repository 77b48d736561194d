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
from .kernel_type import KERNEL_TEMPORARIES, Kernel, pair_entries, working_set_probe
from .registry import apply_layer, mixes_positions

__all__ = ["Plan", "plan"]


@dataclass(frozen=True)
class Plan:
    """What the dry run found. ``output`` is the output layer's kernel on the meta device (its metadata)."""

    diagonal_spatial: bool
    working_entries: int  # tensor entries alive at once per pair of examples, at the most demanding layer
    output_entries: int  # entries of the output kernel per pair of examples
    output: Kernel
    requires_grad: bool  # derivatives are taken (reverse mode records, or forward mode is active)
    chain: tuple[Step, ...] | None = None  # dense layers and ReLU-family activations only (``dense_chain``)
    conv_chain: ConvChain | None = None  # a pooled CNN of convolutions, ReLU-family, pooling (``conv_chain``)

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
    patterns: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> Plan:
    """Run the requirements pass (see the module docstring)."""
    _check_no_weight_sharing(model)
    if diagonal_spatial is None:
        diagonal_spatial = not needs_full_spatial(model)
    probe: list[int] = [0]
    records: list[Record] = []
    token, chain_token = working_set_probe.set(probe), chain_recorder().set(records)
    try:
        device = x1.device if diagonal_spatial else "meta"
        a = x1[:1].to(device=device, dtype=dtype)
        b = None if x2 is None else x2[:1].to(device=device, dtype=dtype)
        graphs = None
        if patterns is not None:  # the first example's graph of each side
            p1, p2 = patterns
            graphs = (p1[:1].to(device), None if p2 is None else p2[:1].to(device))
        k_input = Kernel.from_inputs(
            a, b, diagonal_spatial=diagonal_spatial, ntk=ntk, mask_constant=mask_constant, pattern=graphs
        )
        out = apply_layer(model, k_input)
    finally:
        working_set_probe.reset(token)
        chain_recorder().reset(chain_token)
    requires_grad = tracks_derivatives(out.nngp, out.ntk)
    fast = not requires_grad and mask_constant is None  # the fast paths run no layer maps, so no masks
    chain = linked_chain(records, k_input, out) if x1.ndim == 2 and fast else None
    convs = conv_chain(records, k_input, out) if x1.ndim > 2 and fast else None
    return Plan(diagonal_spatial, probe[0], pair_entries(out.nngp), out, requires_grad, chain, convs)
