"""``tokennorm bench``: throughput and per-call latency of tokennorm against torch and the installed peers.

Modules: :mod:`~tokennorm.bench.cases` (ops, byte formulas, sweeps), :mod:`~tokennorm.bench.implementations`
(who is compared), :mod:`~tokennorm.bench.timing` (how time is measured), :mod:`~tokennorm.bench.runner`
(a sweep, checked and timed), :mod:`~tokennorm.bench.report` (table, JSON, CSV, PNG) and
:mod:`~tokennorm.bench.cli` (the command).
"""
