"""Cached kernel launches: ``KERNEL[grid](*args, **kwargs)`` as with a ``@triton.jit`` function, for less host time.

Triton's own launch (``JITFunction.run``) binds and specializes every argument, builds a cache key from strings
and reads its settings on every call: at decode sizes that costs more than the kernel runs (benchmarks/
RESULTS.md, "Host time per call"). :class:`CachedLauncher` wraps a jit function and does that work once per
specialization: the first call of each goes through ``JITFunction.run`` itself (which compiles, launches and
returns the compiled kernel); later calls compute a cheap key and call the compiled kernel's launcher with the
arguments ``JITFunction.run`` would have passed. ``CachedLauncher.bind(*suffix, **kwargs)`` fixes the keyword
arguments, and optionally the last runtime arguments, once, for callers that reuse them (a launch plan):
``bound[grid](*args)``.

The key distinguishes everything Triton specializes on, or more (a finer key only adds cache entries): the
pattern of positional argument types; for each positional argument, a tensor's dtype and whether its address is
a multiple of 16, an int's Triton type (i32/i64/u64), whether it equals 1 and whether it is a multiple of 16, a
constexpr's value (None, floats and bools: their type says all); every keyword argument (constexprs and options
such as ``num_warps``) by name and value; for a bound suffix, what Triton specializes on in it (described once,
at ``bind``); the current device. Calls it cannot describe (an argument of another
type, a runtime argument given by name, an unhashable keyword value) take ``JITFunction.run``.

Three cases keep the plain call:

* under ``torch.compile``/export tracing or a torch dispatch mode (make_fx, fake tensors): the launch goes
  through ``torch.library.wrap_triton`` so the graph records it;
* Triton's interpreter (``TRITON_INTERPRET=1``): the interpreted function is called as usual;
* Triton internals other than the ones this module was tested against (Triton 3.6 and 3.9, with a fake CUDA
  driver: tests/kernels/test_launcher.py): the plain JIT call, with one warning per process.

While a launch hook (profilers), ``TRITON_DEBUG``, an instrumentation mode or a pre-run hook is active, calls
take ``JITFunction.run`` too, so those tools see and get what they expect. The globals a kernel reads are
checked by Triton when a specialization is first launched, not on every cached call.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from typing import Any, Callable

import torch

__all__ = ["CachedLauncher", "BoundLauncher", "cached_launch_available"]

try:  # torch >= 2.6
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # pragma: no cover - older torch: no tracing into kernels, launch directly

    def _wrap_triton(kernel):
        return kernel


def _find_internals() -> tuple[Any, str]:
    """(the pieces of Triton the cached path uses, '') or (None, what is missing or different)."""
    try:
        from triton import knobs
        from triton.runtime.driver import driver
        from triton.runtime.jit import JITFunction
    except ImportError as exc:
        return None, f"cannot import {exc.name or exc}"
    run_source = "".join(inspect.getsource(JITFunction.run).split())
    # The launcher call the cached path reproduces, argument for argument. If Triton changes it, this no longer
    # matches and calls take JITFunction.run.
    expected = (
        "kernel.run(grid_0,grid_1,grid_2,stream,kernel.function,kernel.packed_metadata,launch_metadata,"
        "knobs.runtime.launch_enter_hook,knobs.runtime.launch_exit_hook,*bound_args.values())"
    )
    if expected not in run_source:
        return None, "JITFunction.run calls the compiled kernel's launcher differently"
    runtime, compilation = knobs.runtime, knobs.compilation
    for owner, name in (
        (runtime, "launch_enter_hook"),
        (runtime, "launch_exit_hook"),
        (runtime, "debug"),
        (compilation, "instrumentation_mode"),
    ):
        if not hasattr(owner, name):
            return None, f"triton.knobs has no {name}"
    if not all(hasattr(getattr(runtime, h), "calls") for h in ("launch_enter_hook", "launch_exit_hook")):
        return None, "Triton's launch hooks are not hook chains"
    return (JITFunction, driver, runtime, compilation), ""


_INTERNALS, _MISSING = _find_internals()
_warned = False


def cached_launch_available() -> bool:
    """True when this Triton has the internals the cached launch path needs (else calls go through
    ``JITFunction.run``)."""
    return _INTERNALS is not None


def _warn_fallback(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        import triton

        warnings.warn(
            f"tokennorm: cached kernel launches are off with Triton {triton.__version__} ({reason}); kernels "
            "launch through JITFunction.run, which costs more host time per call",
            RuntimeWarning,
            stacklevel=3,
        )


# A torch dispatch mode (make_fx, fake tensors, functionalization) is active: launches must be traced, not run.
_dispatch_modes = torch._C._len_torch_dispatch_stack


def _traceable_options(kwargs: dict) -> dict:
    """A traced launch's keywords: without the register cap, which ``wrap_triton`` does not forward (it takes
    num_warps and num_stages). The traced kernel is then compiled uncapped, and a persistent grid sized for the
    capped one runs its last programs as a second wave: slower by that tail, never wrong."""
    if "maxnreg" in kwargs:
        return {k: v for k, v in kwargs.items() if k != "maxnreg"}
    return kwargs


_SUFFIX = object()  # in a keyword set's key: what follows describes a bound suffix of runtime arguments


def _describe(value: Any) -> Any:
    """What Triton specializes on in a bound runtime argument (None, bool, int, float), or more: for an int its
    type class (i32/i64/u64), whether it equals 1 and whether it is a multiple of 16; for the others the type."""
    if type(value) is int:
        return (int, -(2**31) <= value < 2**31, value >= 2**63, value == 1, value & 15 == 0)
    return type(value)


class CachedLauncher:
    """A ``@triton.jit`` function launched as ``LAUNCHER[grid](*args, **kwargs)``, with cached launches.

    See the module docstring for what is cached, what the key holds, and when calls take Triton's own path.
    ``grid`` is a tuple of 1–3 ints or a callable of the bound arguments, as for the jit function.
    :meth:`bind` fixes the keyword arguments once, for callers that reuse them (a launch plan).
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._traceable = _wrap_triton(kernel)
        self._cache: dict[tuple, tuple] = {}
        # Bounded by the call patterns in use: positional argument types, and distinct keyword sets. Each gets a
        # number that goes into the key; itertools.count hands them out atomically (threads cannot share one).
        self._key_functions: dict[tuple[type, ...], Callable[..., tuple] | None] = {}
        self._keyword_sets: dict[tuple, int] = {}
        self._numbers = itertools.count()
        self._cached = False
        if _INTERNALS is None:
            if type(kernel).__name__ == "JITFunction":
                _warn_fallback(_MISSING)
            return
        if not isinstance(kernel, _INTERNALS[0]):
            return  # Triton's interpreter: plain calls
        try:
            params = kernel.params
            self._names = tuple(p.name for p in params)
            self._constexpr = tuple(bool(p.is_constexpr) for p in params)
            self._defaults = tuple(p.default for p in params)
            self._flags = tuple((bool(p.do_not_specialize), bool(p.do_not_specialize_on_alignment)) for p in params)
            kernel.pre_run_hooks  # noqa: B018  (read on every call)
        except AttributeError as exc:
            _warn_fallback(f"a jit function has no {exc.name}")
            return
        self._cached = True

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.run(grid, args, kwargs, self._keyword_set(kwargs) if self._cached else None)

    def bind(self, *suffix: Any, **kwargs: Any) -> BoundLauncher:
        """This kernel with the keyword arguments (constexprs and options) fixed, and optionally its last runtime
        arguments (``suffix``: None, bools, ints and floats a launch plan decides, e.g. ε): ``bound[grid](*args)``
        launches as ``self[grid](*args, *suffix, **kwargs)`` would, without building and hashing the keywords, or
        describing the suffix for the key, on every call. ValueError when ``suffix`` does not take exactly the
        kernel's last runtime parameters."""
        return BoundLauncher(self, kwargs, suffix)

    def cache_size(self) -> int:
        """How many specializations have a cached launch (all devices)."""
        return len(self._cache)

    def _keyword_set(self, kwargs: dict, suffix: tuple = ()) -> int | None:
        """A small int standing for these keyword names and values, and for what Triton specializes on in a bound
        ``suffix`` of runtime arguments (None: a value is unhashable)."""
        names_values = (*kwargs, *kwargs.values())
        if suffix:
            names_values = (*names_values, _SUFFIX, *map(_describe, suffix))
        try:
            return self._keyword_sets[names_values]
        except KeyError:
            return self._keyword_sets.setdefault(names_values, next(self._numbers))
        except TypeError:
            return None

    def run(self, grid: Any, args: tuple, kwargs: dict, keyword_set: int | None, suffix: tuple = ()) -> Any:
        """Launch with ``grid`` and the arguments ``*args, *suffix``: the cached launch when possible, else
        ``JITFunction.run``. ``keyword_set`` stands for ``kwargs`` and ``suffix`` (:meth:`_keyword_set`)."""
        if torch.compiler.is_compiling() or _dispatch_modes():  # tracing: record the launch in the graph
            kernel = self._traceable if self._cached else self.kernel
            return kernel[grid](*args, *suffix, **_traceable_options(kwargs))
        if not self._cached:
            return self.kernel[grid](*args, *suffix, **kwargs)
        _, driver, runtime, compilation = _INTERNALS
        if (
            runtime.launch_enter_hook.calls
            or runtime.launch_exit_hook.calls
            or runtime.debug
            or compilation.instrumentation_mode
            or self.kernel.pre_run_hooks
            or keyword_set is None
        ):
            return self.kernel.run(*args, *suffix, grid=grid, warmup=False, **kwargs)
        # The key describes args; keyword_set stands for the suffix (fixed by the caller, described once).
        types = tuple(map(type, args))
        try:
            key_function = self._key_functions[types]
        except KeyError:
            key_function = self._key_functions[types] = self._make_key_function(types)
        if key_function is None:
            return self.kernel.run(*args, *suffix, grid=grid, warmup=False, **kwargs)
        active = driver.active
        device = active.get_current_device()
        key = key_function(device, keyword_set, *args)
        entry = self._cache.get(key)
        if entry is None:
            return self._first_launch(key, grid, (*args, *suffix), kwargs)
        launch, function, packed_metadata, tail, compiled = entry
        if callable(grid):
            grid = grid(dict(zip(self._names, (*args, *suffix, *tail))))
        grid_size = len(grid)
        launch(
            grid[0],
            grid[1] if grid_size > 1 else 1,
            grid[2] if grid_size > 2 else 1,
            active.get_current_stream(device),
            function,
            packed_metadata,
            None,
            None,
            None,
            *args,
            *suffix,
            *tail,
        )
        return compiled

    def _first_launch(self, key: tuple, grid: Any, args: tuple, kwargs: dict) -> Any:
        """Triton's own launch; then cache what later calls with this key hand the launcher."""
        compiled = self.kernel.run(*args, grid=grid, warmup=False, **kwargs)
        if compiled is None:
            return None
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        tail = self._tail(len(args), kwargs)
        if tail is not None:
            self._cache[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail, compiled)
        return compiled

    def _suffix_start(self, suffix: tuple) -> int:
        """Where a bound ``suffix`` starts in the signature: it must take exactly the last runtime parameters
        (constexprs may follow), so that every launch's key describes the arguments before it."""
        runtime = [i for i, constexpr in enumerate(self._constexpr) if not constexpr]
        start = (runtime[-1] + 1 if runtime else 0) - len(suffix)
        if start < 0 or any(self._constexpr[start : start + len(suffix)]):
            raise ValueError(
                f"{self.kernel.fn.__name__}: {len(suffix)} bound arguments do not take its last runtime parameters"
            )
        return start

    def _tail(self, n_positional: int, kwargs: dict) -> tuple | None:
        """The values JITFunction.run passes after the positional ones (constexprs given by name, or their
        defaults), in signature order; None if one of them is a runtime argument (its value would change per
        call)."""
        tail = []
        for i in range(n_positional, len(self._names)):
            if not self._constexpr[i]:
                return None
            tail.append(kwargs.get(self._names[i], self._defaults[i]))
        return tuple(tail)

    def _make_key_function(self, types: tuple[type, ...]) -> Callable[..., tuple] | None:
        """For positional arguments of these types, ``key(device, keyword_set, *args)``: the cache key, holding the
        pattern's number, the device, the keyword set and what Triton specializes on in the arguments (see the
        module docstring); None when an argument cannot be described (that call pattern takes
        ``JITFunction.run``). Generated once per pattern as straight-line code, as Triton generates its binder."""
        if len(types) > len(self._names):
            return None
        names = [f"a{i}" for i in range(len(types))]
        parts = [str(next(self._numbers)), "device", "keyword_set"]
        for i, (a, t) in enumerate(zip(names, types)):
            no_value, no_alignment = self._flags[i]
            if self._constexpr[i]:
                parts.append(a)  # a constexpr given by position: its value
            elif issubclass(t, torch.Tensor):
                parts.append(f"{a}.dtype" if no_value or no_alignment else f"{a}.dtype, {a}.data_ptr() & 15 == 0")
            elif t is int:
                if not (no_value or no_alignment):  # i32: one small int (0-3); i64/u64: a tuple (never equal)
                    parts.append(
                        f"({a} & 15 == 0) + 2 * ({a} == 1) if -2147483648 <= {a} <= 2147483647 "
                        f"else ({a} >= 9223372036854775808, {a} & 15 == 0)"
                    )
                    continue
                parts += [f"-2147483648 <= {a} <= 2147483647", f"{a} >= 9223372036854775808"]
                if not no_value:
                    parts.append(f"{a} == 1")
            elif t not in (type(None), float, bool):  # those: the type (fixed by the pattern) says all
                return None
        source = f"def key(device, keyword_set, {', '.join(names)}):\n    return ({', '.join(parts)},)\n"
        namespace: dict[str, Any] = {}
        exec(source, namespace)  # noqa: S102 - generated from the kernel's signature and argument types only
        return namespace["key"]


