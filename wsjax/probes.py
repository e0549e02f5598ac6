"""Measurements of a model during training that the study's figures need.

- ``make_grad_norm_fn``: the mean norm of minibatch gradients on a fixed set of examples
  (Fig 5 compares old data with new data during round 2).
- ``bn_mismatch``: how far BatchNorm running statistics are from the statistics the current
  weights produce on the data (the study notebook's claims 6 and 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsjax.augment import NORMALIZATIONS, normalize


def make_grad_norm_fn(model, *, batch_size: int = 128, normalization: str = "study"):
    """Returns ``norms(states, x, y, idx) -> (R,)``: for each replica, the mean over batches
    of ``x[idx]`` (``len(idx) // batch_size`` whole batches, in order) of the L2 norm of the
    gradient of the batch's mean cross-entropy. BatchNorm layers use batch statistics, as in
    training, and their running averages are left alone."""
    mean, std = NORMALIZATIONS[normalization]

    def grad_norm(state, images, labels):
        def loss(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            if jax.tree.leaves(state.batch_stats):
                logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
            else:
                logits = model.apply(variables, images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        # Written out: optax renamed its tree norm in 0.2.5 (tree_l2_norm -> tree_norm) and we
        # support 0.2.4, so neither name works warning-free on every supported version.
        grads = jax.tree.leaves(jax.grad(loss)(state.params))
        return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads))

    # One compiled batch called from Python: XLA:CPU runs convolutions inside compiled loops
    # 30-40x slower, and a few dispatches cost nothing elsewhere.
    one = jax.jit(jax.vmap(lambda state, x, y, ids: grad_norm(
        state, normalize(x[ids], mean, std), y[ids]), in_axes=(0, None, None, None)))

    def norms(states, x, y, idx):
        idx = np.asarray(idx, np.int32)
        whole = len(idx) // batch_size
        if whole == 0:
            raise ValueError(f"need at least batch_size={batch_size} examples, got {len(idx)}")
        total = sum(one(states, x, y, jnp.asarray(idx[i * batch_size:(i + 1) * batch_size]))
                    for i in range(whole))
        return total / whole

    return norms


def bn_mismatch(running, recomputed, eps: float = 1e-5) -> dict:
    """Distance between BatchNorm running statistics and data statistics, per replica.

    Both arguments are ``batch_stats`` trees (leaves ``mean``/``var``, leading replica axis);
    ``recomputed`` comes from ``warmstart.recompute_batch_stats`` on the data of interest.
    Returns ``{'mean_gap', 'logvar_gap'}``, each (R,): the average over every BatchNorm channel
    of ``|mu_run - mu_data| / sqrt(var_data + eps)`` and of ``|log(var_run / var_data)|``.
    Both are 0 when the running statistics match the data.
    """
    def layers(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        out = {}
        for path, leaf in flat:
            keys = [str(getattr(p, "key", p)) for p in path]
            out.setdefault("/".join(keys[:-1]), {})[keys[-1]] = leaf
        return out

    run, data = layers(running), layers(recomputed)
    if set(run) != set(data) or not run:
        raise ValueError("running and recomputed must be batch_stats trees of the same model "
                         f"(BatchNorm layers {sorted(run)} vs {sorted(data)})")
    mean_gaps, var_gaps = [], []
    for name in sorted(run):
        r, d = run[name], data[name]
        axes = tuple(range(1, r["mean"].ndim))
        mean_gaps.append(jnp.mean(jnp.abs(r["mean"] - d["mean"]) / jnp.sqrt(d["var"] + eps),
                                  axis=axes))
        var_gaps.append(jnp.mean(jnp.abs(jnp.log((r["var"] + eps) / (d["var"] + eps))),
                                 axis=axes))
    return {"mean_gap": jnp.mean(jnp.stack(mean_gaps), 0),
            "logvar_gap": jnp.mean(jnp.stack(var_gaps), 0)}
