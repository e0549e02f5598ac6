"""How CI shares the ``once`` tests and the notebooks out over its two environments
(conftest.py): each runs where it is listed, and one listed nowhere stops the session."""

import os
import subprocess
import sys

import pytest

from harness import REPO

# CI runs this module in one of its two environments (`once`, conftest.py).
pytestmark = pytest.mark.once

# A module with once tests (test_lr_range), one without (test_import), and a notebook.
FILES = ["tests/test_lr_range.py", "tests/test_import.py", "colab/quickstart.ipynb"]


def _collect(here=None, elsewhere=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSJAX_ONCE_")}
    env.update({k: v for k, v in (("WSJAX_ONCE_HERE", here),
                                  ("WSJAX_ONCE_ELSEWHERE", elsewhere)) if v is not None})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-o",
                          "addopts=--nbmake", "-p", "no:cacheprovider", *FILES],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _modules(text):
    return {line.split("::")[0] for line in text.splitlines() if "::" in line}


def test_unset_runs_everything_and_each_share_runs_its_own():
    code, everything = _collect()
    assert code == 0 and _modules(everything) == set(FILES)
    code, here = _collect("quickstart", "lr_range")
    assert code == 0 and _modules(here) == {"tests/test_import.py", "colab/quickstart.ipynb"}
    assert "deselected" in here
    code, there = _collect("lr_range", "quickstart")
    assert code == 0 and _modules(there) == {"tests/test_import.py", "tests/test_lr_range.py"}


def test_a_once_test_listed_nowhere_stops_the_session():
    code, text = _collect("quickstart", "")
    assert code != 0 and "once tests of ['lr_range'] run in neither CI environment" in text
