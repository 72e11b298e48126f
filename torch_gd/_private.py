"""Every private torch API torch_gd uses, in one place, each with a public fallback.

The fast paths reach into torch's internals: Inductor's ``compile_fx`` with an
``inner_compile`` hook and the compiled graph's ``current_callable`` (kernels called without
dynamo's and AOT autograd's wrappers), the C++ function a generated CPU ``call`` wraps (read
from its source), a ``SymInt``'s size hint, Inductor's C++ loader (the packed buckets' copy
loop), a functorch config switch and torch's step hooks (``profile_hook_step``); and one
platform trick, small kernels run on one OpenMP thread (``one_thread``). They are used only while
``enabled()``: on for the torch releases the test suite covers (``TESTED``), off otherwise.
``TORCH_GD_PRIVATE_APIS``, read at import: unset = that automatic choice (a line in the
``torch_gd`` log when it switches them off); ``0`` = always off; ``1`` = on even on an untested
torch (with a warning). ``switched`` changes it in process, for tests.

Off, every path still runs, with the same results: kernels go through the public
``torch.compile`` wrapper on every call, and packed param values are copied with
``torch._foreach_copy_``. On, a private API that raises or has changed shape is reported once
and the public path is taken instead (``PrivateAPIError`` marks such failures).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

# torch releases (major.minor) CI runs the tests on with the fast paths on: the whole suite
# on 2.14 (and again with them off), the core suite with the compiled-step tests on 2.12.
TESTED = ("2.14", "2.12")
ENV = "TORCH_GD_PRIVATE_APIS"
log = logging.getLogger("torch_gd")


class PrivateAPIError(RuntimeError):
    """A private torch API raised or is not what this module expects: take the public path."""


def _release(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def decide(setting: Optional[str], version: str = torch.__version__) -> bool:
    """Whether the private fast paths are used, for this ``TORCH_GD_PRIVATE_APIS`` value."""
    tested = _release(version) in TESTED
    if setting == "0":
        return False
    if setting == "1":
        if not tested:
            warnings.warn(f"{ENV}=1: torch_gd's private-API fast paths are on for torch {version}, which "
                          f"its tests do not cover (tested: {', '.join(TESTED)})", stacklevel=2)
        return True
    if setting not in (None, ""):
        warnings.warn(f"{ENV}={setting!r} is neither 0 nor 1; using the automatic choice", stacklevel=2)
    if not tested:
        log.warning("torch_gd: torch %s is not among the releases its tests cover (%s): the private-API "
                    "fast paths are off (results are the same; set %s=1 to force them on)",
                    version, ", ".join(TESTED), ENV)
    return tested


_enabled = decide(os.environ.get(ENV))


def enabled() -> bool:
    """Whether the private fast paths are in use."""
    return _enabled


@contextlib.contextmanager
def switched(on: bool) -> Iterator[None]:
    """The fast paths on or off inside the block (kernels are cached per setting)."""
    global _enabled
    old, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = old


_reported: set[str] = set()


def report(what: str, exc: BaseException, instead: str = "using the public path instead") -> None:
    """One log line per private API that failed, naming it, the error and what is done instead."""
    if what not in _reported:
        _reported.add(what)
        log.warning("torch_gd: %s failed (%s: %s); %s", what, type(exc).__name__, exc, instead)


def inductor_with_call(gm: torch.fx.GraphModule, example_inputs: list) -> tuple[Callable[..., Any], Optional[Callable[[list], Any]]]:
    """Inductor's compiled function for ``gm``, and the generated module's own ``call`` when it
    can stand in for it: the graph AOT autograd hands Inductor takes dynamo's inputs in dynamo's
    order and returns nothing (every update is an in-place write inside the kernel), so the
    wrappers around it have nothing to do but bump the version counters of the tensors written.

    Raises ``PrivateAPIError`` where ``compile_fx`` or its hook do not work as expected."""
    try:
        from torch._inductor.compile_fx import compile_fx, compile_fx_inner
        import torch._functorch.config as functorch_config
    except ImportError as exc:
        raise PrivateAPIError(f"Inductor's compile_fx is not importable: {exc}") from exc

    inner: list = []

    def capture_inner(g: torch.fx.GraphModule, inputs: list, **kwargs: Any) -> Any:
        out = compile_fx_inner(g, inputs, **kwargs)
        inner.append((g, inputs, out))
        return out

    try:
        # On an AOT-autograd cache hit the hook is skipped; Inductor's FX graph cache still serves
        # the kernel.
        with functorch_config.patch(enable_autograd_cache=False):
            compiled = compile_fx(gm, example_inputs, inner_compile=capture_inner)
    except TypeError as exc:  # the hook's signature changed
        raise PrivateAPIError(f"compile_fx(inner_compile=...): {exc}") from exc
    if len(inner) != 1:
        return compiled, None
    g, inputs, out = inner[0]
    outputs = g.graph.output_node().args[0]
    same = len(inputs) == len(example_inputs) and all(map(_same_input, inputs, example_inputs))
    call = getattr(out, "current_callable", None)
    return compiled, call if same and not outputs and callable(call) else None


def bare_kernel(call: Callable[[list], Any]) -> Optional[tuple[Callable[..., Any], tuple[int, ...]]]:
    """The one compiled C++ function a generated module's CPU ``call`` runs, and which of the
    call's inputs it takes, in order, where ``call`` does nothing else: unpack its inputs, check
    their sizes and strides, call it, return nothing. Called directly, it skips ~1.2 µs of
    Python a call, and it reads tensors by address, so a grad whose elements are contiguous
    needs no 1-D view. None where ``call`` does anything else (a Triton launch, several kernels)
    or its source cannot be read; the caller checks that it writes what ``call`` writes."""
    if not _enabled:
        return None
    try:
        import ast

        function = getattr(call, "__func__", call)
        with open(function.__code__.co_filename) as f:
            tree = ast.parse(f.read())
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function.__name__]
        if len(defs) != 1:
            return None
        unpack, *body = defs[0].body
        if not (isinstance(unpack, ast.Assign) and isinstance(unpack.targets[0], ast.Tuple)
                and isinstance(unpack.value, ast.Name)):
            return None
        names = {n.id: i for i, n in enumerate(unpack.targets[0].elts) if isinstance(n, ast.Name)}
        kernels = []
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                    and isinstance(stmt.value, ast.Name) and stmt.value.id in names:
                names[stmt.targets[0].id] = names[stmt.value.id]  # a size's name
            elif isinstance(stmt, ast.Delete) or (isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.Tuple)
                                                  and not stmt.value.elts):
                continue
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                func = stmt.value.func
                if isinstance(func, ast.Attribute) and func.attr == "clear" and isinstance(func.value, ast.Name) \
                        and func.value.id == unpack.value.id:
                    continue
                if not isinstance(func, ast.Name):
                    return None
                if not func.id.startswith("assert_size_stride"):
                    kernels.append(stmt.value)
            else:
                return None
        if len(kernels) != 1 or kernels[0].keywords or not all(isinstance(a, ast.Name) and a.id in names
                                                               for a in kernels[0].args):
            return None
        found = function.__globals__.get(kernels[0].func.id)
        return (found, tuple(names[a.id] for a in kernels[0].args)) if callable(found) else None
    except Exception as exc:  # noqa: BLE001 - anything unexpected: keep calling ``call``
        report("calling a compiled C++ kernel without its Python wrapper", exc, "calling the wrapper instead")
        return None


def _same_input(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.dim() == b.dim()
    return isinstance(a, (int, torch.SymInt)) and isinstance(b, (int, torch.SymInt))


def size_hint(x: Any) -> Optional[int]:
    """The concrete value behind a traced size (``SymInt.node.hint``); None if unknown."""
    if isinstance(x, int):
        return x
    hint = getattr(getattr(x, "node", None), "hint", None)
    return hint if isinstance(hint, int) else None


def load_cpp(signature: list[str], source: str) -> Optional[Callable[..., Any]]:
    """A C++ function built and loaded with Inductor's toolchain, or None (then the caller takes
    its public path) when the fast paths are off or the build fails."""
    if not _enabled:
        return None
    try:
        from torch._inductor.codecache import CppPythonBindingsCodeCache

        with quiet_cpp_builder():
            return CppPythonBindingsCodeCache.load_pybinding(signature, source)
    except Exception as exc:  # noqa: BLE001 - no compiler, or the loader changed: copy with foreach
        report("building the C++ copy loop", exc)
        return None


def compiler_settings_changed() -> list[str]:
    """The Inductor and dynamo settings a program has changed from their defaults (in Python,
    as ``torch._inductor.config.x = ...``); anything unreadable counts as changed. They shape
    the code Inductor generates, which the kernel store does not key."""
    try:
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config

        # Compared by value, and called outside a compile: dynamo and Inductor patch some
        # while compiling, and leave others set to their defaults.
        return [f"{module.__name__}.{k}" for module in (inductor_config, dynamo_config)
                for k, v in module.get_config_copy().items() if v != module._config[k].default]
    except Exception as exc:  # noqa: BLE001 - a changed internal: nothing is stored
        return [f"unreadable ({type(exc).__name__}: {exc})"]


def is_fake(t: Tensor) -> bool:
    """Whether ``t`` is a FakeTensor (no data: tracing, or a device this machine lacks)."""
    try:
        from torch._subclasses.fake_tensor import is_fake as _is_fake
    except ImportError:
        return False
    return _is_fake(t)


def profile_hook_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """torch's ``Optimizer.profile_hook_step`` (the wrapper every optimizer's ``step`` gets:
    the profiler's ``Optimizer.step#<class>.step`` range, then the global and the optimizer's
    step pre- and post-hooks), at a fraction of its cost. torch's enters
    ``torch.autograd.profiler.record_function`` (~6 µs on the CPU) and walks four hook dicts
    through ``itertools.chain`` (~15 µs a step in all); this one enters the same range through
    ``_RecordFunctionFast`` (~0.3 µs), which every profiler and ``RecordFunction`` observer sees
    alike, and walks the hooks only where some are registered (~2 µs in all). Traced by dynamo,
    or with the fast paths off, torch's own wrapper runs."""
    hooked = torch.optim.Optimizer.profile_hook_step(step)
    try:
        from torch.optim import optimizer as torch_optimizer

        fast_range = torch._C._profiler._RecordFunctionFast
        global_pre = torch_optimizer._global_optimizer_pre_hooks
        global_post = torch_optimizer._global_optimizer_post_hooks
    except (ImportError, AttributeError) as exc:
        report("the lean step wrapper", exc)
        return hooked
    names: dict[type, str] = {}

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _enabled or torch.compiler.is_compiling():
            return hooked(*args, **kwargs)
        self = args[0]
        cls = type(self)
        name = names.get(cls)
        if name is None:
            name = names[cls] = f"Optimizer.step#{cls.__name__}.step"
        with fast_range(name):
            if global_pre or self._optimizer_step_pre_hooks:
                for pre_hook in (*global_pre.values(), *self._optimizer_step_pre_hooks.values()):
                    result = pre_hook(self, args, kwargs)
                    if result is not None:
                        if isinstance(result, tuple) and len(result) == 2:
                            args, kwargs = result
                        else:
                            raise RuntimeError(f"{step} must return None or a tuple of (new_args, new_kwargs), "
                                               f"but got {result}.")
            out = step(*args, **kwargs)
            self._optimizer_step_code()
            if self._optimizer_step_post_hooks or global_post:
                for post_hook in (*self._optimizer_step_post_hooks.values(), *global_post.values()):
                    post_hook(self, args, kwargs)
            return out

    return wrapper


