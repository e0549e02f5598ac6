"""``wsjax summary``: a model's layers, output shapes, parameter counts and multiply-adds,
printed like torchinfo (``wsjax.summary``).

    wsjax summary --model resnet18_narrow
    wsjax summary --model mlp --widths 256,256,256 --classes 2 --input-shape 1,1,2
    wsjax summary --model wrn28_10 --conv hashed_sep --budget 0.1   # solved to a budget
"""

from __future__ import annotations

import dataclasses

from wsjax.experiments.common import ModelConfig, build_model, comma_ints
from wsjax.budget import solve_budget
from wsjax.experiments.flags import COUNT, POSITIVE, Checked, option, parse
from wsjax.summary import ModelSummary, summarize_model


@dataclasses.dataclass(frozen=True)
class SummaryConfig(Checked):
    """The model and the input it is summarized for."""

    model: ModelConfig = ModelConfig()
    classes: int = option(10, "number of classes (the head's width)", check=COUNT)
    input_shape: tuple[int, ...] = option((32, 32, 3), "one input's shape H,W,C",
                                          parse=comma_ints, check=COUNT)
    no_xla: bool = option(False, "skip XLA's flop count (it compiles the model once)")
    budget: float | None = option(None, "size --conv's substitute to this many parameters (a "
                                  "count, or a fraction of the full model in (0, 1))",
                                  check=POSITIVE)


def run(cfg: SummaryConfig) -> ModelSummary:
    """Prints and returns the summary."""
    if len(cfg.input_shape) != 3:
        raise ValueError(f"--input-shape {','.join(map(str, cfg.input_shape))}: give three "
                         f"numbers H,W,C, e.g. 32,32,3")
    model_cfg, fit = cfg.model, None
    if cfg.budget is not None:
        build = lambda spec: build_model(dataclasses.replace(cfg.model, conv=str(spec)),
                                         cfg.classes)
        fit = solve_budget(build, cfg.model.conv, cfg.budget, cfg.input_shape)
        model_cfg = dataclasses.replace(cfg.model, conv=str(fit.spec))
    summary = summarize_model(build_model(model_cfg, cfg.classes), cfg.input_shape,
                              xla=not cfg.no_xla)
    print(summary)
    if fit is not None:
        print(f"Budget: {fit}")
    return summary


def main(argv=None) -> ModelSummary:
    """``wsjax summary``: parses the flags and prints the summary."""
    return run(parse(SummaryConfig, argv, description=__doc__))
