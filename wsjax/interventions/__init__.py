"""Warm-start and plasticity interventions as pure, jit-able pytree transforms.

Every function takes trees and returns trees, works in any Flax/Optax loop (no wsjax engine
needed), and acts on one replica (``jax.vmap`` it over a replica axis). Which leaves a method
touches is decided by leaf *roles* (``roles``); which hidden units, by ``UnitLayer``s.

=====================  ============================================  ====================
method                 function                                      source
=====================  ============================================  ====================
cold                   ``shrink_perturb(p, fresh, 0, 1)`` = fresh    Ash & Adams; DASH
warm (+ opt reset)     identity; ``wsjax.warmstart.reset_opt_state``  DASH ``warm_rm``
head reset             ``head_reset``                                DASH ``reset``
shrink-perturb         ``wsjax.warmstart.shrink_perturb`` (fresh     Ash & Adams
                       init noise, every leaf)
                       ``shrink_perturb_linear`` (Gaussian, conv     DASH ``sp``
                       and dense only)
                       ``perturb_every_step`` + coupled decay        loss of plasticity
L2 Init                ``l2_init_penalty`` / ``add_l2_init``         Kumar et al. (paper)
                       ``l2_init_penalty_dash``                      DASH repository
DASH                   ``dash``, ``dash_gradient_average``           DASH (official and
                                                                     lucidrains variants)
ReDo                   ``redo``, ``dormant_masks``                   dopamine ``labs/redo``
continual backprop     ``continual_backprop``, ``cbp_init``,         loss of plasticity
                       ``cbp_hook`` (a ``wsjax.train.StepHook``)
=====================  ============================================  ====================

Where each runs in a protocol (before a stage, after it, every step, in the loss) and what it
does to the optimizer state is in each docstring and in ``../shared/PLASTICITY.md``'s terms.
"""

from wsjax.interventions.cbp import CBPConfig, cbp_hook, cbp_init, continual_backprop
from wsjax.interventions.dash import dash, dash_from_data, dash_gradient_average
from wsjax.interventions.l2_init import add_l2_init, l2_init_penalty, l2_init_penalty_dash
from wsjax.interventions.noise import perturb_every_step, shrink_perturb_linear
from wsjax.interventions.redo import dormant_masks, dormant_scores, redo
from wsjax.interventions.resets import head_reset, reinit, zero_opt_entries
from wsjax.interventions.roles import (LINEAR_ROLES, ROLES, WEIGHT_ROLES, UnitLayer,
                                       activations, default_roles, role_mask, unit_layers)

__all__ = ["CBPConfig", "cbp_hook", "cbp_init", "continual_backprop", "dash", "dash_from_data",
           "dash_gradient_average", "add_l2_init", "l2_init_penalty", "l2_init_penalty_dash",
           "perturb_every_step", "shrink_perturb_linear", "dormant_masks", "dormant_scores",
           "redo", "head_reset", "reinit", "zero_opt_entries", "LINEAR_ROLES", "ROLES",
           "WEIGHT_ROLES", "UnitLayer", "activations", "default_roles", "role_mask",
           "unit_layers"]
