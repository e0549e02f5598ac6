"""The interventions experiment's rows of the claims table (``wsjax claims``): DASH against
shrink-perturb, warm start's loss of plasticity against cold, and every intervention's accuracy
and compute against cold and warm. Effects are paired by seed; accuracy is the test accuracy
after the last stage, compute the training examples processed over all stages."""

from __future__ import annotations

import numpy as np

from wsjax.study.records import Run
from wsjax.study.stats import mean_se, paired_differences, stop_counts

# Validation accuracy within this many points counts as "no worse" (the study's tolerance).
CLOSED_PP = 0.5


def _per_seed(rounds, value) -> list[dict]:
    return [{"seed": s.seed, "v": v} for s, v in zip(rounds[-1].seeds, value(rounds))]


def _final_acc(rounds):
    return [(s.test_acc or 0.0) * 100 for s in rounds[-1].seeds]


def _examples(rounds):
    return list(np.sum([[s.examples or 0 for s in r.seeds] for r in rounds], axis=0) / 1e6)


def _end(key, scale=1.0):
    return lambda rounds: [v * scale for v in rounds[-1].end[key]]


def interventions_claims(t, name: str, rec: Run) -> None:
    """Adds the rows of one interventions run to the claims table ``t``."""
    res = rec.results
    last = next(iter(res.values()))[-1]
    c = rec.config
    # DASH's protocol is SGD with momentum, lr 1e-3, stopping at 99.9%: say where a run differs.
    at = (f"{name}, stage {last.stage} of chunks of {c.get('chunk')} (n={last.n}), "
          f"{c.get('optimizer')} lr {c.get('lr'):g}, stop at {c.get('threshold'):g}")

    def paired(claim, a, b, value, unit, **kw):
        if a in res and b in res:
            diffs = paired_differences(_per_seed(res[a], value), _per_seed(res[b], value), "v",
                                       1.0)
            # Every stage of both arms stopped by its own rule: all of them are counted.
            stops = stop_counts(*(r.seeds for arm in (a, b) for r in res[arm]))
            t.add(claim, at, mean_se(diffs), len(diffs), unit=unit, stops=stops, **kw)

    for sp in ("sp", "sp_aa"):
        paired(f"DASH reaches at least shrink-perturb's accuracy ({sp} - dash, test acc; at "
               f"most {CLOSED_PP:g} = no worse)", sp, "dash", _final_acc, "pp",
               test="non_inferior", tol=CLOSED_PP)
        paired(f"... at less compute ({sp} - dash, examples processed)", sp, "dash", _examples,
               "M examples")
    paired("Warm start has more dormant units than cold (warm - cold, % at the last stage's "
           "end)", "warm", "cold", _end("dormant", 100), "pp")
    paired("... and lower feature rank (cold - warm, stable rank of penultimate features)",
           "cold", "warm", _end("srank"), "dims")
    for arm in [a for a in res if a not in ("cold", "warm")]:
        paired(f"{arm} generalizes better than warm start ({arm} - warm, test acc)", arm, "warm",
               _final_acc, "pp")
        paired(f"{arm} is no worse than cold ({arm} vs cold: cold - {arm}, test acc; at most "
               f"{CLOSED_PP:g} = no worse)", "cold", arm, _final_acc, "pp",
               test="non_inferior", tol=CLOSED_PP)
        paired(f"{arm} trains on less than cold (cold - {arm}, examples processed)", "cold",
               arm, _examples, "M examples")
