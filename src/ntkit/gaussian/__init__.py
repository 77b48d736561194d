"""Gaussian expectations of elementwise functions: the math below the kernel engine.

For a centred Gaussian pair (u, v) ~ N(0, [[var1, cov], [cov, var2]]) this package computes E[φ(u) φ(v)],
E[φ'(u) φ'(v)] and E[φ(u)], in closed form or by Gaussian quadrature (theory.md §4.2):

- :mod:`.quadrature`: the stable building blocks (``safe_sqrt``, ``clamp_cov``, ``angle``), Gaussian
  quadrature of E[f(u)] and E[f(u) g(v)], and the cross terms E[φ1(u) φ2(v)] of two activations;
- :mod:`.activations`: the elementwise activations (torch modules, exported by ``ntkit.nn``) with their
  expectations;
- :mod:`.functions`: ψ, a sum of activations of one Gaussian layer, as the kernel recursions meet it.

Imports run one way: ``ntkit.gaussian`` -> ``ntkit.infinite`` (the kernel engine) -> ``ntkit.nn`` (layers); this
package imports neither of the other two. Like ``ntkit.infinite``, its ``__init__`` imports nothing.
"""
