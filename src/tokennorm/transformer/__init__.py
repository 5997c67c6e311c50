"""Transformer blocks on tokennorm: embedding (×√d_model), sinusoidal positions, attention (SDPA),
feed-forward, encoder/decoder layers with post-LN or pre-LN Add & Norm, stacks, and a small causal LM.

Layers built with ``from_torch`` from torch.nn.TransformerEncoderLayer / TransformerDecoderLayer compute the
same outputs and gradients as torch's.
"""

from tokennorm.transformer.attention import MultiHeadAttention
from tokennorm.transformer.blocks import DecoderLayer, EncoderLayer
from tokennorm.transformer.embedding import SinusoidalPositionalEncoding, TokenEmbedding
from tokennorm.transformer.feedforward import FeedForward
from tokennorm.transformer.lm import CausalLM
from tokennorm.transformer.norms import NORM_TYPES, PLACEMENTS, SequenceBatchNorm
from tokennorm.transformer.stack import Decoder, Encoder

__all__ = [
    "TokenEmbedding",
    "SinusoidalPositionalEncoding",
    "MultiHeadAttention",
    "FeedForward",
    "EncoderLayer",
    "DecoderLayer",
    "Encoder",
    "Decoder",
    "CausalLM",
    "SequenceBatchNorm",
    "NORM_TYPES",
    "PLACEMENTS",
]
