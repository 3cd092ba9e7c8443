"""Judging a vocoder: :mod:`~melvoc.evaluation.scoring` scores sets of vocoded audio (folders, or
copy-synthesis by checkpoints) against references with :mod:`melvoc.metrics`;
:mod:`~melvoc.evaluation.report` writes the table, the JSON and the HTML A/B report. The command is
``python -m melvoc.evaluate``."""
