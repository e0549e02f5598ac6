"""What every notebook in colab/ must have (nbmake runs them; see colab/conftest.py)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))


def test_the_four_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= {"study", "quickstart", "speedrun", "toolkit"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_complete(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    # Outputs stay out of git: a diff shows only what changed in the code.
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in cells if c["cell_type"] == "code")
    assert f"colab.research.google.com/github/wsjax/wsjax/blob/main/colab/{path.name}" \
        in "".join(cells[0]["source"])
    assert "runtime.check_backend()" in code[0] and "pip" in code[0]
    assert "runtime.report()" in code[1]
    settings = [c for c in code if "QUICK = False  # @param" in c]
    # WSJAX_QUICK=1 must turn QUICK on: quick_mode() reads it (Session calls it).
    assert len(settings) == 1 and ("quick_mode(QUICK)" in settings[0]
                                   or "Session(quick=QUICK" in settings[0])


def test_session_flags_per_scale_and_quick_data_fallback(tmp_path, monkeypatch):
    from wsjax.experiments.notebook import Session, quick_mode

    monkeypatch.setenv("WSJAX_QUICK", "1")
    assert quick_mode(False)
    session = Session(quick=False, data_dir=str(tmp_path))  # no cifar10.npz there
    assert session.scale == "quick" and session.dataset == "synthetic"
    flags = session.flags(quick=["--seeds", "2"], cpu=["--seeds", "3"])
    assert flags == ["--data-dir", str(tmp_path), "--dataset", "synthetic", "--progress", "bar",
                     "--quick", "--seeds", "2"]
    # A run that names its own dataset keeps it.
    assert session.flags(quick=["--dataset", "synthetic:4:8"]) == [
        "--data-dir", str(tmp_path), "--progress", "bar", "--quick", "--dataset",
        "synthetic:4:8"]
    monkeypatch.setenv("WSJAX_QUICK", "0")
    (tmp_path / "cifar10.npz").touch()
    session = Session(runs=tmp_path / "runs", data_dir=str(tmp_path))
    assert session.scale in ("cpu", "accelerator") and session.dataset == "cifar10"
    assert session.out == tmp_path / "runs" and "--quick" not in session.flags()
