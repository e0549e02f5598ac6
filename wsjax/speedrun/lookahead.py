"""airbench's "lookahead": an exponential moving average of the weights that the network is
pulled back to every few steps, with a decay that grows over the run.

Every 5 steps (from epoch 3 on in airbench94): ``ema <- ema + (1 - decay) * (net - ema)``, then
``net <- ema``, with ``decay = base * (step / total) ** power`` (``base = 0.95 ** 5``,
``power = 3``): early in the run the average follows the network closely, late in the run it
averages over many steps. BatchNorm running statistics are averaged along with the weights.
``wsjax.speedrun`` applies it inside its compiled run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lookahead_decay(step, total_steps: int, base: float = 0.95 ** 5, power: float = 3.0):
    """The averaging decay at ``step`` (traced or not) of a ``total_steps`` run."""
    return base * (jnp.asarray(step, jnp.float32) / total_steps) ** power


def lookahead_sync(ema, net, decay):
    """One lookahead sync: returns ``(new_ema, new_net)``, both equal to
    ``ema + (1 - decay) * (net - ema)`` (leaf by leaf; any pytrees of the same structure)."""
    new = jax.tree.map(lambda e, n: (e + (1.0 - decay) * (n - e)).astype(e.dtype), ema, net)
    return new, new
