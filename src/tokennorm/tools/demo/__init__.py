"""``tokennorm demo``: a tiny character-level causal LM trained on *King Lear* once per norm and placement.

Modules: :mod:`~tokennorm.tools.demo.data` (the corpus as tokens, random windows),
:mod:`~tokennorm.tools.demo.train` (one configuration trained and evaluated), :mod:`~tokennorm.tools.demo.report`
(loss curves, table) and :mod:`~tokennorm.tools.demo.cli` (the command).
"""
