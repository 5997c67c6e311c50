"""Measured dispatch (tokennorm.dispatch): table format and lookup, which table a GPU uses, the per-call cache, and
the functional API following the decision — on the CPU, with made-up GPUs and tables."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import KERNEL_DEVICE

from tokennorm import backend, dispatch, functional

H200 = dispatch.DeviceIdentity("NVIDIA H200", (9, 0))
H100 = dispatch.DeviceIdentity("NVIDIA H100 80GB HBM3", (9, 0))
A100 = dispatch.DeviceIdentity("NVIDIA A100-SXM4-80GB", (8, 0))


def entry(n, use, op="layer_norm", direction="inference", dtype="bf16"):
    return {"op": op, "direction": direction, "dtype": dtype, "n": n, "use": use}


def document(identity=H200, entries=(), match="name"):
    return dispatch.table_document(identity, {"date": "2026-12-01", "command": "test"}, list(entries), match)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty cache folder, a shipped file of our own, device 0 an H200, and no decisions carried over."""
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "cache"))
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"format": 1, "provenance": {}, "tables": []}))
    monkeypatch.setattr(dispatch, "SHIPPED", shipped)
    monkeypatch.setattr(dispatch, "device_identity", lambda index: {0: H200, 1: A100}[index])
    dispatch.reload()
    with backend.using_backend("auto"):
        yield shipped
    dispatch.reload()


def ship(shipped, *docs):
    shipped.write_text(json.dumps({"format": 1, "provenance": {}, "tables": list(docs)}))


def write_user_table(doc, identity=H200):
    path = dispatch.cache_path(identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("n", "b"), [(1, 0), (2, 1), (3, 2), (768, 10), (1024, 10), (1025, 11), (2**20, 20)])
def test_row_lengths_fall_in_the_bucket_of_the_next_power_of_two(n, b):
    assert dispatch.bucket(n) == b


