"""A fake Triton "cuda" driver: real launchers run on CPU tensors, compile for sm_90, and stop at the launch.

Installed, Triton's active driver claims to be one Hopper GPU (:data:`~.hopper.H100` unless told otherwise).
Then ``kernel[grid](...)`` on CPU tensors does everything it does on a GPU host up to ``cuLaunchKernel``:
``JITFunction.run`` binds and specializes the arguments (pointer and integer divisibility by 16, integers equal
to 1, None as constexpr), compiles for sm_90 with Triton's bundled ptxas (cached like any compile), builds the
launcher once per compiled kernel, and calls it. The launcher is a stub that records the launch instead::

    from tokennorm.tools.kernel_report import fakecuda

    fakecuda.install()                       # a process without TRITON_INTERPRET=1 (tests: a subprocess)
    with fakecuda.capture() as launches:
        tokennorm_launcher(cpu_tensors)      # anything that ends in kernel[grid](...)
    launch = launches[0]
    launch.name, launch.grid, launch.num_warps, launch.num_stages, launch.shared
    launch.args          # exactly the kernel arguments the launcher was handed (see Launch.args)
    launch.named_args    # the same by parameter name
    launch.kernel        # the CompiledKernel: .asm["ptx"], .asm["cubin"], .metadata

Two uses: the exact kernel a public call compiles to (:mod:`~.analysis` reads it), and host time per call up to
the launch (:mod:`~.host_time`; a real GPU host adds the C launcher and the CUDA driver call, a few µs).

Not real: nothing runs, so outputs stay as allocated; no stream or CUDA graph; launch hooks are called as the
C launcher calls them, but global/profile scratch buffers (kernels that need them: none of tokennorm's) are not
allocated. Registers and spills reported by the loaded "binary" come from the cubin (cuobjdump), as the CUDA
driver would report them.

Every launch while recording is on goes to a bounded log (the last :data:`LOG_LIMIT`; :func:`launches`,
:func:`clear`) and to every open :func:`capture`. Recording off (:func:`recording`) makes the stub return at
once: that is the mode for timing the host.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Any, Iterator, Optional

from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from tokennorm.tools.kernel_report import cubin, hopper

__all__ = [
    "Launch",
    "install",
    "uninstall",
    "is_installed",
    "installed_device",
    "launches",
    "clear",
    "capture",
    "recording",
    "LOG_LIMIT",
]

LOG_LIMIT = 4096  # launches kept by the log: it holds their arguments (tensors), so it must not grow per call

_log: collections.deque["Launch"] = collections.deque(maxlen=LOG_LIMIT)
_captures: list[list["Launch"]] = []
_recording = True
_previous_driver: Any = None
_installed: Optional["FakeCudaDriver"] = None


class Launch:
    """One stubbed launch. Cheap to record: everything but the call itself is read when asked for."""

    __slots__ = ("_launcher", "call")

    def __init__(self, launcher: "_StubLauncher", call: tuple):
        self._launcher = launcher
        # What CompiledKernel.run was called with: (grid x, y, z, stream, function, packed metadata, launch
        # metadata, launch-enter hook, launch-exit hook, *kernel arguments) -- the same in Triton 3.6 and 3.9.
        self.call = call

    @property
    def name(self) -> str:
        return self._launcher.metadata.name

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.call[:3])

    @property
    def args(self) -> tuple:
        """The kernel arguments handed to the launcher: every parameter of the kernel in order, constexprs
        included, as ``JITFunction.run`` bound them (tensors as passed; the C launcher reads their data_ptr)."""
        return self.call[9:]

    @property
    def named_args(self) -> dict[str, Any]:
        return dict(zip(self._launcher.src.fn.arg_names, self.args))

    @property
    def num_warps(self) -> int:
        return self._launcher.metadata.num_warps

    @property
    def num_stages(self) -> int:
        return self._launcher.metadata.num_stages

    @property
    def shared(self) -> int:
        """Bytes of dynamic shared memory the launch requests per program."""
        return self._launcher.metadata.shared

    @property
    def cubin(self) -> bytes:
        return self.call[4].cubin

    @property
    def kernel(self) -> Any:
        """The ``CompiledKernel`` launched (None for one launched outside a JITFunction's cache)."""
        jit_fn = getattr(self._launcher.src, "fn", None)
        for caches in getattr(jit_fn, "device_caches", {}).values():
            for compiled in caches[0].values():
                compiled = compiled.result() if hasattr(compiled, "result") else compiled  # 3.6 async compiles
                if getattr(compiled, "_run", None) is self._launcher:
                    return compiled
        return None

    def __repr__(self) -> str:
        return f"Launch({self.name}, grid={self.grid}, num_warps={self.num_warps}, num_stages={self.num_stages})"


class _StubLauncher:
    """Stands where Triton's CudaLauncher would: built once per compiled kernel, called for every launch."""

    __slots__ = ("src", "metadata")

    def __init__(self, src: Any, metadata: Any):
        self.src = src
        self.metadata = metadata

    def __call__(self, *call: Any) -> None:
        if not _recording:
            return
        enter_hook, exit_hook = call[7], call[8]
        if enter_hook is not None:
            enter_hook(call[6])
        launch = Launch(self, call)
        _log.append(launch)
        for sink in _captures:
            sink.append(launch)
        if exit_hook is not None:
            exit_hook(call[6])


class _Function:
    """The 'CUfunction' of a loaded kernel: its name and binary."""

    __slots__ = ("name", "cubin")

    def __init__(self, name: str, binary: bytes):
        self.name = name
        self.cubin = binary


class _Utils:
    def __init__(self, device: hopper.Device):
        self._device = device

    def load_binary(self, name: str, binary: bytes, shared: int, device: int) -> tuple:
        """(module, function, registers, spills, max threads per block), as the CUDA driver reports them."""
        used = cubin.resources(binary)
        spills = (used.stack + used.local) // 4  # Triton's driver: local bytes / 4
        return object(), _Function(name, binary), used.registers, spills, hopper.max_threads_per_block(used.registers)

    def unload_module(self, module: Any) -> None:
        pass

    def get_device_properties(self, device: int) -> dict[str, int]:
        d = self._device
        return {
            "max_shared_mem": hopper.SHARED_PER_BLOCK_MAX,
            "max_num_regs": hopper.REGISTERS_PER_SM,
            "multiprocessor_count": d.sms,
            "warpSize": hopper.WARP_SIZE,
            "sm_clock_rate": int(d.sm_clock_hz / 1e3),
            "mem_clock_rate": d.mem_clock_khz,
            "mem_bus_width": d.mem_bus_bits,
        }


class FakeCudaDriver:
    """The driver object Triton asks for targets, devices, streams, binaries and launchers."""

    backend = "cuda"
    launcher_cls = _StubLauncher

    def __init__(self, device: hopper.Device = hopper.H100):
        self.device = device
        self.utils = _Utils(device)

    @staticmethod
    def is_active() -> bool:
        return True

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", hopper.ARCH, hopper.WARP_SIZE)

    def get_device_capability(self, device: int = 0) -> tuple[int, int]:
        return divmod(hopper.ARCH, 10)

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def get_active_torch_device(self) -> Any:
        import torch

        return torch.device("cpu")  # the tensors this driver's launches take

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_benchmarker(self) -> Any:
        raise RuntimeError("nothing runs under the fake CUDA driver: benchmarking or autotuning needs a GPU")


def install(device: hopper.Device = hopper.H100) -> FakeCudaDriver:
    """Make Triton's active driver a fake CUDA ``device``. Raises RuntimeError under TRITON_INTERPRET=1 (then
    ``triton.jit`` builds interpreted functions, which never reach a driver)."""
    global _installed, _previous_driver
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "the fake CUDA driver needs a process without TRITON_INTERPRET=1 "
            "(triton.jit then returns interpreted kernels that never reach a driver)"
        )
    if _installed is None:
        _previous_driver = driver._active  # None unless a driver was already made active
    _installed = FakeCudaDriver(device)
    driver.set_active(_installed)
    return _installed


