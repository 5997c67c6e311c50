"""What each default launch of tokennorm's public API compiles to on sm_90, without a GPU.

``python -m tokennorm.tools.kernel_report --help`` (:mod:`.cli`). Modules, each layer using only those above it:

* :mod:`.hopper`: the modelled GPU (Hopper limits per SM, H100/H200 clocks and bandwidths, the issue-rate model);
* :mod:`.cubin`: Triton's bundled CUDA binary utilities (resources, SASS);
* :mod:`.fakecuda`: a fake Triton CUDA driver -- real launches on CPU tensors, compiled for sm_90, stopped at
  the launcher and recorded;
* :mod:`.analysis`: the metrics of one compiled kernel;
* :mod:`.host_time`: host µs per call with launches stubbed (for the host-overhead benchmark);
* :mod:`.cases`: the public calls the report makes, tokennorm's and Liger's;
* :mod:`.report`: rows, and the rich / JSON / markdown renderings.
"""
