"""tokennorm's Triton kernels: one forward and one backward kernel family, launched without torch autograd.

Map of this package (the layers above: :mod:`tokennorm.ops` registers the launches as ``torch.library`` ops,
:mod:`tokennorm.functional` checks arguments and picks the backend):

``norm_fwd.py``
    ``norm_fwd_kernel``: (residual +) (dropout) → LayerNorm | RMSNorm → (· (γ + offset)) (+ β), with the
    row helpers the backward shares (``row_sums``, ``row_mean``, ``dropout_keep``). Compile-time switches:
    ``IS_RMS``, ``HAS_WEIGHT``, ``HAS_BIAS``, ``HAS_RESIDUAL``, ``HAS_DROPOUT``, ``STORE_H``, ``STORE_STATS``,
    ``PERSISTENT``, ``LOOP_STAGES``, ``SINGLE_CHUNK``, ``FUSED_SUMS`` and the ``STATS`` mode:
    ``STATS_COMPUTE`` (the usual case), ``STATS_MOMENTS`` / ``STATS_MERGE`` (split rows: each segment's moments,
    then every segment merges its row's moments and normalizes), ``STATS_GIVEN`` (statistics merged elsewhere,
    e.g. across tensor-parallel ranks).
``norm_bwd.py``
    ``norm_bwd_kernel``: dx (and the residual's gradient) plus float32 dγ/dβ partial rows, one per program.
    Switches: ``IS_RMS``, ``HAS_WEIGHT``, ``COMPUTE_DW``, ``COMPUTE_DB``, ``HAS_DH_IN``, ``HAS_DROPOUT``,
    ``STORE_DRES``, ``LOOP_STAGES``, ``SINGLE_CHUNK``, ``FUSED_SUMS`` and the ``DOTS`` mode: ``DOTS_COMPUTE``,
    ``DOTS_SUMS`` / ``DOTS_SEGMENTS`` (split rows), ``DOTS_GIVEN`` (row means reduced elsewhere).
``config.py``
    Launch configurations as data: ``TileConfig`` (a frozen dataclass) chosen per row length by
    ``forward_config`` / ``backward_config``; the thresholds (whole-row tile up to 32K elements forward and 8K
    backward, chunk widths, programs per SM, ``row_groups``, ``segment_width``) and why, cached per row length.
``launch.py``
    Allocate outputs, pick the config, launch: ``norm_forward``, ``norm_backward`` and the pieces of the
    split-row and tensor-parallel paths (``norm_moments``, ``norm_apply``, ``norm_backward_sums``). Paired row
    sums are one fused reduction on GPU builds and two ``tl.sum`` under the interpreter (``FUSED_SUMS``).
``compile_check.py``
    ``python -m tokennorm.kernels.compile_check``: build every kernel mode for sm_90 without a GPU (Triton's
    compiler and ptxas); ``--configs`` reports registers, spills and programs per SM. A development tool.
``traffic.py``
    ``python -m tokennorm.kernels.traffic RUN.json``: the HBM bytes a launch plan moves, next to the fewest the
    op needs, applied to a ``benchmarks/tune_kernels.py`` run. A development tool.

Under ``TRITON_INTERPRET=1`` (set before import) the kernels run on CPU tensors in Triton's interpreter; the
tests use that on machines without a GPU.
"""
