"""tokennorm's torch.library ops (``tokennorm::norm_fwd`` / ``norm_bwd``): schema, fake tensors and autograd
registration (opcheck), torch.compile tracing into them, and capture in CUDA graphs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import KERNEL_DEVICE

import tokennorm
import tokennorm.ops  # noqa: F401  (registers torch.ops.tokennorm.*, which opcheck calls directly)

pytestmark = pytest.mark.interpret  # every test here runs the Triton path


def test_opcheck_schema_fake_and_autograd_registration():
    # The aot-dispatch check traces through the kernel launch, which Triton's interpreter cannot do: it runs
    # only on a GPU.
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    if torch.cuda.is_available():
        utils = utils + ("test_aot_dispatch_dynamic",)
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(4, 16, generator=g).to(KERNEL_DEVICE) for _ in range(2))
    w, b = (torch.randn(16, generator=g).to(KERNEL_DEVICE) for _ in range(2))
    seed = torch.tensor([1234], device=KERNEL_DEVICE)
    cases = [
        (x, w, b, None, None, 1e-5, 0.0, 0.0, False, None),
        (x, w, None, None, None, 1e-5, 0.0, 0.0, True, None),
        (x, w, b, r, seed, 1e-5, 0.25, 0.0, False, torch.float32),
    ]
    for args in cases:
        torch.library.opcheck(torch.ops.tokennorm.norm_fwd.default, args, test_utils=utils)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch.library.opcheck(
        torch.ops.tokennorm.norm_fwd.default, (xg, wg, b, None, None, 1e-5, 0.0, 0.0, False, None), test_utils=utils
    )


def test_torch_compile_fullgraph_traces_the_triton_path(triton_backend):
    """Dynamo traces tokennorm's Triton path without a graph break (fullgraph=True raises on one). Inductor
    itself needs a GPU (next test): here the graph runs eagerly, kernels in the interpreter without a GPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 32), tokennorm.LayerNorm(32), torch.nn.GELU(), tokennorm.RMSNorm(32)
    ).to(KERNEL_DEVICE)
    x = torch.randn(4, 32, device=KERNEL_DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    y = compiled(x)
    torch.testing.assert_close(y, model(x))
    (dx,) = torch.autograd.grad(y.sum(), x)
    (dx_eager,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(dx, dx_eager)


@pytest.mark.gpu  # Inductor cannot trace the interpreter
def test_torch_compile_fullgraph_has_no_graph_break():
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), tokennorm.LayerNorm(64), torch.nn.GELU(), tokennorm.RMSNorm(64)
    ).cuda()
    x = torch.randn(8, 64, device="cuda", requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1024, 16384], ids=["whole-rows", "long-row-backward"])
def test_cuda_graph_captures_forward_and_backward(n):
    """No host synchronisation and no data-dependent allocation: a training step captures in a CUDA graph
    (make_graphed_callables raises on a sync during capture) and replays to the eager results."""
    torch.manual_seed(0)
    ln = tokennorm.LayerNorm(n).cuda()
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.1)
        ln.bias.normal_(0.0, 0.1)
    eager = copy.deepcopy(ln)
    x = torch.randn(8, n, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(ln, (x,))
    for step in range(2):  # two replays of the same captured step
        ln.weight.grad = ln.bias.grad = eager.weight.grad = eager.bias.grad = None
        xs = [(torch.randn(8, n, device="cuda") * (step + 1)).requires_grad_() for _ in range(2)]
        with torch.no_grad():
            xs[1].copy_(xs[0])
        dy = torch.randn(8, n, device="cuda")
        y = graphed(xs[0])
        y.backward(dy)
        y_ref = eager(xs[1])
        y_ref.backward(dy)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        torch.testing.assert_close(ln.weight.grad, eager.weight.grad)
        torch.testing.assert_close(ln.bias.grad, eager.bias.grad)


@pytest.mark.gpu
def test_cuda_graph_add_norm_dropout_draws_a_new_mask_each_replay():
    """The dropout seed comes from torch's CUDA RNG inside the graph: each replay draws a new mask."""
    torch.manual_seed(0)
    x = torch.randn(64, 1024, device="cuda")
    r = torch.zeros_like(x)
    w = torch.ones(1024, device="cuda")
    run = lambda: tokennorm.add_norm(x, r, w, None, norm="rmsnorm", dropout_p=0.5, prenorm=True)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile the kernels) outside the capture
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, h = run()
    masks = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        masks.append(h != 0)
        torch.testing.assert_close(h[masks[-1]], x[masks[-1]] / 0.5)  # h = r + dropout(x), exactly
    keep = masks[0].float().mean().item()
    assert 0.488 < keep < 0.512  # 65536 draws: 6 standard deviations either side
    assert not torch.equal(masks[0], masks[1])
