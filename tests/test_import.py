from harness import run_python


def test_import_is_light():
    out = run_python("import sys, wsjax, wsjax.data, wsjax.train, wsjax.study, wsjax.checkpoint, "
                     "wsjax.plots\n"
                     "heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'matplotlib') "
                     "if m in sys.modules]\nprint('HEAVY', heavy)")
    assert "HEAVY []" in out
