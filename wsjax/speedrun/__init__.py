"""The fast CIFAR-10 trainer: airbench94's recipe in JAX with David Page's ResNet-9 tricks.

- ``recipe``: ``Recipe`` (every trick a switch), the presets ``AIRBENCH94``,
  ``AIRBENCH94_MUON``, ``PAGE_RESNET9``, ``TRICKS`` for ablations, the optimizer groups;
- ``trainer``: ``Speedrun``, whose ``run`` is one compiled call (whitening, the whole training
  as a ``lax.scan``, test-time-augmented evaluation);
- its parts: ``nets`` (airbench's net, ResNet-9), ``whitening``, ``muon``, ``lookahead``,
  ``tta``.
"""

from wsjax.speedrun.recipe import (AIRBENCH94, AIRBENCH94_MUON, PAGE_RESNET9, TRICKS, Recipe,
                                   frozen_mask)
from wsjax.speedrun.trainer import Speedrun

__all__ = ["AIRBENCH94", "AIRBENCH94_MUON", "PAGE_RESNET9", "TRICKS", "Recipe", "Speedrun",
           "frozen_mask"]
