"""``tokennorm tune``: measure, on this machine's GPU, whether tokennorm's kernels or torch's are faster for each
op, direction, dtype and row length, and write the table that the ``auto`` backend then follows
(:mod:`tokennorm.dispatch`).

Modules: :mod:`~tokennorm.tools.tune.measure` (the grid, the measurement with the benchmark's harness, the
decision rule) and :mod:`~tokennorm.tools.tune.cli` (the command, and ``--show``).
"""
