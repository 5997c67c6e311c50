"""``tokennorm bench``: device time, host time and throughput of tokennorm against torch and the installed peers.

Modules: :mod:`~tokennorm.tools.bench.cases` (ops, byte formulas, sweeps), :mod:`~tokennorm.tools.bench.implementations`
(who is compared), :mod:`~tokennorm.tools.bench.timing` (the timing harness, also used by ``tokennorm tune``, the
block benchmark and the kernel tuning script), :mod:`~tokennorm.tools.bench.runner` (a sweep, checked and timed,
its numbers checked for plausibility), :mod:`~tokennorm.tools.bench.preflight` (outputs and memory, checked before
a run), :mod:`~tokennorm.tools.bench.report` (table, JSON, CSV, PNG, Markdown),
:mod:`~tokennorm.tools.bench.summary` (the short table of ``scripts/gpu_check.sh``) and
:mod:`~tokennorm.tools.bench.cli` (the command).
"""
