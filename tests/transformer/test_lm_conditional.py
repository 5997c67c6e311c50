"""CausalLM(num_classes=...): a class-conditional decoder (class embedding → AdaLN-Zero blocks), per sequence."""

import pytest
import torch
import torch.nn.functional as F

from tokennorm.transformer import CausalLM

V, D, N = 11, 16, 6


def _model(num_classes=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return CausalLM(V, d_model=D, nhead=2, num_layers=2, dropout=0.0, num_classes=num_classes, **kwargs).eval()


def _randomize_adaln(model, std=0.3):
    """AdaLN-Zero projections as after training (at their zero init the blocks ignore the condition)."""
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.adaln.linear.weight.normal_(0.0, std)
            layer.adaln.linear.bias.normal_(0.0, std)
    return model


def _tokens(batch=3, seed=1):
    return torch.randint(0, V, (batch, N), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_the_embedding_split():
    model = _randomize_adaln(_model())
    tokens, classes = _tokens(), torch.tensor([0, 2, 1])
    logits = model(tokens, classes=classes)
    assert logits.shape == (3, N, V) and logits.dtype == torch.float32
    assert model.class_embedding.weight.shape == (3, D)
    torch.testing.assert_close(model.forward_embeddings(model.embed(tokens), classes=classes), logits, rtol=0, atol=0)


def test_at_zero_init_every_block_is_the_identity_and_the_class_is_ignored():
    # AdaLN-Zero: shift = scale = gate = 0, so each block returns its input; logits = head(norm(positions(embed)))
    model = _model()
    tokens = _tokens()
    want = model.lm_head(model.decoder.norm(model.positions(model.embed(tokens))))
    for classes in (torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])):
        torch.testing.assert_close(model(tokens, classes=classes), want, rtol=1e-6, atol=1e-6)


def test_unconditioned_weights_are_kept_for_the_same_seed():
    plain, conditioned = _model(None), _model(3)
    ours = dict(conditioned.named_parameters())
    shared = [n for n, _ in plain.named_parameters() if n in ours and not n.startswith("lm_head")]
    assert "token_embedding.weight" in shared and "decoder.layers.1.ff.linear2.weight" in shared
    for name, p in plain.named_parameters():
        if name in shared:
            assert torch.equal(p, ours[name]), name


def test_each_item_sees_its_own_class_only():
    model = _randomize_adaln(_model())
    tokens = _tokens()
    logits = model(tokens, classes=torch.tensor([0, 1, 2]))
    # item 0 alone with its class: the same logits (no dependence on the other items or their classes)
    alone = model(tokens[:1], classes=torch.tensor([0]))
    torch.testing.assert_close(alone, logits[:1], rtol=1e-5, atol=1e-6)
    # another class for item 1 moves item 1, and nothing else
    moved = model(tokens, classes=torch.tensor([0, 2, 2]))
    assert torch.equal(moved[0], logits[0]) and torch.equal(moved[2], logits[2])
    assert (moved[1] - logits[1]).abs().max() > 1e-2


def test_gradients_reach_the_class_embedding_of_the_classes_used():
    model = _model().train()
    tokens, targets, classes = _tokens(), _tokens(seed=2), torch.tensor([0, 2, 0])

    def step():
        model.zero_grad()
        F.cross_entropy(model(tokens, classes=classes).flatten(0, 1), targets.flatten()).backward()

    step()
    # at zero init the projection is 0: the class embedding gets exactly no gradient, the projection does
    assert torch.count_nonzero(model.class_embedding.weight.grad) == 0
    assert model.decoder.layers[0].adaln.linear.weight.grad.abs().max() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    step()
    grad = model.class_embedding.weight.grad
    assert grad[0].abs().max() > 0 and grad[2].abs().max() > 0
    assert torch.count_nonzero(grad[1]) == 0  # class 1 was not in the batch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "placement": "post"}, "placement='pre'"),
        ({"num_classes": 3, "norm": "dyt"}, "norm"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalLM(V, d_model=D, nhead=2, num_layers=1, **kwargs)


def test_bad_classes():
    model, plain, tokens = _model(), _model(None), _tokens()
    with pytest.raises(ValueError, match="classes is required"):
        model(tokens)
    with pytest.raises(ValueError, match="classes needs a CausalLM built with num_classes"):
        plain(tokens, classes=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"classes must be an int64 tensor of shape \[batch\] = \[3\]"):
        model(tokens, classes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="int64"):
        model(tokens, classes=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(IndexError):  # nn.Embedding's own error for an id out of range, as torch raises it
        model(tokens, classes=torch.tensor([0, 1, 3]))
