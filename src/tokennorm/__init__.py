"""tokennorm: per-token LayerNorm, RMSNorm and fused Add & Norm for Transformers.

Exact drop-ins for ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` and ``F.layer_norm`` / ``F.rms_norm``, with
Triton kernels on CUDA tensors (``TOKENNORM_BACKEND`` chooses: auto, torch, triton).
"""

from tokennorm import ops as _ops  # noqa: F401  (registers the torch.library ops)
from tokennorm.functional import add_norm, layer_norm, rms_norm
from tokennorm.modules import AddNorm, LayerNorm, RMSNorm
from tokennorm.patching import patch, patch_report, unpatch

__version__ = "0.1.0"

__all__ = [
    "LayerNorm", "RMSNorm", "AddNorm", "layer_norm", "rms_norm", "add_norm", "patch", "unpatch", "patch_report",
    "__version__",
]
