"""The on-disk kernel store: a new process loads the fused kernels an earlier one compiled,
without importing dynamo or Inductor, and computes the same bits; a damaged or foreign entry is
compiled again; processes starting at once leave whole entries only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torch_gd import precompile

# A fused SGD-momentum run in a new process: a packed bucket and a param above the packing
# threshold, three steps (the first sets the momentum buffers), seeded grads. Prints what the
# kernels report, whether the compiler stack was imported and a hash of params and state.
CHILD = r"""
import hashlib, json, sys, torch, torch_gd
gen = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((300, 7), (5000,), (60000,))]
opt = torch_gd.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2, fused=True)
for _ in range(3):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
digest = hashlib.sha256()
for p in params:
    for t in (p, opt.state[p]["momentum_buffer"]):
        digest.update(t.detach().numpy().tobytes())
kernels = opt.describe()["kernels"]
print(json.dumps({"loaded": sum(k["loaded"] for k in kernels), "compiled": sum(k["dynamo_calls"] for k in kernels),
                  "compiler": sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules),
                  "threads": torch.get_num_threads(), "digest": digest.hexdigest()}))
"""


def _env(inductor: Path, store: str | None = None, private: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_GD_CACHE_DIR", "TORCH_GD_PRIVATE_APIS")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    if store is not None:
        env["TORCH_GD_CACHE_DIR"] = store
    if private is not None:
        env["TORCH_GD_PRIVATE_APIS"] = private
    return env


def _run(env: dict[str, str], prelude: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", prelude + CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(store: Path) -> list[Path]:
    kernels = store / "kernels"
    return sorted(kernels.iterdir()) if kernels.is_dir() else []


@pytest.fixture(scope="module")
def inductor(tmp_path_factory) -> Path:
    """One Inductor cache for the module's children: their compiles differ only in our store."""
    return tmp_path_factory.mktemp("inductor")


@pytest.fixture(scope="module")
def filled(inductor, tmp_path_factory) -> tuple[Path, dict]:
    """A store one process filled (the default place, in Inductor's cache directory), and that
    process's result."""
    first = _run(_env(inductor))
    return inductor / "torch_gd", first


def test_a_second_process_loads_and_computes_the_same_bits(filled, inductor):
    store, first = filled
    assert first["loaded"] == 0 and first["compiled"] >= 1
    entries = _entries(store)
    assert entries and all((e / "entry.json").is_file() for e in entries)
    second = _run(_env(inductor))
    assert second["loaded"] >= 1 and second["compiled"] == 0
    assert second["compiler"] == []
    assert second["digest"] == first["digest"]
    assert _entries(store) == entries


def test_the_public_path_computes_the_same_bits_without_the_store(filled, inductor):
    """With the private APIs off the store is not used: kernels are compiled through
    torch.compile's public wrapper, to the same results."""
    store, first = filled
    before = {e: sorted(os.listdir(e)) for e in _entries(store)}
    off = _run(_env(inductor, private="0"))
    assert off["loaded"] == 0 and off["compiled"] >= 1
    assert off["digest"] == first["digest"]
    assert {e: sorted(os.listdir(e)) for e in _entries(store)} == before


def _garbage_library(entry: Path) -> None:
    (entry / "k0.so").write_bytes(b"\x7fELF not a library")


def _broken_source(entry: Path) -> None:
    (entry / "wrapper.py").write_text((entry / "wrapper.py").read_text() + "\ndef (\n")


def _other_fingerprint(entry: Path) -> None:
    meta = json.loads((entry / "entry.json").read_text())
    meta["fingerprint"] = "0" * 64
    (entry / "entry.json").write_text(json.dumps(meta))


def _foreign_key(entry: Path) -> None:
    meta = json.loads((entry / "entry.json").read_text())
    meta["key"]["torch"] = "0.0.0 another build"
    (entry / "entry.json").write_text(json.dumps(meta))


def _torn(entry: Path) -> None:
    (entry / "entry.json").unlink()


def _swapped_inputs(entry: Path) -> None:
    """Two numbers read in each other's place: the check's inputs differ per slot."""
    meta = json.loads((entry / "entry.json").read_text())
    numbers = [i for i, slot in enumerate(meta["slots"]) if slot is not None and slot[0] == 3]
    i, j = numbers[:2]
    meta["slots"][i], meta["slots"][j] = meta["slots"][j], meta["slots"][i]
    (entry / "entry.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_garbage_library, _broken_source, _other_fingerprint, _foreign_key, _torn,
                                    _swapped_inputs],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_or_foreign_entry_is_compiled_again(damage, filled, inductor, tmp_path):
    source, first = filled
    store = tmp_path / "store"
    shutil.copytree(source, store)
    for entry in _entries(store):
        damage(entry)
    again = _run(_env(inductor, str(store)))
    assert again["loaded"] == 0 and again["compiled"] >= 1
    assert again["digest"] == first["digest"]
    # The bad entries were replaced by good ones, which the next process loads.
    after = _run(_env(inductor, str(store)))
    assert after["loaded"] >= 1 and after["compiled"] == 0
    assert after["digest"] == first["digest"]


