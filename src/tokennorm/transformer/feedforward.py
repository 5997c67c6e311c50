"""Position-wise feed-forward sublayer: ``linear2(dropout(activation(linear1(x))))``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeedForward", "ACTIVATIONS"]

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    r"""The Transformer's position-wise feed-forward network, applied to each token independently.

    .. math:: \mathrm{FFN}(x) = W_2\, \mathrm{dropout}(\mathrm{act}(W_1 x + b_1)) + b_2

    Args:
        d_model: input and output width.
        dim_feedforward: hidden width.
        dropout: dropout after the activation (training only), as in torch's Transformer layers. Default: 0.0.
        activation: ``"relu"`` or ``"gelu"`` (exact erf form, torch's default). Default: ``"relu"``.
        bias: learn ``b_1`` and ``b_2``. Default: True.
        device, dtype: of the parameters. Default: torch's defaults.

    Shape:
        - Input: ``[*, d_model]``; Output: ``[*, d_model]`` in the parameters' dtype.

    Example::

        >>> ff = FeedForward(64, 256, activation="gelu")
        >>> ff(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: str = "relu",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'gelu', but got activation={activation!r}")
        self.activation = activation
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(ACTIVATIONS[self.activation](self.linear1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
