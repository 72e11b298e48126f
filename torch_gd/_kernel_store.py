"""Fused CPU kernels kept on disk, so that a new process loads them instead of compiling.

A process's first fused step used to cost seconds even with Inductor's caches warm: importing
dynamo and Inductor (~1 s and ~1.5-2.5 s here) and re-tracing each kernel come before any cache
is read. What a kernel runs is small: the C++ extension Inductor built (a ``.so``) and the
generated module's ``call``, a few lines that check sizes and call it. So once a kernel is
compiled, its entry here keeps copies of both, with where each graph input comes from (``_Kernel``'s
slots). A later process with the same key loads the ``.so`` with ``importlib`` and runs the
module's source with the few Inductor names it imports bound to stand-ins, importing neither
dynamo nor Inductor (~10 ms a kernel).

**Keys.** An entry is found by a hash of everything the kernel depends on: the rule, its static
flags, dtype, the dtypes and ranks of its inputs, the number of threads, torch's version and
commit, Python's version, torch_gd's own source, the CPU (its model and feature flags), the
compiler Inductor calls and the environment settings Inductor and dynamo read. The entry repeats
its key in full and is loaded only if it matches. What a key cannot describe is not stored: a
rule defined outside torch_gd, or a kernel compiled under settings changed in Python.

**Checks.** At save, the kernel is run on fixed inputs (values drawn from each input's name,
booleans both ways) and a hash of what it wrote is kept; a load runs the loaded kernel on the
same inputs and is taken only if it writes the same bits. An entry that fails (torn, corrupted,
foreign) is removed and the kernel is compiled as if it were not there, with the same results.

**Concurrency.** An entry is written into a temporary directory and renamed into place whole;
readers never see part of one. Processes that compile the same kernel at once each rename
theirs; the first wins and the others' copies are discarded.

**Where.** ``TORCH_GD_CACHE_DIR`` if set, else a ``torch_gd`` directory in Inductor's cache
directory (``TORCHINDUCTOR_CACHE_DIR``, or its default under the temporary directory, used only
where it is private to the user): never in site-packages. ``TORCH_GD_CACHE_DIR=0`` turns the
store off. It is used on the CPU with the private fast paths on (``_private``); elsewhere
kernels are compiled in every process.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _private

ENV = "TORCH_GD_CACHE_DIR"
# Bumped when an entry's layout changes.
LAYOUT = 2
# The fixed inputs of the check: odd, so that vector loops run their tails too.
_CHECK_NUMEL = 1031
_IMPORT = re.compile(r"^from torch\._inductor\.[\w.]+ import (\w+)(?: as (\w+))?\s*$", re.M)
_BINDING = re.compile(r"^(\w+) = async_compile\.(\w+)\(", re.M)


def root() -> Optional[Path]:
    """The store's directory, or None when it is off."""
    own = os.environ.get(ENV)
    if own == "0":
        return None
    if own:
        return Path(own)
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not inductor:
        import getpass  # only here: it imports termios, which torch does not

        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        inductor = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return Path(inductor) / "torch_gd"


def usable(device: torch.device) -> bool:
    if device.type != "cpu" or not _private.enabled():
        return False
    base = root()
    return base is not None and (ENV in os.environ or _private_to_us(base))


def holds(rule: Callable[..., Any]) -> bool:
    """Whether kernels of ``rule`` may be stored: torch_gd's own rules, whose source is in the
    key. A user's rule could change under the same name."""
    return rule.__module__.split(".")[0] == __name__.split(".")[0]


_checked_roots: dict[Path, bool] = {}


def _private_to_us(base: Path) -> bool:
    """The default place is under the shared temporary directory, a path anyone could create
    first: used only where its existing parts are the user's and not writable by all."""
    if base not in _checked_roots:
        ok = True
        getuid = getattr(os, "getuid", None)
        for part in (base.parent, base):
            try:
                st = part.stat()
            except FileNotFoundError:
                continue
            except OSError:
                ok = False
                break
            if (getuid is not None and st.st_uid != getuid()) or st.st_mode & 0o002:
                ok = False
        if not ok:
            _private.report("the kernel store", PermissionError(f"{base} is not this user's alone"),
                            "compiling kernels in every process instead")
        _checked_roots[base] = ok
    return _checked_roots[base]


_environment: Optional[dict[str, str]] = None


