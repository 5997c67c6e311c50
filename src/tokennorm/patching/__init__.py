"""``tokennorm.patch(model)``: swap a model's LayerNorm / RMSNorm modules for tokennorm's, proven equal on a probe
first.

A module is a *candidate* when it is a ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, its class name contains
"Norm" (Hugging Face defines one such class per model family), or it is a leaf with an ε attribute. The name
only nominates: a candidate is swapped only when a numerical probe shows that it computes one of:

* ``layernorm``: ``(x − mean) / sqrt(var + ε) · w + b`` (torch, BERT, OLMo, …);
* ``rmsnorm``: ``x / sqrt(mean(x²) + ε) · w`` (torch, Llama, Mistral, Qwen, T5's RMS "LayerNorm", …);
* ``rmsnorm`` with a zero-centred weight, ``… · (1 + w)`` (Gemma, Qwen3-Next), and ``layernorm`` with one
  (Nemotron's ``LayerNorm1P``).

The probe runs on a float64 copy of the module whose parameters are replaced by random values (the module's
own values never matter, and a model on the meta device is probed the same way), with ε read from the
module's attributes (``eps``, ``variance_epsilon``, …), on inputs at unit scale and at ``sqrt(ε)`` scale (where
a wrong ε shows), in train and eval mode, against :mod:`tokennorm.reference`. A second probe runs the
original and the tokennorm replacement with float32, bfloat16 and float16 parameters (and the module's own
dtype) on inputs of each of those dtypes, and requires the same output dtype and values within rounding.
Norms differ in their output dtype when parameters and input differ: torch and Gemma return the input's
dtype, Llama ``promote_types(weight, input)`` (it multiplies the float32 weight by the normalized input cast
back), T5 the weight's; the replacement follows the same rule (``dtype_rule`` in the report), and casts its
parameters to float32 first where the original takes a mix torch's norms refuse (``cast_parameters``: Cohere's
bfloat16 weight with a float32 input). A module without an ε attribute is probed with the usual values
(``UNSTATED_EPS``; OLMo fixes 1e-5 in its code); one with neither parameters nor ``normalized_shape`` is probed at
two widths and replaced by :class:`PatchedLastDimNorm`, which normalizes the last dim of any width. Anything else —
a module with buffers, extra parameters, hooks, an instance-level ``forward``, a ``forward`` taking more than
the input, or a computation that differs — is left alone and reported.

Replacements share the original ``Parameter`` objects (state_dict keys and optimizers stay valid) and take
over the train/eval mode; the patch installs no hooks. A module reachable under several paths is replaced
once, so sharing is preserved. Each replacement remembers its original, so :func:`unpatch` restores it.

Beyond these leaves, :mod:`~tokennorm.patching.extended` recognizes diffusers' ``AdaLayerNormZero`` /
``AdaLayerNormContinuous`` (replaced by modules with the same submodules and outputs that fuse the norm and the
modulation with :func:`tokennorm.ada_norm`) and channels-first LayerNorms over dim 1 of ``[B, C, *]`` (timm's
``LayerNorm2d``, ConvNeXt's; replaced by :class:`tokennorm.ChannelsFirstLayerNorm`), proven the same way.

Modules: :mod:`~tokennorm.patching.recognize` (which modules compute a norm tokennorm has),
:mod:`~tokennorm.patching.replacements` (the tokennorm modules put in their place),
:mod:`~tokennorm.patching.swap` (``patch``, ``unpatch``, ``patch_report``) and :mod:`~tokennorm.patching.report`.
"""

from tokennorm.patching.extended import PatchedAdaLayerNormContinuous, PatchedAdaLayerNormZero
from tokennorm.patching.replacements import (
    DTYPE_RULES,
    PatchedLastDimNorm,
    PatchedLayerNorm,
    PatchedOffsetNorm,
    PatchedRMSNorm,
)
from tokennorm.patching.report import Left, PatchReport, Replaced
from tokennorm.patching.swap import NORMS, patch, patch_report, unpatch

__all__ = [
    "NORMS",
    "DTYPE_RULES",
    "Replaced",
    "Left",
    "PatchReport",
    "PatchedLayerNorm",
    "PatchedRMSNorm",
    "PatchedOffsetNorm",
    "PatchedLastDimNorm",
    "PatchedAdaLayerNormZero",
    "PatchedAdaLayerNormContinuous",
    "patch",
    "unpatch",
    "patch_report",
]
