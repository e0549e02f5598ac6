"""Muon as airbench94_muon uses it, for convolution filters.

Each step, per filter bank ``W`` (Flax HWIO kernel, viewed as a ``C_out x (H*W*C_in)`` matrix):

    m <- momentum * m + g;  g' = g + momentum * m      (Nesterov) or m
    W <- W * sqrt(C_out) / ||W||_F                      (renormalize the weights)
    W <- W - lr * orthogonalize(g')                     (Newton-Schulz, a few bf16 iterations)

``orthogonalize`` pushes every singular value of the update towards 1 with the quintic
iteration ``X <- a X + (b A + c A^2) X``, ``A = X X^T``, coefficients (3.4445, -4.7750, 2.0315).
This is not ``optax.contrib.muon`` (which scales updates by shape, uses Adam for the rest and
does not renormalize the weights).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g, steps: int = 3, coeffs=NS_COEFFS, eps: float = 1e-7,
                  dtype=jnp.bfloat16) -> jax.Array:
    """Approximately ``U V^T`` for ``g = U S V^T`` (a 2-D matrix) by ``steps`` Newton-Schulz
    iterations computed in ``dtype``; returns ``g``'s dtype."""
    if g.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix; got shape {g.shape}")
    a, b, c = coeffs
    x = g.astype(dtype)
    x = x / (jnp.linalg.norm(x.astype(jnp.float32)).astype(dtype) + eps)
    wide = g.shape[0] <= g.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x if wide else x.T).astype(g.dtype)


def _as_matrix(kernel):
    """HWIO kernel (or a dense ``(in, out)`` matrix) -> ``(C_out, fan_in)``. The order of the
    columns does not matter: orthogonalization commutes with permuting them."""
    return kernel.reshape(-1, kernel.shape[-1]).T


class MuonState(NamedTuple):
    count: jax.Array
    momentum: optax.Updates


def muon(learning_rate, momentum: float = 0.6, nesterov: bool = True, ns_steps: int = 3,
         renormalize: bool = True, ns_dtype=jnp.bfloat16) -> optax.GradientTransformation:
    """Muon for conv filters (see the module docstring): returns the whole step as updates, so
    it chains like any optax optimizer. ``learning_rate`` is a number or an optax schedule.
    ``update`` needs ``params`` when ``renormalize`` is on.

    >>> tx = muon(0.24)
    >>> w = {"kernel": jnp.ones((3, 3, 4, 8))}
    >>> updates, state = tx.update(w, tx.init(w), w)
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1)")
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params):
        return MuonState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if renormalize and params is None:
            raise ValueError("muon(renormalize=True) needs params: tx.update(grads, state, params)")
        buf = jax.tree.map(lambda m, g: momentum * m + g, state.momentum, grads)
        step = jax.tree.map(lambda g, m: g + momentum * m, grads, buf) if nesterov else buf
        lr = schedule(state.count)

        def one(d, w):
            o = orthogonalize(_as_matrix(d), ns_steps, dtype=ns_dtype).T.reshape(d.shape)
            u = -lr * o
            if renormalize:
                norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32))))
                u = u + w * (jnp.sqrt(w.shape[-1]) / norm - 1.0)
            return u.astype(w.dtype)

        updates = jax.tree.map(one, step, params if renormalize else step)
        return updates, MuonState(state.count + 1, buf)

    return optax.GradientTransformation(init, update)
