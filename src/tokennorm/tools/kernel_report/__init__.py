"""What each default launch of tokennorm's public API compiles to on sm_90, without a GPU.

Modules: :mod:`.fakecuda` (a fake Triton CUDA driver: real launches on CPU tensors, compiled for sm_90 and
stopped at the launch), :mod:`.hopper` (the modelled GPU), :mod:`.cubin` (Triton's bundled CUDA binary
utilities).
"""
