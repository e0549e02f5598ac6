from harness import run_python


def test_import_is_light():
    out = run_python("import sys, wsjax, wsjax.data, wsjax.train, wsjax.engine, wsjax.study, "
                     "wsjax.study.stages, wsjax.study.protocols, wsjax.study.plots, "
                     "wsjax.speedrun, wsjax.checkpoint, wsjax.experiments.warm_start\n"
                     "heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'matplotlib', "
                     "'torch', 'tensorboardX') if m in sys.modules]\nprint('HEAVY', heavy)")
    assert "HEAVY []" in out
