"""Finding a local Hugging Face model (a directory, or an installed package that ships one), loading it without
downloading anything, and the fixed batch of token ids it is probed with."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

_PACKAGE_PATH_ATTRIBUTES = ("get_model_path", "model_path", "MODEL_DIR", "MODEL_PATH")


def resolve_model_dir(target: str) -> Path:
    """The directory holding ``config.json`` for ``target``: a directory itself, or an installed package's."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{str(path)!r} has no config.json: not a Hugging Face model directory")
        return path
    module_name = target.replace("-", "_")
    if not module_name.isidentifier() or importlib.util.find_spec(module_name) is None:
        raise FileNotFoundError(f"MODEL {target!r} is neither a directory nor an installed package")
    module = importlib.import_module(module_name)
    for name in _PACKAGE_PATH_ATTRIBUTES:
        value = getattr(module, name, None)
        value = value() if callable(value) else value
        if value is not None and (Path(value) / "config.json").is_file():
            return Path(value)
    roots = [Path(p) for p in getattr(module, "__path__", [])]
    configs = sorted((c for root in roots for c in root.rglob("config.json")), key=lambda c: len(c.parts))
    if not configs:
        raise FileNotFoundError(f"package {target!r} ships no config.json: no model found in it")
    return configs[0].parent


def load_model(model_dir: Path, dtype, device):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True).to(device).eval()


def probe_inputs(model, tokens: int) -> dict:
    """A fixed batch of 2 random sequences of token ids (no tokenizer needed), on the model's device."""
    import torch

    config = model.config
    vocab = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    inputs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def output(model, inputs: dict):
    import torch

    with torch.no_grad():
        return model(**inputs)[0]
