"""The study of Ash & Adams: its protocols and everything around a run.

- ``stages``: named, checkpointed, resumable trainings of every seed (``Stages``), keys per
  stage and use (``KeyUse``), the study's data on the devices (``StudyData``);
- ``protocols``: the two-phase protocol (over any trainer) and the online protocol;
- ``probes``: BatchNorm mismatch; ``stats``: means and paired differences over seeds;
- ``records``: the typed results schema (``Run``, ``StageResult``, ``SeedRow``...), JSON in
  and out; ``runlog``: the run directory, metric writer and progress display;
- ``plots``: figures from saved records (matplotlib, imported lazily).
"""
