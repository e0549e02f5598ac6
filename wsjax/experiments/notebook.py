"""The study's experiments from a notebook: one run per claim at the runtime's scale, its figure,
the committed full-size results beside it, and the verdicts of ``wsjax.experiments.claims``.

A notebook makes one ``Session`` and calls ``session.run(script, quick=..., cpu=...,
accelerator=...)``: the flags for the scale the runtime allows (``quick`` under the QUICK switch
or ``WSJAX_QUICK=1``, ``accelerator`` on a GPU/TPU, ``cpu`` otherwise). Quick runs go to a fresh
temporary folder; other runs go to ``runs`` and resume from their checkpoints when a cell is run
again (e.g. after Colab disconnects, with ``runs`` on a mounted Drive).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from pathlib import Path

import jax

from wsjax import data as wdata
from wsjax.experiments import claims as claims_table
from wsjax.experiments.redraw import plot_for
from wsjax.study import records

# The committed full-size results come with a checkout of the repository (the notebooks clone
# it), not with an installed wheel.
REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "experiments" / "results"


def quick_mode(switch: bool = False) -> bool:
    """The QUICK switch of a notebook's settings, also on when ``WSJAX_QUICK=1`` (CI)."""
    return bool(switch) or os.environ.get("WSJAX_QUICK", "") not in ("", "0")


def show(obj) -> None:
    """Displays ``obj`` (markdown text or an image path) in a notebook, else prints it."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, Markdown, display
    except ImportError:
        get_ipython = lambda: None  # noqa: E731 - no IPython: plain printing
    if get_ipython() is None:
        print(obj)
    elif isinstance(obj, Path):
        display(Image(filename=str(obj)))
    else:
        display(Markdown(obj))


@dataclasses.dataclass
class Session:
    """Where a notebook's runs go, at which scale, on which data.

    ``quick``: the QUICK switch; ``runs``: the folder of non-quick runs; ``dataset``: the
    study's dataset (under QUICK, ``synthetic`` stands in when it is not already on disk, so a
    quick run never downloads); ``data_dir``: as ``--data-dir`` (None: ``$WSJAX_DATA_DIR``);
    ``progress``: as ``--progress`` (``bar`` keeps a notebook's output short, ``off`` quiet).
    """

    quick: bool = False
    runs: str | os.PathLike = "runs"
    dataset: str = "cifar10"
    data_dir: str | None = None
    progress: str = "bar"

    def __post_init__(self):
        self.quick = quick_mode(self.quick)
        self.out = Path(tempfile.mkdtemp(prefix="wsjax-quick-")) if self.quick else Path(self.runs)
        self.out.mkdir(parents=True, exist_ok=True)
        cache = wdata.default_data_dir(self.data_dir) / f"{self.dataset}.npz"
        if self.quick and not self.dataset.startswith("synthetic") and not cache.exists():
            print(f"QUICK: no {cache}; the quick runs use synthetic data instead")
            self.dataset = "synthetic"

    @property
    def scale(self) -> str:
        """``quick``, ``accelerator`` (JAX runs on a GPU or TPU) or ``cpu``."""
        if self.quick:
            return "quick"
        return "cpu" if jax.default_backend() == "cpu" else "accelerator"

    def flags(self, quick=(), cpu=(), accelerator=()) -> list[str]:
        """The flags for this session's scale, with the dataset's."""
        chosen = {"quick": ["--quick", *quick], "cpu": list(cpu),
                  "accelerator": list(accelerator)}[self.scale]
        data = ["--data-dir", self.data_dir] if self.data_dir else []
        if "--dataset" not in chosen:
            data += ["--dataset", self.dataset]
        return [*data, "--progress", self.progress, *chosen]

    def run(self, script: str, *, name: str | None = None, quick=(), cpu=(),
            accelerator=()) -> records.Record:
        """Runs ``wsjax <script>`` with the flags for this scale into ``<out>/<name>``
        (default: the script's name) and shows its figure; returns its record."""
        name = name or script
        argv = [*self.flags(quick, cpu, accelerator), "--out", str(self.out / name)]
        print(f"wsjax {script} {' '.join(argv)}")
        record = importlib.import_module(f"wsjax.experiments.{script}").main(argv)
        self.figure(self.out / name)
        return record

    def figure(self, folder: str | os.PathLike) -> None:
        """Shows the figures a run wrote into ``folder``."""
        for png in sorted(Path(folder).glob("*.png")):
            show(png)

    def verdicts(self, *names: str, committed: bool = False) -> list[dict]:
        """Shows the claims table for the runs ``names`` of this session (or, with
        ``committed``, of ``experiments/results``), then its verdicts in words (generated
        from the table: ``claims.prose``), and returns its rows."""
        rows = claims_table.claims(COMMITTED if committed else self.out, runs=names)
        if not rows:
            show(f"no claim rows for {names}")
            return rows
        show(claims_table.markdown(rows))
        which = "our committed runs" if committed else "this session's runs"
        show(f"**Verdict ({which}), from the table above.**\n\n" + claims_table.prose(rows))
        return rows

    def committed(self, name: str, draw: bool = True) -> records.Record:
        """The committed full-size record ``experiments/results/<name>``, drawn (from its
        numbers, into this session's folder) unless ``draw`` is False."""
        path = COMMITTED / name / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"no committed results {path}; the runs that exist: "
                                    f"{sorted(p.parent.name for p in COMMITTED.glob('*/results.json'))}")
        record = records.load(path)
        plot = plot_for(record) if draw else None
        if plot is not None:
            folder = self.out / "committed" / name
            folder.mkdir(parents=True, exist_ok=True)
            show(Path(plot(record, folder)))
        return record
