"""tokennorm: per-token LayerNorm, RMSNorm and fused Add & Norm for Transformers; adaptive (AdaLN-Zero), dynamic
(DyT) and channels-first LayerNorm.

Exact drop-ins for ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` and ``F.layer_norm`` / ``F.rms_norm``, with
Triton kernels on CUDA tensors (the backend: auto, torch or triton; ``TOKENNORM_BACKEND`` at start-up,
``set_backend`` / ``using_backend`` at run time).

The names below are imported on first use: ``import tokennorm`` alone loads neither torch nor the patch tool,
so the ``tokennorm`` command starts fast.
"""

from typing import TYPE_CHECKING

from tokennorm._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tokennorm.adaptive import AdaLNZero, Modulation, ada_norm
    from tokennorm.backend import get_backend, set_backend, using_backend
    from tokennorm.channels_first import ChannelsFirstLayerNorm, channels_first_layer_norm
    from tokennorm.dynamic_tanh import AddDyT, DyT, add_dyt, dyt
    from tokennorm.functional import add_norm, layer_norm, rms_norm
    from tokennorm.modules import AddNorm, LayerNorm, RMSNorm
    from tokennorm.patching import patch, patch_report, unpatch

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "AddNorm",
    "layer_norm",
    "rms_norm",
    "add_norm",
    "patch",
    "unpatch",
    "patch_report",
    "ada_norm",
    "AdaLNZero",
    "Modulation",
    "dyt",
    "add_dyt",
    "DyT",
    "AddDyT",
    "channels_first_layer_norm",
    "ChannelsFirstLayerNorm",
    "get_backend",
    "set_backend",
    "using_backend",
    "__version__",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("LayerNorm", "RMSNorm", "AddNorm"), "tokennorm.modules"),
        **dict.fromkeys(("layer_norm", "rms_norm", "add_norm"), "tokennorm.functional"),
        **dict.fromkeys(("patch", "unpatch", "patch_report"), "tokennorm.patching"),
        **dict.fromkeys(("ada_norm", "AdaLNZero", "Modulation"), "tokennorm.adaptive"),
        **dict.fromkeys(("dyt", "add_dyt", "DyT", "AddDyT"), "tokennorm.dynamic_tanh"),
        **dict.fromkeys(("channels_first_layer_norm", "ChannelsFirstLayerNorm"), "tokennorm.channels_first"),
        **dict.fromkeys(("get_backend", "set_backend", "using_backend"), "tokennorm.backend"),
    },
)