def environment() -> dict[str, str]:
    """What every kernel of this process depends on beyond its own key (computed once)."""
    global _environment
    if _environment is None:
        source = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            source.update(path.name.encode() + path.read_bytes())
        cpu = platform.machine()
        try:
            info = Path("/proc/cpuinfo").read_text()
            cpu += "".join(sorted(set(re.findall(r"^(?:model name|flags|Features)\s*:.*$", info, re.M))))
        except OSError:
            cpu += platform.processor()
        # The compiler Inductor calls by default (its ``cpp.cxx``).
        compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
        compiler = os.path.realpath(shutil.which(compiler) or compiler)
        try:
            st = os.stat(compiler)
            compiler += f":{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            pass
        settings = sorted((k, v) for k, v in os.environ.items()
                          if (k.startswith(("TORCHINDUCTOR_", "TORCHDYNAMO_")) and k != "TORCHINDUCTOR_CACHE_DIR")
                          or k in ("ATEN_CPU_CAPABILITY", "CXX", "CPATH"))
        _environment = {
            "layout": str(LAYOUT), "torch": f"{torch.__version__} {torch.version.git_version}",
            "python": sys.version.split()[0], "torch_gd": source.hexdigest(),
            "cpu": hashlib.sha256(cpu.encode()).hexdigest(), "compiler": compiler, "inductor": repr(settings),
        }
    return _environment


def key_of(kernel: dict[str, str], args: tuple) -> dict[str, str]:
    """The full key of a kernel (``kernel``: rule, flags, dtype, device type) called with
    ``args`` (``_Kernel.__call__``'s: what each input is, its dtype and rank)."""
    # Inductor emits serial loops for one thread and OpenMP ones for more, at compile time.
    return {**environment(), **kernel, "inputs": repr(_describe(args)), "threads": str(torch.get_num_threads())}


def _describe(args: tuple) -> list:
    def one(x: Any) -> Any:
        if isinstance(x, dict):
            return sorted((k, one(v)) for k, v in x.items())
        return None if x is None else (str(x.dtype), x.dim())
    return [one(x) for x in args]


def _entry(key: dict[str, str]) -> Optional[Path]:
    base = root()
    if base is None:
        return None
    return base / "kernels" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]


def _check_inputs(slots: list, kinds: list, flag: bool) -> list:
    """The fixed inputs the check runs a kernel on, one per graph input (``kinds``: dtype and
    rank, None for the size): values drawn from the slot's name, so that a kernel reading its
    inputs in another order writes other bits; booleans ``flag``. A slot named twice gets the
    same tensor."""
    made: dict[tuple, Tensor] = {}
    inputs: list = []
    for slot, kind in zip(slots, kinds):
        if slot is None:
            inputs.append(_CHECK_NUMEL)
            continue
        slot = tuple(slot)
        if slot not in made:
            dtype, rank, i = getattr(torch, kind[0].split(".")[-1]), kind[1], zlib.crc32(repr(slot).encode()) % 1024
            if dtype == torch.bool:
                values = torch.full((_CHECK_NUMEL,) if rank else (), flag)
            elif dtype.is_floating_point or dtype.is_complex:
                lo = 0.25 + i / 4096
                values = torch.linspace(lo, lo + 0.5, _CHECK_NUMEL, dtype=torch.float64) if rank else torch.tensor(lo)
            else:
                values = torch.full((_CHECK_NUMEL,) if rank else (), i + 1)
            made[slot] = values.to(dtype)
        inputs.append(made[slot])
    return inputs


def fingerprint(call: Callable[[list], Any], slots: list, kinds: list) -> str:
    """A hash of what ``call`` writes on the check's inputs, with booleans false and true.
    ``kinds``: each input's (dtype name, rank), None for the size."""
    digest = hashlib.sha256()
    for flag in (False, True):
        inputs = _check_inputs(slots, kinds, flag)
        written = list(dict.fromkeys(x for x in inputs if isinstance(x, Tensor)))
        call(list(inputs))
        for t in written:
            t = t.contiguous()
            digest.update(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))
    return digest.hexdigest()


