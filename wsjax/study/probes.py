"""Measurements of a model that the study's figures need beside accuracy.

- ``bn_mismatch``: how far BatchNorm running statistics are from the statistics the current
  weights produce on the data (the study notebook's claims 6 and 7).
- Gradient norms on old and new data (Fig 5) are a pass over data:
  ``wsjax.engine.Engine.grad_norms``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bn_mismatch(running, recomputed, eps: float = 1e-5) -> dict:
    """Distance between BatchNorm running statistics and data statistics, per replica.

    Both arguments are ``batch_stats`` trees (leaves ``mean``/``var``, leading replica axis);
    ``recomputed`` comes from ``Engine.recompute_batch_stats`` on the data of interest.
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
