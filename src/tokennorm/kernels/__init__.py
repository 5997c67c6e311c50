"""tokennorm's Triton kernels: one kernel per algorithm, launched without torch autograd.

Map of this package (the layers above: :mod:`tokennorm.ops` registers the launches as ``torch.library`` ops,
:mod:`tokennorm.functional` checks arguments and picks the backend):

``helpers.py``
    The @triton.jit pieces every kernel is written from, each piece of arithmetic once: loading h = residual +
    dropout(x) (``load_h``), row statistics by the corrected two-pass (``row_stats``), segment moments and their
    merge by Chan's formula (``segment_moments``, ``merge_moments``), y = x̂ · (γ + offset) + β
    (``scale_shift``), the backward's tile, row sums and dx (``load_grad_tile``, ``grad_sums``, ``store_dx``),
    correctly rounded 1/N and 1/sqrt, and the explicit round-to-nearest-even casts the interpreter needs.
``rows.py``
    ``rows_forward_kernel`` / ``rows_backward_kernel``: the whole row in registers on a persistent grid, the
    next row tile prefetched, γ/β loaded once per program; the backward writes one float32 dγ/dβ partial row
    per program (summed afterwards: deterministic, no atomics). AdaLN's gate and modulation are switches of these
    and of the chunked, long-row and segment kernels (per-sample gradients as partial rows here).
``chunked.py``
    ``chunked_forward_kernel``: rows too long for registers walked twice by one program, the second pass served
    from L2 (``evict_last`` then ``evict_first``) while the rows in flight fit it.
``long_rows.py``
    ``long_rows_forward_kernel`` / ``long_rows_backward_kernel``: a row split over co-resident programs that
    exchange partial statistics (forward) or row sums (backward) through global memory — work taken from an
    atomic ticket counter, so no program waits on one that has not started; the deadlock argument is in the
    module docstring. Under the interpreter the same kernel runs as two launches (``EXCHANGE``).
``elementwise.py``
    ``dyt_forward_kernel`` / ``dyt_backward_kernel``: Dynamic Tanh (and Add & DyT), no statistics — [rows, column
    block] tiles on a grid-stride loop, γ/β loaded once per program, dα/dγ/dβ as per-program partials.
``channels_first.py``
    ``channels_first_forward_kernel`` / ``channels_first_backward_kernel``: LayerNorm over dim 1 of [B, C, S],
    tiles of consecutive tokens × all channels (coalesced along the spatial dim), reduced over the channels.
``segment.py``
    ``segment_forward_kernel`` / ``segment_backward_kernel``: one pass over a column segment with the row
    statistics or sums reduced elsewhere — the local part of the tensor-parallel norms, and the backward of rows
    beyond the long-row capacity.
``config.py``
    Modes and tiles as data (``KernelConfig``), chosen per row length by ``forward_config`` /
    ``backward_config`` from the device's SM count and L2 size (``device_facts``), each threshold with its
    reason.
``plan.py``
    ``ForwardPlan`` / ``BackwardPlan``: every decision about a call that does not depend on its data (mode,
    tile, ε and its float32 remainder, dtypes, which inputs and outputs exist, the compile-time switches, and
    the mode's kernel with those switches bound), built once per distinct call and cached.
``launch.py``
    Allocate outputs and launch a plan: ``norm_forward`` / ``norm_backward`` (and ``run_forward`` /
    ``run_backward`` taking a plan), ``ada_norm_backward``, ``dyt_forward`` / ``dyt_backward``,
    ``channels_first_forward`` / ``channels_first_backward``, and the tensor-parallel pieces (``segment_moments``,
    ``segment_apply``, ``segment_sums``, ``segment_dx``).
``launcher.py``
    The cached launcher every kernel is called through: low host cost in eager mode, ``wrap_triton`` while
    ``torch.compile`` traces.

Development tools about these kernels live in :mod:`tokennorm.tools.kernel_report` (what each launch compiles
to, ``compile_check``: every mode built for sm_90 without a GPU, ``traffic``: the HBM bytes each plan moves).

Under ``TRITON_INTERPRET=1`` (set before import) the kernels run on CPU tensors in Triton's interpreter; the
tests use that on machines without a GPU.
"""