def uninstall() -> None:
    """Give Triton back the driver it had before :func:`install` (kernels compiled meanwhile stay cached)."""
    global _installed
    if _installed is not None:
        driver._active = _previous_driver
        _installed = None


def is_installed() -> bool:
    return _installed is not None and driver._active is _installed


def installed_device() -> hopper.Device:
    """The GPU the installed fake driver claims to be."""
    if not is_installed():
        raise RuntimeError("the fake CUDA driver is not installed (call fakecuda.install() first)")
    return _installed.device


def launches() -> list[Launch]:
    """The launches recorded so far (at most the last :data:`LOG_LIMIT`), oldest first."""
    return list(_log)


def clear() -> None:
    """Forget the recorded launches (and the tensors they hold)."""
    _log.clear()


@contextlib.contextmanager
def capture() -> Iterator[list[Launch]]:
    """A list that receives every launch recorded inside the ``with`` block (unbounded: keep blocks short)."""
    sink: list[Launch] = []
    _captures.append(sink)
    try:
        yield sink
    finally:
        del _captures[next(i for i, open_sink in enumerate(_captures) if open_sink is sink)]


@contextlib.contextmanager
def recording(enabled: bool) -> Iterator[None]:
    """Record launches (the default) or not inside the block; with recording off a launch costs one Python call."""
    global _recording
    before, _recording = _recording, enabled
    try:
        yield
    finally:
        _recording = before