@functools.lru_cache(maxsize=None)
def _openmp_backend() -> bool:
    """Whether ATen's intra-op parallel backend is OpenMP, the one Inductor's C++ kernels use:
    there ``torch.set_num_threads`` sets the OpenMP thread count, cheaply, at any time. Other
    backends refuse a change once parallel work has started (with a warning each time)."""
    try:
        return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    except Exception as exc:  # noqa: BLE001 - unreadable: leave the thread count alone
        report("reading the parallel backend", exc, "small kernels keep every thread")
        return False


def one_thread() -> int:
    """Run the following kernels on one OpenMP thread; returns the thread count to give back
    to ``restore_threads`` (0: nothing was changed). Inductor's C++ opens an OpenMP team on
    every call whatever the size, where torch's own elementwise ops run serially below their
    grain size: for a tensor of a few thousand elements the team costs more than it saves."""
    threads = torch.get_num_threads()
    if not _enabled or threads == 1 or not _openmp_backend():
        return 0
    torch.set_num_threads(1)
    return threads


def restore_threads(threads: int) -> None:
    """Give back the thread count ``one_thread`` took."""
    if threads:
        torch.set_num_threads(threads)


def use_grad_for_differentiable(step: Callable[..., Any]) -> Callable[..., Any]:
    """torch's decorator for ``Optimizer.step`` (grad mode as the ``differentiable`` default
    says, with graph breaks around the step) where dynamo traces the step; elsewhere the grad
    mode alone: torch's imports dynamo at the first step (~1 s) for breaks only a trace needs."""
    @functools.wraps(step)
    def plain(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)

    try:
        from torch.optim.optimizer import _use_grad_for_differentiable
    except ImportError:
        return plain
    traced = _use_grad_for_differentiable(step)

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _enabled and not torch.compiler.is_compiling():
            return plain(*args, **kwargs)
        return traced(*args, **kwargs)

    return wrapper


