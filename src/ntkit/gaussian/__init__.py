"""Gaussian expectations of elementwise functions: the math below the kernel engine.

For a centred Gaussian pair (u, v) ~ N(0, [[var1, cov], [cov, var2]]) this package computes E[φ(u) φ(v)],
E[φ'(u) φ'(v)] and E[φ(u)], in closed form or by Gaussian quadrature (theory.md §4.2):

- :mod:`.stable`: the building blocks that keep closed forms finite (``safe_sqrt``, ``clamp_cov``, ``angle``);
- :mod:`.quadrature`: Gaussian quadrature of E[f(u)] and E[f(u) g(v)], checked against coarser rules;
- :mod:`.activations`: the elementwise activations (torch modules, exported by ``ntkit.nn``) with their
  expectations in closed form or by quadrature, and the capabilities the engine reads (``kernel_transform``,
  ``arc_cosine_slopes``);
- :mod:`.functions`: ψ, a sum of activations of one Gaussian layer, as the kernel recursions meet it, and the
  cross terms E[φ1(u) φ2(v)] of two activations.

Imports run one way: ``ntkit.gaussian`` -> ``ntkit.infinite`` (the kernel engine) -> ``ntkit.nn`` (layers); this
package imports neither of the other two. Like ``ntkit.infinite``, its ``__init__`` imports nothing.
"""