def save(key: dict[str, str], call: Callable[[list], Any], slots: list, example_inputs: list) -> None:
    """Keep ``call`` (a generated module's ``call``) and its slots under ``key``; a kernel the
    store cannot hold (not built as C++ extensions) is left out."""
    entry = _entry(key)
    if entry is None:
        return
    try:
        if entry.exists():
            return
        scope = call.__globals__
        source = Path(scope["__file__"]).read_text()
        bindings = _BINDING.findall(source)
        if not bindings or any(kind != "cpp_pybinding" for _, kind in bindings):
            return
        libraries = [Path(scope[name].__self__.__file__) for name, _ in bindings]
        kinds = [None if isinstance(x, (int, torch.SymInt)) else (str(x.dtype), x.dim()) for x in example_inputs]
        entry.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(entry.parent)
        # Made with the umask's permissions (mkdtemp's are the owner's alone): a store filled
        # ahead of time by one user is read by another.
        tmp = entry.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for i, lib in enumerate(libraries):
                shutil.copyfile(lib, tmp / f"k{i}.so")
            (tmp / "wrapper.py").write_text(source)
            meta = {"key": key, "slots": slots, "kinds": kinds, "fingerprint": fingerprint(call, slots, kinds),
                    "libraries": len(libraries)}
            (tmp / "entry.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, entry)
            except OSError:  # another process stored it first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - a kernel not stored is compiled next time
        _private.report("storing a compiled kernel", exc, "it will be compiled again next time")


def _remove_stale(kernels: Path) -> None:
    """Temporary directories of processes that died while saving (an hour old)."""
    for tmp in kernels.glob(".tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _discard(entry: Path) -> None:
    """Remove a bad entry: renamed aside first, so that it disappears whole."""
    aside = entry.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


class _Missing:
    """An Inductor name the stored module imports; using it means the module needs Inductor."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        raise _private.PrivateAPIError(f"a stored kernel uses Inductor's {self.name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _private.PrivateAPIError(f"a stored kernel uses Inductor's {self.name}")


class _Bindings:
    """Stands in for Inductor's ``AsyncCompile``: hands out the stored extensions' functions,
    in the order the module binds them."""

    def __init__(self, functions: list[Callable[..., Any]]) -> None:
        self._functions = iter(functions)

    def cpp_pybinding(self, argtypes: list, source: str) -> Callable[..., Any]:
        return next(self._functions)

    def wait(self, scope: dict) -> None:
        pass


def _extension(path: Path, name: str) -> Callable[..., Any]:
    # Inductor's loader tells the bindings where torch's tensor-to-pointer helper is.
    os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(
        torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr)
    full = f"{name}.kernel"
    module = sys.modules.get(full)
    if module is None:
        spec = importlib.util.spec_from_file_location(full, path)
        if spec is None or spec.loader is None:
            raise _private.PrivateAPIError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[full] = module
    return module.kernel


def load(key: dict[str, str]) -> Optional[tuple[Callable[[list], Any], list]]:
    """The stored ``call`` and slots for ``key``, checked to write what the saved one wrote;
    None (and a bad entry removed) otherwise."""
    entry = _entry(key)
    if entry is None:
        return None
    try:
        if not entry.is_dir():
            return None
    except OSError:
        return None
    prefix = f"torch_gd_store_{entry.name}"
    try:
        meta = json.loads((entry / "entry.json").read_text())
        if meta["key"] != key:
            raise _private.PrivateAPIError("a stored kernel's key is not the one it is filed under")
        functions = [_extension(entry / f"k{i}.so", f"{prefix}_{i}") for i in range(meta["libraries"])]
        source = (entry / "wrapper.py").read_text()
        scope: dict[str, Any] = {"__name__": prefix, "AsyncCompile": lambda: _Bindings(functions)}
        for name, alias in _IMPORT.findall(source):
            if name != "AsyncCompile":
                scope[alias or name] = _Missing(name)
        exec(compile(_IMPORT.sub("", source), str(entry / "wrapper.py"), "exec"), scope)  # noqa: S102
        call, slots = scope["call"], [None if s is None else tuple(s) for s in meta["slots"]]
        if fingerprint(call, slots, meta["kinds"]) != meta["fingerprint"]:
            raise _private.PrivateAPIError("a stored kernel does not compute what it computed when saved")
        return call, slots
    except Exception as exc:  # noqa: BLE001 - torn, corrupted or foreign: compile instead
        _private.report("loading a stored kernel", exc, "compiling it instead")
        for name in [m for m in sys.modules if m.startswith(prefix + "_")]:
            sys.modules.pop(name)  # a new entry under this name is loaded afresh
        _discard(entry)
        return None
