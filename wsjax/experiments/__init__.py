"""The study's experiments as commands: one module per figure or table of Ash & Adams, plus
the claims table, figure redrawing, the fast trainer's experiment and benchmarks.

Each module has ``main(argv)`` (its flags, parsed into a typed config; ``--help`` lists them
with their defaults) and ``run(cfg)``. Run one as ``wsjax <command>``, ``python -m wsjax
<command>`` or ``python -m wsjax.experiments.<command>``, from any directory.
"""

# Command -> what it runs (the commands are this package's modules).
COMMANDS = {
    "warm_start": "two-phase 50% -> 100%: random init vs warm start vs shrink-perturb",
    "table1": "Table 1: every model x optimizer cell of one dataset, beside the paper",
    "curves": "Fig 1: train/validation accuracy per epoch",
    "online": "Fig 2 / Fig 7: data in chunks; --select margin (active), --label-noise",
    "sweep": "Fig 3: lr x batch size, accuracy vs time",
    "checkpoint_age": "Fig 4: warm start from round 1's epoch k",
    "regularization": "L2 / adversarial / confidence penalty in both rounds",
    "grad_norms": "Fig 5: gradient norms on old vs new data in round 2",
    "shrink_only": "Fig 6: accuracy of a trained net after shrinking",
    "sp_grid": "Fig 8: shrink x noise grid",
    "transfer": "Fig 9: source -> fraction of a target dataset",
    "perturb_only": "appendix: perturb only",
    "sp_every_step": "appendix: shrink-perturb after every step",
    "bn_stats": "BatchNorm statistics kept / reset / recomputed (the notebook's claims 3-7)",
    "interventions": "plasticity interventions (DASH, L2 Init, ReDo, ...) under staged chunks",
    "budget": "cheap convolutions under a parameter budget, alone / distilled / warm-started",
    "summary": "a model's layers, shapes, parameters and mult-adds (like torchinfo)",
    "claims": "the verdict table of every claim, from saved results",
    "redraw": "every figure again from saved results, no training",
    "fast_trainer": "the fast CIFAR-10 trainer: timed runs, airbench, ablations, warm start",
    "bench_epoch": "epoch time of the engine vs a plain per-step loop",
    "bench_hosts": "the main job on several processes vs one, on this machine",
    "gpu_suite": "one command for a GPU draw: engine, PyTorch loop, airbench, Table 1 ResNet",
}