def test_processes_starting_at_once_leave_whole_entries(filled, inductor, tmp_path):
    """As DDP workers do: three processes on an empty store compile at once; each entry ends up
    whole, with no temporary directories left, and a later process loads it."""
    _, first = filled
    store = tmp_path / "store"
    env = _env(inductor, str(store))
    children = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert {r["digest"] for r in results} == {first["digest"]}
    assert [p.name for p in (store / "kernels").iterdir() if p.name.startswith(".tmp-")] == []
    assert len(_entries(store)) == len(_entries(filled[0]))
    later = _run(env)
    assert later["loaded"] >= 1 and later["compiled"] == 0 and later["digest"] == first["digest"]


def test_a_store_turned_off_writes_nothing(filled, inductor, tmp_path):
    _, first = filled
    own = tmp_path / "inductor"
    shutil.copytree(inductor, own, ignore=shutil.ignore_patterns("torch_gd"))
    off = _run(_env(own, "0"))
    assert off["loaded"] == 0 and off["compiled"] >= 1 and off["digest"] == first["digest"]
    assert not (own / "torch_gd").exists()


def test_precompile_fills_the_store_a_new_process_loads(filled, inductor, tmp_path):
    _, first = filled
    env = _env(inductor, str(tmp_path / "store"))
    filling = subprocess.run([sys.executable, "-m", "torch_gd.precompile", "SGD:momentum=0.9,weight_decay=0.01"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert filling.returncode == 0, filling.stderr
    later = _run(env)
    assert later["loaded"] >= 1 and later["compiled"] == 0 and later["digest"] == first["digest"]


def test_precompile_reads_configurations_as_keyword_arguments():
    assert precompile.parse("SGD") == ("SGD", {})
    assert precompile.parse("RMSprop:momentum=0.9, centered=True") == ("RMSprop", {"momentum": 0.9, "centered": True})
    with pytest.raises(ValueError, match="unknown optimizer 'Sgd'"):
        precompile.parse("Sgd:momentum=0.9")
    for unreadable in ("SGD:momentum=zz", "SGD:0.9", "SGD:**kw", "SGD:momentum=0.9)"):
        with pytest.raises(ValueError, match="cannot read the arguments"):
            precompile.parse(unreadable)


def test_a_process_with_another_thread_count_compiles_its_own(filled, inductor, tmp_path):
    """Inductor compiles serial loops for one thread and OpenMP loops for more: a kernel stored
    by a process with other threads is not taken."""
    source, first = filled
    store = tmp_path / "store"
    shutil.copytree(source, store)
    env = {**_env(inductor, str(store)), "OMP_NUM_THREADS": "1" if first["threads"] != 1 else "2"}
    other = _run(env)
    assert other["loaded"] == 0 and other["compiled"] >= 1 and other["digest"] == first["digest"]
    assert len(_entries(store)) == 2 * len(_entries(source))


def test_what_the_key_does_not_describe_is_not_stored(filled, inductor, tmp_path):
    """Kernels of a rule defined outside torch_gd (its source is not in the key), and kernels
    compiled under Inductor settings changed in Python, are compiled in every process."""
    _, first = filled
    store = tmp_path / "store"
    env = _env(inductor, str(store))
    changed = "import torch._inductor.config as c\nc.cpp.enable_floating_point_contract_flag = 'fast'\n"
    for _ in range(2):
        out = _run(env, changed)
        assert out["loaded"] == 0 and out["compiled"] >= 1
    custom = ("import torch, torch_gd\n"
              "from torch_gd._engine import Spec\n"
              "def halved(p, g, *, first, lr, momentum, dampening, weight_decay, nesterov, maximize,\n"
              "           momentum_buffer=None, scratch=None):\n"
              "    p.sub_(g * lr * 0.5)\n"
              "class Halved(torch_gd.SGD):\n"
              "    _spec = Spec(rule=halved, uses_first=True)\n"
              "p = torch.nn.Parameter(torch.ones(70000))\n"
              "opt = Halved([p], lr=0.1, fused=True)\n"
              "p.grad = torch.ones(70000)\n"
              "opt.step()\n"
              "assert abs(p[0].item() - 0.95) < 1e-6, p[0].item()\n"
              "print(sum(k['loaded'] for k in opt.describe()['kernels']))\n")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", custom], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0"]
    assert _entries(store) == []


def test_a_shared_default_place_is_not_used(filled, inductor, tmp_path):
    """The default place is under the shared temporary directory: where every user can write
    to it, the store is left alone."""
    _, first = filled
    shared = tmp_path / "shared"
    shutil.copytree(inductor, shared, ignore=shutil.ignore_patterns("torch_gd"))
    shared.chmod(0o777)
    out = _run(_env(shared))
    assert out["loaded"] == 0 and out["compiled"] >= 1 and out["digest"] == first["digest"]
    assert not (shared / "torch_gd").exists()


def test_leftovers_of_a_process_that_died_while_saving_are_removed(filled, inductor, tmp_path):
    _, first = filled
    kernels = tmp_path / "store" / "kernels"
    old, recent = kernels / ".tmp-old", kernels / ".tmp-recent"
    for d in (old, recent):
        d.mkdir(parents=True)
        (d / "k0.so").write_bytes(b"partial")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    out = _run(_env(inductor, str(tmp_path / "store")))
    assert out["compiled"] >= 1 and out["digest"] == first["digest"]
    assert not old.exists() and recent.exists()