def traceable_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` as dynamo should see it. On the torch releases the suite covers,
    ``torch.compile(opt.step)`` traces the engine. On others it runs the step eagerly, with the
    same results: where dynamo breaks the graph inside the step, the frames compiled between
    the breaks guard on host step counts (a recompile per step) or, run eagerly after traced
    steps, read counts that traced steps did not keep. torch 2.12 and 2.13's dynamo broke it
    where 2.14's does not (``dict.update`` on a dict subclass, ``sorted`` of traced ints); the
    engine avoids both, but only the covered releases are trusted to trace it whole."""
    if step_traced():
        return step
    disabled: list[Callable[..., Any]] = []  # made when dynamo first meets the step: importing
    # dynamo at `import torch_gd` would cost seconds

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return step(*args, **kwargs)
        if not disabled:  # dynamo runs this call eagerly (a graph break), then the step below
            disabled.append(torch.compiler.disable(step))
        return disabled[0](*args, **kwargs)

    return wrapper


def add_param_group(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> None:
    """``torch.optim.Optimizer.add_param_group``. torch wraps it so that dynamo never traces it,
    and the wrapper imports dynamo at its first call (~1 s): every optimizer's constructor would
    pay that, though only a trace needs it. Outside one, the function it wraps is called."""
    method = torch.optim.Optimizer.add_param_group
    bare = getattr(method, "__wrapped__", None)
    if not _enabled or bare is None or torch.compiler.is_compiling():
        method(optimizer, group)
    else:
        bare(optimizer, group)


def step_traced(version: str = torch.__version__) -> bool:
    """Whether dynamo traces ``Optimizer.step`` on this torch (else the step runs eagerly)."""
    return _release(version) in TESTED


def fused_devices() -> list[str]:
    """The device types torch's own fused optimizers support, for error messages."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ["cuda", "xpu", "mps", "cpu"]
    return _get_fused_kernels_supported_devices()


class _NoCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@contextlib.contextmanager
def quiet_cpp_builder() -> Iterator[None]:
    """Inductor's C++ builder imports ``torch.utils.cpp_extension``, which on a CUDA build of torch
    without a GPU logs "No CUDA runtime is found, using CUDA_HOME=..." once per process: a note
    for people building CUDA extensions, irrelevant to a CPU kernel (torch's own fused step,
    which compiles nothing, never prints it). Drop just that record while a kernel compiles."""
    logger, notice = logging.getLogger("torch.utils.cpp_extension"), _NoCudaHomeNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
