"""The model under test, seen as x [B, N, C] -> y [B, N, F]: inputs or token embeddings, fresh values for
perturbation, the output picked out of whatever the model returns, and the model's mode and RNG kept as found."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn


@dataclass
class Subject:
    """What the audit differentiates and perturbs: x, the model as a function of x, and fresh values for x."""

    x: Tensor  # [B, N, C]: the input, or the token embeddings
    run: Callable[..., Any]  # (x, **extra keyword arguments) -> raw model output (key-padding mask bound)
    fresh: Callable[[Tensor], Tensor]  # where [B, N] bool -> x with new values at those positions


@dataclass
class Condition:
    """A per-item conditioning input (AdaLN's c, a class id per sequence), seen as a floating c [B, ...].

    ``value`` is what the model is given as the keyword ``arg``: c itself when floating, else integer ids whose
    embedding (the output of ``embedding``, an ``nn.Embedding`` the model applies to them) is c; the audit swaps
    that output for its own c by a forward hook, as for token ids.
    """

    arg: str
    value: Tensor  # [B, ...]: floating c, or integer ids
    c: Tensor  # [B, ...]: the floating condition the audit differentiates and perturbs
    embedding: Optional[nn.Embedding]
    fresh: Callable[[int], Tensor]  # item j -> c with item j's condition replaced by another

    @contextlib.contextmanager
    def given(self, c: Tensor) -> Iterator[dict[str, Tensor]]:
        """The keyword arguments that make the model see ``c`` as its condition (a hook while inside)."""
        if self.embedding is None:
            yield {self.arg: c}
            return
        handle = self.embedding.register_forward_hook(lambda module, args, out: c)
        try:
            yield {self.arg: self.value}
        finally:
            handle.remove()


def make_condition(
    model: nn.Module, arg: str, value: Tensor, run: Callable[[dict[str, Any]], Any], generator: torch.Generator
) -> Condition:
    """``value`` [B, ...] as a :class:`Condition`; ``run(kwargs)`` runs the model once with those keyword
    arguments (the probe pass that finds the embedding of integer ids)."""
    if value.is_floating_point():
        c = value.detach()
        scale = c.std() if c.numel() > 1 else c.new_tensor(1.0)

        def fresh_values(j: int) -> Tensor:
            new = c.clone()
            new[j] = torch.randn(c[j].shape, generator=generator, dtype=c.dtype).to(c.device) * scale
            return new

        return Condition(arg, value, c, None, fresh_values)
    found: list[tuple[nn.Embedding, Tensor]] = []

    def record(module: nn.Module, args: tuple, out: Any) -> None:
        if args and args[0] is value and isinstance(out, Tensor):
            found.append((module, out.detach()))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        with torch.no_grad():
            run({arg: value})
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise TypeError(
            f"the integer condition {arg}= needs a model that looks it up in an nn.Embedding; none was applied to it"
        )
    embedding, c = found[0]
    n = embedding.num_embeddings

    def other_embedding(j: int) -> Tensor:
        shift = 1 + int(torch.randint(0, max(1, n - 1), (), generator=generator))  # another id (when n ≥ 2)
        new = c.clone()
        with torch.no_grad():
            new[j] = embedding((value[j] + shift) % n)
        return new

    return Condition(arg, value, c, embedding, other_embedding)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Same RNG stream for every forward pass (same dropout masks); the caller's RNG state is left untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def in_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """``model.train(train)`` with frozen parameters (no weight gradients are built, only input ones).

    Afterwards every module's flag, every parameter's requires_grad and every buffer (BatchNorm's running
    statistics, which train-mode passes update) are as before.
    """
    flags = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train)
    for p, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, flag in flags:
            m.training = flag
        for p, flag in params:
            p.requires_grad_(flag)


def vocab_size(model: nn.Module) -> int:
    """``model.vocab_size``, else the size of its first nn.Embedding; TypeError when it has neither."""
    size = getattr(model, "vocab_size", None)
    if isinstance(size, int):
        return size
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise TypeError("token-id input needs a model with an int vocab_size attribute or an nn.Embedding")
    return emb.num_embeddings


def _token_embedding(model: nn.Module, tokens: Tensor, kwargs: dict[str, Any]) -> nn.Embedding:
    """The first nn.Embedding whose output is [B, N, C] for ``tokens`` [B, N] (found by one probe pass)."""
    found: list[nn.Embedding] = []

    def record(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 3 and out.shape[:2] == tokens.shape:
            found.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        with torch.no_grad():
            model(tokens, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise TypeError(
            f"token-id input of shape {list(tokens.shape)} needs a model with embed()/forward_embeddings() or an "
            "nn.Embedding that maps the ids to [B, N, C]; none found"
        )
    return found[0]


def make_subject(
    model: nn.Module, inputs: Tensor, kwargs: dict[str, Any], seed: int, generator: torch.Generator
) -> Subject:
    """``inputs`` as x: a floating input itself, or the embeddings of token ids (``model.embed`` when the model
    has ``embed`` / ``forward_embeddings``, else the output of the nn.Embedding that maps the ids)."""
    device = inputs.device
    if inputs.is_floating_point():
        x = inputs.detach()
        scale = x.std() if x.numel() > 1 else x.new_tensor(1.0)

        def fresh_values(where: Tensor) -> Tensor:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(device) * scale
            return torch.where(where[..., None], noise, x)

        return Subject(x, lambda z, **extra: model(z, **{**kwargs, **extra}), fresh_values)

    vocab = vocab_size(model)

    def other_ids(where: Tensor) -> Tensor:
        ids = torch.randint(0, vocab, inputs.shape, generator=generator).to(device)
        ids = torch.where(ids == inputs, (ids + 1) % vocab, ids)  # really another token
        return torch.where(where, ids, inputs)

    if hasattr(model, "embed") and hasattr(model, "forward_embeddings"):

        def embed(ids: Tensor) -> Tensor:
            with torch.no_grad(), seeded(seed, device):
                return model.embed(ids)

        return Subject(
            embed(inputs),
            lambda z, **extra: model.forward_embeddings(z, **{**kwargs, **extra}),
            lambda where: torch.where(where[..., None], embed(other_ids(where)), embed(inputs)),
        )

    emb = _token_embedding(model, inputs, kwargs)
    with torch.no_grad(), seeded(seed, device):
        x = emb(inputs)

    def run(z: Tensor, **extra: Any) -> Any:
        handle = emb.register_forward_hook(lambda module, args, out: z)  # the model sees z as its embeddings
        try:
            return model(inputs, **{**kwargs, **extra})
        finally:
            handle.remove()

    def fresh_embeddings(where: Tensor) -> Tensor:
        with torch.no_grad(), seeded(seed, device):
            return torch.where(where[..., None], emb(other_ids(where)), x)

    return Subject(x, run, fresh_embeddings)


def as_output(out: Any, batch: int, length: int, output_fn: Optional[Callable[[Any], Tensor]]) -> Tensor:
    """The model's output as [B, N, F]: ``output_fn(out)``, else out, out[0] or out.logits."""
    if output_fn is not None:
        out = output_fn(out)
    elif isinstance(out, (tuple, list)):
        out = out[0]
    elif not isinstance(out, Tensor) and hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, Tensor) or out.dim() < 2 or tuple(out.shape[:2]) != (batch, length):
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"expected the model output to be [B, N, ...] = [{batch}, {length}, ...], but got {got}")
    return out.reshape(batch, length, -1)