class BoundLauncher:
    """:meth:`CachedLauncher.bind`'s result: ``bound[grid](*args)``, or ``bound.launch(grid, *args)`` (one call
    less). Keywords given at the launch are added to the bound ones (at the unbound launch's cost); with a bound
    suffix, ``args`` are the arguments before it."""

    __slots__ = ("launcher", "kwargs", "suffix", "_keyword_set", "_prefix_length")

    def __init__(self, launcher: CachedLauncher, kwargs: dict, suffix: tuple = ()) -> None:
        for value in suffix:
            if value is not None and type(value) not in (bool, int, float):
                raise TypeError(f"bound arguments are None, bools, ints or floats, not {type(value).__name__}")
        self.launcher, self.kwargs, self.suffix = launcher, kwargs, suffix
        self._keyword_set = launcher._keyword_set(kwargs, suffix) if launcher._cached else None
        self._prefix_length = launcher._suffix_start(suffix) if suffix and launcher._cached else None

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return lambda *args, **extra: self.launch(grid, *args, **extra)

    def launch(self, grid: Any, *args: Any, **extra: Any) -> Any:
        launcher, suffix = self.launcher, self.suffix
        if suffix and self._prefix_length is not None and len(args) != self._prefix_length:
            raise TypeError(f"expected {self._prefix_length} arguments before the bound ones, got {len(args)}")
        if extra:
            kwargs = {**self.kwargs, **extra}
            keyword_set = launcher._keyword_set(kwargs, suffix) if launcher._cached else None
            return launcher.run(grid, args, kwargs, keyword_set, suffix)
        return launcher.run(grid, args, self.kwargs, self._keyword_set, suffix)
