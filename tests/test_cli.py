"""The entry points: typed configs as flags, the ``wsjax`` command, the run directory's config
check, metric sinks and progress display."""

import dataclasses
import importlib
import io
import json

import pytest

from wsjax.experiments import COMMANDS, cli
from wsjax.experiments.common import StudyConfig
from wsjax.experiments.flags import flatten, option, parse, parser_for, unflatten
from wsjax.experiments.warm_start import TwoPhaseConfig
from wsjax.study.runlog import Progress, RunDir


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = option(1e-3, "learning rate")
    sizes: tuple[int, ...] = option((1, 2), "sizes", nargs="+")


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    quick: bool = option(False, "quick")
    keep: bool = option(True, "drop it", flag="--no-keep")
    name: str | None = option(None, "a name", choices=("a", "b"))


def test_configs_parse_into_typed_nested_dataclasses():
    cfg = parse(Outer, ["--lr", "0.1", "--sizes", "3", "4", "--no-keep", "--name", "a"])
    assert cfg == Outer(Inner(0.1, (3, 4)), keep=False, name="a")
    assert unflatten(Outer, flatten(cfg)) == cfg
    assert flatten(cfg) == {"lr": 0.1, "sizes": (3, 4), "quick": False, "keep": False,
                            "name": "a"}
    # --quick replaces only the flags left at their defaults.
    quick = {"lr": 0.5, "sizes": (9,)}
    assert parse(Outer, ["--quick", "--lr", "0.2"], quick=quick).inner == Inner(0.2, (9,))
    # A flag given at its default value is given: --quick leaves it.
    assert parse(Outer, ["--quick", "--sizes", "1", "2"], quick=quick).inner == Inner(0.5, (1, 2))
    assert parse(Outer, [], defaults={"lr": 0.3}).inner.lr == 0.3


def test_every_flag_has_help_and_shows_its_default():
    text = parser_for(TwoPhaseConfig).format_help()
    assert "--batch-size BATCH_SIZE" in text and "(default: 128)" in text
    assert "--no-warm-start" in text and "--opt-state {reset,keep}" in text
    for action in parser_for(TwoPhaseConfig)._actions:
        assert action.help, action.dest
    with pytest.raises(TypeError, match="no help text"):
        @dataclasses.dataclass(frozen=True)
        class Bad:
            x: int = 1
        parser_for(Bad)
    with pytest.raises(TypeError, match="immutable"):
        option([1], "a list")


def test_the_wsjax_command_lists_and_dispatches(capsys):
    cli.main([])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    for name in COMMANDS:
        assert callable(importlib.import_module(f"wsjax.experiments.{name}").main)
    with pytest.raises(SystemExit, match="unknown command 'nope'"):
        cli.main(["nope"])
    with pytest.raises(SystemExit):
        cli.main(["warm-start", "--help"])  # hyphens name the same command
    assert "two-phase experiment" in capsys.readouterr().out


def test_dry_run_prints_the_resolved_settings_and_runs_nothing(tmp_path, capsys):
    from wsjax.experiments import warm_start
    with pytest.raises(SystemExit) as done:
        warm_start.main(["--quick", "--seeds", "3", "--out", str(tmp_path / "run"),
                         "--dry-run"])
    assert done.value.code == 0 and not (tmp_path / "run").exists()
    settings = json.loads(capsys.readouterr().out)
    assert settings["seeds"] == 3 and settings["quick"] and "dry_run" not in settings
    with pytest.raises(ValueError, match="--seeds 0"):  # checked as a run would be
        warm_start.main(["--seeds", "0", "--dry-run"])


def test_a_run_of_an_older_version_resumes_unless_a_flag_changed(tmp_path):
    from wsjax.experiments.common import record_config
    from wsjax.study.records import migrate_config_v1

    cfg = TwoPhaseConfig(study=dataclasses.replace(
        StudyConfig(), model=dataclasses.replace(StudyConfig().model, widths=(8, 16))))
    new = record_config(cfg, "warm_start")
    # Version 1 wrote the script with its package and widths as text, and had no opt_state.
    old = {**new, "script": "experiments.warm_start", "widths": "8,16"}
    del old["opt_state"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "metrics.jsonl").write_text("")  # the run had started
    defaults = record_config(TwoPhaseConfig(), "warm_start")
    RunDir(tmp_path).write_config(new, defaults=defaults, migrate=migrate_config_v1)
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        RunDir(tmp_path).write_config({**new, "lr": 0.5}, defaults=defaults)


def test_metrics_go_to_the_json_lines_file_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    from wsjax.study.runlog import TensorBoardSink

    run = RunDir(tmp_path, sinks=[TensorBoardSink(tmp_path / "tb", seeds=[3, 4])])
    run.metrics.write(stage="round1", epoch=1, train_acc=[0.5, 0.6], seconds=1.0,
                      active=[True, False])
    run.metrics.close()
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["train_acc"] == [0.5, 0.6] and line["stage"] == "round1" and "time" in line
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_progress_line_bar_and_off():
    out = {}
    for mode in Progress.MODES:
        stream = io.StringIO()
        progress = Progress(mode, stream)
        progress.epoch("round1", 1, [0.5, 0.7], [True, True], 1.0)
        progress.epoch("round1", 2, [0.9, 0.99], [False, False], 1.0)
        out[mode] = stream.getvalue()
    assert out["line"].count("\n") == 2 and "train acc 0.6000 [0.5000..0.7000]" in out["line"]
    assert out["bar"].count("\r") == 2 and out["bar"].endswith("\n")
    assert out["off"] == ""
    with pytest.raises(ValueError, match="progress='loud'"):
        Progress("loud")


def test_a_run_under_the_old_stop_rule_is_not_resumed_under_the_new_one(tmp_path):
    from wsjax.experiments.common import record_config
    from wsjax.study.records import migrate_config

    new = record_config(TwoPhaseConfig(), "warm_start")
    old = {k: v for k, v in new.items() if k != "plateau_min_epochs"}  # plateau_window None
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "metrics.jsonl").write_text("")
    # Then, an MLP's unset window meant a 3-epoch plateau: resuming needs those flags.
    with pytest.raises(ValueError, match=r"\['plateau_min_epochs', 'plateau_window'\] differ"):
        RunDir(tmp_path).write_config(new, defaults=new, migrate=migrate_config)
    RunDir(tmp_path).write_config({**new, "plateau_window": 3, "plateau_min_epochs": 0},
                                  defaults=new, migrate=migrate_config)
