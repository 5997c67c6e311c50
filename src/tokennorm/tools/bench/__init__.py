"""``tokennorm bench``: throughput and per-call latency of tokennorm against torch and the installed peers.

Modules: :mod:`~tokennorm.tools.bench.cases` (ops, byte formulas, sweeps), :mod:`~tokennorm.tools.bench.implementations`
(who is compared), :mod:`~tokennorm.tools.bench.timing` (how time is measured), :mod:`~tokennorm.tools.bench.runner`
(a sweep, checked and timed), :mod:`~tokennorm.tools.bench.report` (table, JSON, CSV, PNG) and
:mod:`~tokennorm.tools.bench.cli` (the command).
"""
