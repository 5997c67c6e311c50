"""``tokennorm patch-check MODEL``: patch a local Hugging Face model with :func:`tokennorm.patch` and report the
difference. Modules: :mod:`~tokennorm.tools.patch_check.load` (find and load the model, its probe batch) and
:mod:`~tokennorm.tools.patch_check.cli` (the command)."""