def test_a_table_answers_its_buckets_and_the_nearest_measured_one():
    table = dispatch.parse_table(
        document(entries=[entry(1024, "torch"), entry(16384, "tokennorm"), entry(4096, "torch", direction="training")]),
        "t",
    )
    assert table.choice("layer_norm", "inference", "bf16", 1024) == "torch"
    assert table.choice("layer_norm", "inference", "bf16", 768) == "torch"  # same bucket
    assert table.choice("layer_norm", "inference", "bf16", 64) == "torch"  # below the grid: the nearest
    assert table.choice("layer_norm", "inference", "bf16", 2**20) == "tokennorm"  # above: the nearest
    assert table.choice("layer_norm", "inference", "bf16", 4096) == "torch"  # 1K and 16K equally near: shorter
    assert table.choice("layer_norm", "training", "bf16", 1024) == "torch"
    assert table.choice("layer_norm", "inference", "fp16", 1024) is None  # not measured: no answer
    assert table.choice("rms_norm", "inference", "bf16", 1024) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format=2), "format 2"),
        (lambda d: d.update(device={"capability": [9, 0]}), "device.name"),
        (lambda d: d["device"].update(capability="sm_90"), "capability"),
        (lambda d: d.update(match="vendor"), "match 'vendor'"),
        (lambda d: d.pop("provenance"), "provenance"),
        (lambda d: d["entries"].append(entry(1024, "liger")), "entries[0].use 'liger'"),
        (lambda d: d["entries"].append(entry(1024, "torch", op="batch_norm")), "entries[0].op 'batch_norm'"),
        (lambda d: d["entries"].append(entry(0, "torch")), "entries[0].n"),
        (lambda d: d["entries"].append(entry(1024, "torch", dtype="int8")), "entries[0].dtype"),
    ],
)
def test_malformed_tables_are_refused_with_the_reason(change, message):
    doc = document()
    change(doc)
    with pytest.raises(ValueError, match=r"^where: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        dispatch.parse_table(doc, "where")


def test_the_shipped_file_is_valid_empty_and_says_why():
    from pathlib import Path

    real = Path(dispatch.__file__).parent / "data" / "dispatch.json"
    doc = json.loads(real.read_text())
    assert doc["format"] == dispatch.FORMAT and doc["tables"] == []
    assert "host-polluted" in doc["provenance"]["why"] and doc["provenance"]["date"]


def test_the_users_table_comes_first_then_shipped_by_name_then_by_capability(isolated):
    assert dispatch.table_for(H200) is None
    ship(isolated, document(H100, [entry(1024, "torch")], match="capability"))
    assert dispatch.table_for(H200).device == H100  # same sm_90
    assert dispatch.table_for(A100) is None
    ship(isolated, document(H100, [entry(1024, "torch")], match="capability"), document(H200, [entry(1024, "torch")]))
    assert dispatch.table_for(H200).device == H200  # its own name before its capability
    path = write_user_table(document(H200, [entry(1024, "tokennorm")]))
    table = dispatch.table_for(H200)
    assert table.source == str(path) and table.choice("layer_norm", "inference", "bf16", 1024) == "tokennorm"


def test_an_unreadable_user_table_is_skipped_with_a_warning(isolated):
    path = write_user_table(document(H200))
    path.write_text("{not json")
    ship(isolated, document(H200, [entry(1024, "torch")]))
    with pytest.warns(RuntimeWarning, match="ignoring the dispatch table"):
        table = dispatch.table_for(H200)
    assert table.source.startswith("shipped")


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(dispatch.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dispatch.cache_dir() == tmp_path / "xdg" / "tokennorm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dispatch.cache_dir() == tmp_path / "home" / ".cache" / "tokennorm"
    assert dispatch.cache_path(H100).name == "dispatch-nvidia-h100-80gb-hbm3.json"


def test_decisions_follow_the_table_and_unknown_gpus_run_ours(isolated):
    write_user_table(document(H200, [entry(4096, "torch"), entry(4096, "tokennorm", direction="training")]))
    assert dispatch.choice(0, "layer_norm", torch.bfloat16, 4096, training=False) == "torch"
    assert dispatch.choice(0, "layer_norm", torch.bfloat16, 3000, training=False) == "torch"
    assert dispatch.choice(0, "layer_norm", torch.bfloat16, 4096, training=True) == "tokennorm"
    assert dispatch.choice(0, "layer_norm", torch.float16, 4096, training=False) == "tokennorm"  # not measured
    assert dispatch.choice(0, "rms_norm", torch.bfloat16, 4096, training=False) == "tokennorm"
    assert dispatch.choice(1, "layer_norm", torch.bfloat16, 4096, training=False) == "tokennorm"  # no table


def test_the_cache_holds_one_decision_per_bucket_whatever_the_calls(isolated):
    write_user_table(document(H200, [entry(4096, "torch")]))
    for n in range(2049, 2049 + 5000):  # 5,000 row lengths: two buckets
        dispatch.choice(0, "layer_norm", torch.bfloat16, n, training=False)
    assert len(dispatch._decisions) == 2 and len(dispatch._tables) == 1


def fake_cuda(dtype=torch.bfloat16, requires_grad=False, index=0):
    """What use_kernels reads of a CUDA tensor."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, requires_grad=requires_grad, get_device=lambda: index)


def test_use_kernels_asks_the_table_only_under_auto_on_cuda(isolated):
    write_user_table(document(H200, [entry(4096, "torch"), entry(4096, "tokennorm", direction="training")]))
    x = fake_cuda()
    assert dispatch.use_kernels("layer_norm", x, 4096, None, None) is False
    assert dispatch.use_kernels("layer_norm", fake_cuda(requires_grad=True), 4096) is True  # training
    assert dispatch.use_kernels("layer_norm", x, 4096, fake_cuda(requires_grad=True)) is True  # a weight learns
    with torch.no_grad():  # nothing is recorded: inference, even for tensors that require grad
        assert dispatch.use_kernels("layer_norm", fake_cuda(requires_grad=True), 4096) is False
    # a float32 weight with a bf16 input: torch's CUDA kernels may refuse it, so ours
    assert dispatch.use_kernels("layer_norm", x, 4096, fake_cuda(torch.float32)) is True
    assert dispatch.use_kernels("layer_norm", torch.randn(2, 4096, dtype=torch.bfloat16), 4096) is True  # CPU
    with backend.using_backend("triton"):
        assert dispatch.use_kernels("layer_norm", x, 4096) is True  # forced
    assert dispatch.use_kernels("layer_norm", x, 4096) is False


@pytest.fixture
def decision(monkeypatch):
    """The functional API on CPU tensors as if the Triton path were chosen, with a dispatch that records its
    questions and answers ``answer[0]``."""
    asked, answer = [], [False]

    def use_kernels(op, x, n, *others):
        asked.append((op, n, tuple(o is not None for o in others)))
        return answer[0]

    monkeypatch.setattr(functional, "use_triton", lambda x: True)
    monkeypatch.setattr(dispatch, "use_kernels", use_kernels)
    return SimpleNamespace(asked=asked, answer=answer)


def test_the_functional_api_runs_torch_where_the_table_says_so(decision):
    x, w, b, r = torch.randn(3, 5, 64), torch.randn(64), torch.randn(64), torch.randn(3, 5, 64)
    torch.testing.assert_close(functional.layer_norm(x, (64,), w, b), F.layer_norm(x, (64,), w, b), rtol=0, atol=0)
    torch.testing.assert_close(functional.rms_norm(x, (64,), w), F.rms_norm(x, (64,), w), rtol=0, atol=0)
    y, h = functional.add_norm(x, r, w, b, prenorm=True)
    torch.testing.assert_close(h, r + x, rtol=0, atol=0)
    torch.testing.assert_close(y, F.layer_norm(r + x, (64,), w, b), rtol=0, atol=0)
    functional.add_norm(x, r, w, None, norm="rmsnorm")
    assert decision.asked == [
        ("layer_norm", 64, (True, True)),
        ("rms_norm", 64, (True,)),
        ("add_layer_norm", 64, (True, True, True)),
        ("add_rms_norm", 64, (True, True, False)),
    ]


@pytest.mark.interpret
def test_fused_work_torch_has_no_op_for_is_never_sent_to_torch(decision):
    x, w, r = (t.to(KERNEL_DEVICE) for t in (torch.randn(4, 64), torch.randn(64), torch.randn(4, 64)))
    functional.add_norm(x, r, w, dropout_p=0.1, training=True)  # dropout
    functional.add_norm(x, r, w, residual_dtype=torch.float64, prenorm=True)  # a wider residual stream
    functional.add_norm(x, r, w, weight_offset=1.0)
    functional.add_norm(x, None, w)
    assert decision.asked == []  # the kernels ran, the table was not asked


@pytest.mark.gpu
def test_on_a_gpu_auto_runs_torch_where_the_table_says_so(isolated):
    write_user_table(document(H200, [entry(4096, "torch"), entry(1024, "tokennorm")]))  # device 0 "is" an H200
    g = torch.Generator(device="cuda").manual_seed(0)
    x, w, b = (
        torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)
        for shape in ((64, 4096), (4096,), (4096,))
    )
    torch.testing.assert_close(
        functional.layer_norm(x, (4096,), w, b), F.layer_norm(x, (4096,), w, b), rtol=0, atol=0
    )  # torch's kernel, bit for bit
    assert dispatch.choice(0, "layer_norm", torch.bfloat16, 1024, training=False) == "tokennorm"
    with backend.using_backend("triton"):  # forced: the table is not asked
        y = functional.layer_norm(x, (4096,), w, b)
    torch.testing.assert_close(y.float(), F.layer_norm(x.float(), (4096,), w.float(), b.float()), rtol=2e-2, atol=2e-2)
