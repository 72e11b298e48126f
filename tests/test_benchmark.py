"""The benchmark harness (``python -m torch_gd.benchmark``) on tiny sets: its rows, ratios and
files, the sets and param-group layouts, the timers, and the measurements that run in a
subprocess."""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import torch_gd
from torch_gd.benchmark import cli, groups, isolated, measure, optimizers, progress, sets
from torch_gd.benchmark.run import Config, run
from torch_gd.benchmark.timing import CpuTimer, EventTimer, WallTimer, timer_for

from .helpers import benchmark_script

ROOT = Path(__file__).resolve().parent.parent

# Implementations that compile nothing, so a run takes well under a second.
PREBUILT = ["torch-for-loop", "torch-foreach", "torch-fused", "torch_gd-default"]
SHORT = ["--rounds", "3", "--steps-per-round", "2", "--no-memory", "--no-compile-time"]
USER_MODULE = "bench_user_model"
# Each small set's elements and the shape of one input it runs on.
SMALL_SETS = {"mlp-policy": (84_488, (64,)), "lenet": (61_706, (1, 28, 28)), "mlp-layernorm": (102_410, (128,))}
ROW_TYPES = {
    "optimizer": str, "set": str, "tensors": int, "elements": int, "param_mb": float, "groups": str,
    "param_groups": int, "impl": str,
    "device": str, "dtype": str, "median_ms": float, "iqr_ms": float, "vs_torch_best": (float, type(None)),
    "vs_torch_best_eager": (float, type(None)), "bytes_per_step": int, "gb_per_s": float,
    "bandwidth_fraction": float, "peak_growth_mb": (float, type(None)), "first_step_s": (float, type(None)),
    "second_step_ms": (float, type(None)), "one_group_ms": (float, type(None)),
}
META_TYPES = {"torch_gd": str, "torch": str, "device": str, "device_name": str, "dtype": str, "threads": int,
              "machine": str, "command": str, "rounds": int, "steps_per_round": int, "timer": str, "notes": list,
              "load_average": (float, type(None))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One CLI run on 20 tensors of 100 elements, and the directory it wrote into."""
    out = tmp_path_factory.mktemp("benchmark")
    argv = ["--sets", "20x100", "--optimizers", "Adam", "SGD", "RMSprop", "--impls", *PREBUILT, *SHORT,
            "--out", str(out)]
    return cli.main(argv), argv, out


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2 small's param names and element count, built once (not its 0.5 GB of tensors)."""
    named = sets.named("gpt2-small")
    return [n for n, _ in named], sum(t.numel() for _, t in named)


@pytest.fixture(scope="module")
def layout_sets():
    """The names and tensors of sets the layouts are checked on: the small models, NxM (no
    named blocks), resnet18."""
    pytest.importorskip("torchvision")
    return {name: tuple(zip(*sets.named(name))) for name in (*sets.SMALL, "30x5", "resnet18")}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module of parameter builders on sys.path, as ``--set module:function`` finds it."""
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent("""
        import torch

        def model():
            return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def tensors():
            return (torch.randn(5), torch.randn(3, 3))

        def big():
            return [torch.randn(250_000) for _ in range(4)]

        def nothing():
            return 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    return USER_MODULE


def _by_case(rows):
    by_case = defaultdict(dict)
    for r in rows:
        by_case[r["optimizer"], r["set"], r["groups"]][r["impl"]] = r
    return by_case


def test_json_has_meta_and_typed_rows(tiny_run):
    result, argv, out = tiny_run
    written = json.loads((out / "cpu_fp32.json").read_text())
    assert written == result
    for key, kind in META_TYPES.items():
        assert isinstance(written["meta"][key], kind), key
    assert shlex.split(written["meta"]["command"])[:3] == ["python", "-m", "torch_gd.benchmark"]
    assert cli.parser().parse_args(shlex.split(written["meta"]["command"])[3:]) == cli.parser().parse_args(argv)
    for row in written["rows"]:
        assert set(row) == set(ROW_TYPES)
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (key, row[key])
    assert {(r["optimizer"], r["impl"]) for r in written["rows"]} == {
        (o, i) for o in ("Adam", "SGD", "RMSprop") for i in ("torch for-loop", "torch foreach", "torch fused",
                                                               "torch_gd default")
    } - {("RMSprop", "torch fused")}
    assert any("RMSprop" in n and "fused" in n for n in written["meta"]["notes"])
    assert [t["set"] for t in written["triad"]] == ["20x100"]


def test_ratios_are_the_runs_own_medians(tiny_run):
    for (optimizer, _, _), impls in _by_case(tiny_run[0]["rows"]).items():
        eager = min(impls[i]["median_ms"] for i in optimizers.TORCH_EAGER)
        best = min(impls[i]["median_ms"] for i in optimizers.TORCH if i in impls)
        for r in impls.values():
            assert r["vs_torch_best"] == pytest.approx(r["median_ms"] / best, rel=1e-12)
            assert r["vs_torch_best_eager"] == pytest.approx(r["median_ms"] / eager, rel=1e-12)


def test_bandwidth_is_bytes_over_time_and_a_fraction_of_the_runs_best(tiny_run):
    result = tiny_run[0]
    everything = result["rows"] + result["triad"]
    best = max(r["gb_per_s"] for r in everything)
    for r in result["rows"]:
        assert r["bytes_per_step"] == r["elements"] * optimizers.bytes_per_element(r["optimizer"], torch.float32)
    for r in everything:
        assert r["gb_per_s"] == pytest.approx(r["bytes_per_step"] / (r["median_ms"] / 1e3) / 1e9, rel=1e-12)
        assert r["bandwidth_fraction"] == pytest.approx(r["gb_per_s"] / best, rel=1e-12)
        assert 0 < r["bandwidth_fraction"] <= 1
    assert result["triad"][0]["bytes_per_step"] == 3 * 4 * 20 * 100


@pytest.mark.parametrize("optimizer,dtype,expected", [
    ("Adam", torch.float32, 28), ("AdamW", torch.float32, 28), ("Adam", torch.bfloat16, 14),
    ("SGD", torch.float32, 20), ("Adagrad", torch.float32, 20), ("RMSprop", torch.float32, 28),
])
def test_bytes_per_element_count_each_tensor_read_and_written(optimizer, dtype, expected):
    assert optimizers.bytes_per_element(optimizer, dtype) == expected


def test_csv_has_the_same_rows(tiny_run):
    result, _, out = tiny_run
    with (out / "cpu_fp32.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert written == [{k: "" if v is None else str(v) for k, v in r.items()} for r in result["rows"]]


def test_png_is_written(tiny_run):
    pytest.importorskip("matplotlib")
    png = tiny_run[2] / "cpu_fp32.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_runs_without_matplotlib_and_tqdm(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)
    cli.main(["--sets", "10x10", "--optimizers", "SGD", "--impls", *PREBUILT, *SHORT, "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "matplotlib not installed: no PNG (pip install torch_gd[plot])" in printed
    assert "tqdm not installed" in printed and "[2/2] SGD 10x10 groups=one step time" in printed
    assert not (tmp_path / "cpu_fp32.png").exists() and (tmp_path / "cpu_fp32.json").exists()


def _one_case(**kw):
    config = Config(optimizers=["SGD"], sets=["3x10"], impls=["torch for-loop"], rounds=1, steps_per_round=1, **kw)
    return run(config, make_progress=progress.Lines)


def test_a_busy_machine_is_noted(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (1000.0, 1000.0, 1000.0))
    result = _one_case(memory=False, compile_time=False)
    assert result["meta"]["load_average"] == 1000.0
    assert any(n.startswith("machine busy: load average 1000.0") for n in result["meta"]["notes"])


def test_a_failed_measurement_becomes_a_note_not_the_end_of_the_run(monkeypatch):
    def fail(case):
        raise RuntimeError(f"peak_memory of {case['set']} failed: boom")
    monkeypatch.setattr(isolated, "peak_memory", fail)
    result = _one_case(memory=True, compile_time=False)
    assert result["rows"][0]["peak_growth_mb"] is None and result["rows"][0]["median_ms"] > 0
    assert "peak_memory of 3x10 failed: boom" in result["meta"]["notes"]


def test_a_users_set_through_its_import_path(user_module, tmp_path, capsys):
    result = cli.main(["--set", f"{user_module}:model", "--optimizers", "Adagrad",
                       "--impls", "torch for-loop", "torch_gd-default", *SHORT, "--out", str(tmp_path)])
    assert [(r["tensors"], r["elements"], r["impl"]) for r in result["rows"]] == [
        (4, 10 * 8 + 8 + 8 * 2 + 2, "torch for-loop"), (4, 10 * 8 + 8 + 8 * 2 + 2, "torch_gd default")]
    # Without torch's foreach and fused steps there is nothing to divide by.
    assert all(r["vs_torch_best"] is None and r["vs_torch_best_eager"] is None for r in result["rows"])
    printed = capsys.readouterr().out
    assert f"{user_module}:model" in printed and "no PNG" in printed


def test_sets_build_the_same_tensors_every_time(user_module, gpt2):
    first, again = sets.build(f"{user_module}:tensors"), sets.build(f"{user_module}:tensors")
    assert [t.shape for t in first] == [(5,), (3, 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [t.shape for t in sets.build("3x7")] == [(7,)] * 3
    assert gpt2[1] == 124_439_808


def test_sets_name_their_params(user_module, gpt2):
    assert [n for n, _ in sets.named(f"{user_module}:model")] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in sets.named(f"{user_module}:tensors")] == ["t0", "t1"]
    assert [n for n, _ in sets.named("3x7")] == ["t0", "t1", "t2"]
    names = gpt2[0]
    assert len(names) == 148 and names[:3] == ["wte.weight", "wpe.weight", "h.0.ln_1.weight"]
    assert names[-3:] == ["h.11.mlp.c_proj.bias", "ln_f.weight", "ln_f.bias"]


@pytest.mark.parametrize("name", sets.SMALL)
def test_small_sets_are_models_of_their_stated_size(name):
    elements, input_shape = SMALL_SETS[name]
    assert sets.check(name) == name
    assert sum(t.numel() for t in sets.build(name)) == elements and 5_000 <= elements <= 300_000
    assert sets.SMALL_MODELS[name]()(torch.randn(2, *input_shape)).shape[0] == 2


@pytest.mark.parametrize("name", ["resnet7", f"{USER_MODULE}:missing", "no_such_module_here:build"])
def test_unknown_sets_are_rejected_before_running(name, user_module):
    with pytest.raises(ValueError, match=name.partition(":")[0]):
        sets.check(name)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--sets", name])


def test_a_builder_must_return_a_module_or_tensors(user_module):
    with pytest.raises(ValueError, match="nn.Module or a non-empty iterable of tensors"):
        sets.build(f"{user_module}:nothing")


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
@pytest.mark.parametrize("kind", groups.LAYOUTS)
def test_each_layout_puts_every_param_in_exactly_one_group(kind, optimizer, layout_sets):
    decay = optimizers.OPTIMIZERS[optimizer].kwargs.get("weight_decay", groups.WEIGHT_DECAY)
    for names, tensors in layout_sets.values():
        layout = groups.layout(kind, optimizer, names, tensors)
        assert sorted(i for g in layout for i in g.indices) == list(range(len(tensors)))
        assert all(g.indices for g in layout)
        if kind == "one":
            assert layout == [groups.Group(tuple(range(len(tensors))), {})]
        if kind == "two":
            for g in layout:
                assert g.options == {"weight_decay": decay if tensors[g.indices[0]].ndim >= 2 else 0.0}
                assert len({tensors[i].ndim >= 2 for i in g.indices}) == 1
        if kind == "tensor":
            assert len(layout) == len(tensors)


def _resnet18_depth(name):
    """conv1/bn1 0, the blocks layer1.0 … layer4.1 1 … 8, fc 9."""
    block = re.match(r"layer(\d)\.(\d)\.", name)
    return 1 + 2 * (int(block[1]) - 1) + int(block[2]) if block else 9 * name.startswith("fc")


def test_block_depths_follow_the_models_blocks(layout_sets, gpt2):
    torchvision = pytest.importorskip("torchvision")
    resnet = layout_sets["resnet18"][0]
    assert groups.depths(resnet) == [_resnet18_depth(n) for n in resnet]
    # torchvision's ViT-B/16 names, 3 layers of a tiny width: encoder_layer_N is N+1.
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=3, num_heads=2,
                                               hidden_dim=8, mlp_dim=16)
    vit_names = [n for n, _ in vit.named_parameters()]
    layer = [re.search(r"encoder_layer_(\d+)\.", n) for n in vit_names]
    assert groups.depths(vit_names) == [int(m[1]) + 1 if m else 4 * n.startswith(("encoder.ln", "heads"))
                                        for m, n in zip(layer, vit_names)]
    block = [re.match(r"h\.(\d+)\.", n) for n in gpt2[0]]
    assert groups.depths(gpt2[0]) == [int(m[1]) + 1 if m else 13 * n.startswith("ln_f")
                                      for m, n in zip(block, gpt2[0])]
    assert groups.depths(layout_sets["mlp-layernorm"][0]) == [0] * 4 + [1] * 4 + [2] * 2
    # No named blocks: 12 chunks of consecutive tensors, or one a tensor.
    assert groups.depths(layout_sets["30x5"][0]) == [i * 12 // 30 for i in range(30)]
    assert groups.depths(["t0", "t1", "t2"]) == [0, 1, 2]


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
def test_block_lrs_decay_by_0_8_a_block(optimizer, layout_sets):
    names, tensors = layout_sets["resnet18"]
    layout = groups.layout("block", optimizer, names, tensors)
    lr = optimizers.OPTIMIZERS[optimizer].kwargs["lr"]
    assert [g.options for g in layout] == [{"lr": pytest.approx(lr * 0.8**d)} for d in range(10)]
    depths = groups.depths(names)
    assert [{depths[i] for i in g.indices} for g in layout] == [{d} for d in range(10)]
    by_param = dict(sorted((i, g.options["lr"]) for g in layout for i in g.indices))
    assert list(by_param.values()) == sorted(by_param.values(), reverse=True), "lr falls from stem to head"


@pytest.mark.parametrize("kind", groups.LAYOUTS)
def test_torch_and_torch_gd_take_each_layout_alike(kind):
    """Every implementation builds with the layout's groups (torch fused: every group fused) and
    one step puts the params where torch's for-loop does."""
    names, params = sets.named_parameters("mlp-layernorm", "cpu", torch.float32)
    layout = groups.layout(kind, "SGD", names, params)
    stepped = {}
    for impl in optimizers.IMPLS:
        opt = optimizers.build("SGD", impl, groups.apply(layout, sets.clone(params)))
        opt.step()
        assert [len(g["params"]) for g in opt.param_groups] == [len(g.indices) for g in layout]
        assert all(og[k] == v for og, g in zip(opt.param_groups, layout) for k, v in g.options.items())
        assert all(og.get("fused") for og in opt.param_groups) == impl.endswith("fused")
        stepped[impl] = [p.detach() for g in opt.param_groups for p in g["params"]]
    for impl, values in stepped.items():
        for got, want in zip(values, stepped["torch for-loop"]):
            torch.testing.assert_close(got, want, msg=impl)


def test_a_run_times_each_layout_against_torch_with_the_same_groups(tmp_path, capsys):
    result = cli.main(["--sets", "mlp-policy", "--groups", "two", "tensor", "--optimizers", "SGD", "--impls",
                       *PREBUILT, *SHORT, "--out", str(tmp_path)])
    by_case = _by_case(result["rows"])
    assert set(by_case) == {("SGD", "mlp-policy", "two"), ("SGD", "mlp-policy", "tensor")}
    for (_, _, kind), impls in by_case.items():
        assert len(impls) == 4 and {r["param_groups"] for r in impls.values()} == {2 if kind == "two" else 6}
        best = min(impls[i]["median_ms"] for i in optimizers.TORCH)
        for r in impls.values():
            assert r["vs_torch_best"] == pytest.approx(r["median_ms"] / best, rel=1e-12)
    assert "mlp-policy  two" in capsys.readouterr().out


def test_quick_changes_only_the_defaults():
    def config(*argv):
        return cli.config(cli.parser().parse_args(argv))

    quick = config("--quick")
    assert (quick.sets, quick.memory, quick.compile_time, quick.rounds) == (sets.QUICK, False, False, 3)
    asked = config("--quick", "--memory", "--rounds", "5", "--impls", "torch_gd-fused")
    assert (asked.memory, asked.compile_time, asked.rounds, asked.impls) == (True, False, 5, ["torch_gd fused"])
    full = config()
    assert (full.sets, full.memory, full.compile_time, full.rounds) == (sets.DEFAULT, True, True, 7)
    assert full.groups == ["one"]


class FakeEvent:
    """Stands in for torch.cuda.Event: logs its records and reports a known elapsed time."""

    def __init__(self, log, enable_timing=False):
        assert enable_timing
        self.log = log

    def record(self):
        self.log.append(("record", self))

    def elapsed_time(self, end):
        assert ("record", self) in self.log and ("record", end) in self.log
        return 12.5


def test_event_timer_times_between_events_after_synchronizing():
    log = []
    timer = EventTimer(event=lambda **kw: FakeEvent(log, **kw), synchronize=lambda: log.append("sync"))
    assert timer.seconds(lambda: log.append("call")) == 12.5e-3
    start, call, end = (log.index(e) for e in log if e != "sync")
    assert log[start][0] == "record" and log[call] == "call" and log[end][0] == "record" and start < call < end
    assert "sync" in log[end:], "elapsed_time needs the end event to have happened"


def test_timer_for_picks_the_device_timer():
    assert isinstance(timer_for("cpu"), WallTimer)
    assert isinstance(timer_for("cpu", "cpu"), CpuTimer)
    assert isinstance(timer_for("cuda", "cpu"), EventTimer)  # events are the device's time
    cuda = timer_for("cuda:1")
    assert isinstance(cuda, EventTimer)
    assert cuda.event is torch.cuda.Event and cuda.synchronize is torch.cuda.synchronize


def test_the_cpu_timer_counts_work_not_waiting():
    """A call that sleeps takes wall time and almost no CPU time; one that computes takes both."""
    import time

    timer = CpuTimer()
    assert timer.seconds(lambda: time.sleep(0.05)) < 0.01
    busy = timer.seconds(lambda: sum(range(2_000_000)))
    assert busy > 0.005


class ScriptedTimer:
    """Each call's timed durations are 1, 2, 3, ... seconds, counted per call."""

    def __init__(self, log):
        self.log, self.counts = log, defaultdict(int)

    def seconds(self, fn):
        fn()
        self.counts[self.log[-1]] += 1
        return float(self.counts[self.log[-1]])


def test_interleaving_rotates_the_order_and_reports_median_and_iqr_over_rounds():
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    timings = measure.interleaved(calls, ScriptedTimer(log), rounds=3, per_round=3)
    warm = ["a"] * measure.WARMUP + ["b"] * measure.WARMUP + ["c"] * measure.WARMUP
    assert log == warm + [n for order in ("abc", "bca", "cab") for n in order for _ in range(3)]
    # Rounds time 1-3, 4-6, 7-9 s: round medians 2, 5, 8 s; quartiles 2 and 8.
    assert all(t == measure.Timing(median_ms=5000.0, iqr_ms=6000.0) for t in timings.values())


class FakePeak:
    """Stands in for the CUDA allocator's counters: reports a known growth after a reset."""

    def reset(self):
        self.was_reset = True

    def growth(self):
        assert self.was_reset
        return 3 * 2**20


def test_in_process_peak_memory_reports_the_probes_growth():
    case = {"optimizer": "SGD", "set": "2x10", "groups": "one", "impl": "torch for-loop", "device": "cpu",
            "dtype": "fp32"}
    assert isolated.measure_peak(case, FakePeak()) == {"peak_growth_mb": 3.0}


def test_peak_memory_in_a_subprocess_sees_adams_state(user_module):
    # The child finds the user's set through the parent's sys.path.
    case = {"optimizer": "Adam", "set": f"{user_module}:big", "groups": "one", "impl": "torch for-loop",
            "device": "cpu", "dtype": "fp32"}
    param_mb = 4 * 250_000 * 4 / 2**20
    # Adam keeps two param-sized moments.
    assert isolated.peak_memory(case)["peak_growth_mb"] >= 2 * param_mb * 0.95


def test_first_steps_in_a_subprocess():
    case = {"optimizer": "SGD", "set": "5x10", "groups": "block", "impl": "torch_gd default", "device": "cpu",
            "dtype": "fp32"}
    # The child builds the groups the timed run does: one a tensor here, lr·0.8^depth.
    assert [g["lr"] for g in isolated.param_groups(case)] == pytest.approx([1e-2 * 0.8**d for d in range(5)])
    times = isolated.cold_first_step(case)
    assert set(times) == {"first_step_s", "second_step_ms"} and all(t > 0 for t in times.values())


def test_fused_rows_and_ratios():
    impls = [*optimizers.TORCH, "torch_gd fused"]
    config = Config(optimizers=["SGD"], sets=["20x100"], impls=impls, rounds=2, steps_per_round=1,
                    memory=False, compile_time=False)
    rows = run(config, make_progress=progress.Lines)["rows"]
    by_impl = {r["impl"]: r for r in rows}
    assert list(by_impl) == impls
    best = min(by_impl[i]["median_ms"] for i in optimizers.TORCH)
    assert by_impl["torch_gd fused"]["vs_torch_best"] == pytest.approx(by_impl["torch_gd fused"]["median_ms"] / best)


@pytest.mark.parametrize("optimizer", ["Adam", "SGD", "Adagrad"])
def test_the_floor_takes_torchs_fused_step(optimizer):
    """The floor step (grads read and concatenated, one fused kernel over flat buffers) is a
    whole step: its params end where torch's fused step puts them."""
    from torch_gd.benchmark.floor import Floor

    params = sets.parameters([torch.randn(5), torch.randn(3, 4), torch.randn(7)], "cpu", torch.float32)
    theirs = optimizers.build(optimizer, "torch fused", sets.clone(params))
    floor = Floor(optimizer, sets.clone(params))
    for _ in range(3):
        theirs.step()
        floor()
    # One tensor against three: torch's kernel takes its vector and scalar tail paths at other
    # elements, which round differently by an ulp; fp32's default tolerance covers that.
    for got, p in zip(floor.values(), theirs.param_groups[0]["params"]):
        torch.testing.assert_close(got, p.detach())


def test_floor_script_records_every_part_against_torch_fused(tmp_path):
    script = benchmark_script("floor")
    out = tmp_path / "floor.json"
    result = script.main(["--sets", "20x100", "--optimizers", "SGD", "--rounds", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    rows = {r["what"]: r for r in result["rows"]}
    assert set(rows) == {"torch fused", "torch_gd fused", "floor: read + cat + kernel", "read grads",
                         "read + cat", "kernel on flat buffers"}
    assert rows["torch fused"]["vs_torch_fused"] == 1
    for r in rows.values():
        assert r["median_ms"] > 0 and r["vs_torch_fused"] == pytest.approx(r["median_ms"] / rows["torch fused"]["median_ms"])


def test_fixed_cost_script_records_small_sets_and_layouts(tmp_path, capsys):
    script = benchmark_script("fixed_cost")
    out = tmp_path / "fixed_cost.json"
    result = script.main(["--rounds", "1", "--steps-per-round", "1", "--optimizers", "SGD", "--small-sets",
                          "mlp-policy", "--group-sets", "lenet", "--groups", "tensor", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert {(r["set"], r["groups"], r["impl"]) for r in result["rows"]} == {
        ("mlp-policy", "one", i) for i in optimizers.IMPLS} | {
        ("lenet", kind, i) for kind in ("one", "tensor") for i in script.GROUP_IMPLS}
    assert [t["set"] for t in result["triad"]] == ["mlp-policy", "lenet"]
    # A layout's rows carry their own one-group time, taken in the same rounds; one group's do not.
    for r in result["rows"]:
        assert (r["one_group_ms"] is not None) == (r["groups"] == "tensor"), r
    printed = capsys.readouterr().out
    assert "/torch fused" in printed and "/one group" in printed and str(out) in printed


def test_host_time_script_takes_host_as_step_minus_kernels_alone(tmp_path):
    script = benchmark_script("host_time")
    out = tmp_path / "host.json"
    rows = script.main(["--sets", "lenet", "--optimizers", "SGD", "--rounds", "2", "--steps", "1", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    (row,) = rows
    for impl in ("torch fused", "torch_gd fused"):
        timed = row[impl]
        assert timed["step_us"] > 0 and timed["kernels_us"] > 0
        assert timed["host_us"] == pytest.approx(timed["step_us"] - timed["kernels_us"])
    assert row["host ours/torch"] == pytest.approx(row["torch_gd fused"]["host_us"] / row["torch fused"]["host_us"])


def test_host_phases_script_times_each_phase_both_ways_and_restores_the_engine(tmp_path):
    script = benchmark_script("host_phases")
    originals = [owner.__dict__[name] for owner, name, _ in script.PHASES]
    run_call = script._fused.run_call
    out = tmp_path / "phases.json"
    rows = script.main(["--sets", "lenet", "--optimizers", "SGD", "--rounds", "2", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    phases = {"step", *(phase for _, _, phase in script.PHASES)}
    for mode in ("kernels run", "kernels stubbed"):
        assert set(rows[0][mode]) == phases
        # lenet's params are all large for a fused group: its steady step is the lane and checks.
        assert rows[0][mode]["lane"] > 0 and rows[0][mode]["checks"] > 0 and rows[0][mode]["buckets"] == 0
    assert [owner.__dict__[name] for owner, name, _ in script.PHASES] == originals
    assert script._fused.run_call is run_call and script._lane.run_call is run_call


def test_segments_script_times_every_way_numbers_reach_a_bucket_and_they_agree(tmp_path):
    script = benchmark_script("segments")
    out = tmp_path / "segments.json"
    rows = script.main(["--sets", "lenet", "--rounds", "1", "--steps-per-round", "1", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    named = sets.named("lenet")
    depth = groups.depths([n for n, _ in named])
    small = [i for i, (_, t) in enumerate(named) if t.numel() <= script._engine.FUSED_PACK_MAX_NUMEL]
    segments = {"tensor": len(small), "block": len({depth[i] for i in small})}
    assert {(r["optimizer"], r["layout"]) for r in rows} == {(o, l) for o in ("AdamW", "SGD") for l in ("tensor", "block")}
    for r in rows:
        assert r["params"] == len(small) and r["numel"] == sum(named[i][1].numel() for i in small)
        assert r["segments"] == segments[r["layout"]] > 1
        assert set(r["us"]) == {*script.VARIANTS, "copies", "numbers"} and all(us > 0 for us in r["us"].values())
        # One step from the same start: the per-group kernel is the reference. The others read the
        # same numbers per element (a table entry, or its fp32 copy), which compiled code may round
        # differently by an ulp, as any two compiled fp32 kernels of the same maths may.
        assert r["agreement_ulps"]["per group"] == 0
        for name in ("table int32", "table int16", "per element"):
            assert r["agreement_ulps"][name] <= 2, (r["optimizer"], r["layout"], name)


def test_fused_packing_script_plans_each_variant_with_its_thresholds_and_restores_them(tmp_path):
    script = benchmark_script("fused_packing")
    before = (script._engine.FUSED_PACK_MAX_NUMEL, script._engine.FUSED_PACK_MIN_PARAMS)
    out = tmp_path / "packing.json"
    record = script.main(["--sets", "40x100", "--optimizers", "SGD", "--rounds", "1", "--steps-per-round", "1",
                          "--json", str(out)])
    assert json.loads(out.read_text()) == record
    (row,) = record["rows"]
    # 40 params of 100 elements: packed where 16 suffice, per tensor where 256 are needed or nothing
    # packs. With the private APIs off, fused groups pack as eager ones: every variant alike.
    if record["private_apis"]:
        assert row["buckets"] == {"current": [[40, 4000]], "min 256": [], "never": []}
    else:
        assert row["buckets"] == dict.fromkeys(script.VARIANTS, [[40, 4000]])
    assert set(row["vs_torch_fused"]) == {"torch fused", *script.VARIANTS} and row["vs_torch_fused"]["torch fused"] == 1
    assert (script._engine.FUSED_PACK_MAX_NUMEL, script._engine.FUSED_PACK_MIN_PARAMS) == before


def test_eager_runs_script_plans_each_variant_and_restores_what_it_set(tmp_path):
    script = benchmark_script("eager_runs")
    spec = torch_gd.SGD._spec
    before = (script._engine.PACK_MAX_NUMEL, script._engine.RUN_MAX_NUMEL, spec.pack_max_numel, spec.pack_min_params)
    out = tmp_path / "runs.json"
    record = script.main(["--sets", "40x100", "3x40000", "--optimizers", "SGD", "--rounds", "1",
                          "--steps-per-round", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == record
    few, large = record["rows"]
    # 40 params of 100 elements: packed by every packing variant, one run of 40 with none.
    assert few["plans"]["no packing"] == {"buckets": [], "runs": [40]}
    assert all(plan == {"buckets": [40], "runs": []} for name, plan in few["plans"].items() if name != "no packing")
    # 3 params of 40000 elements: never packed; one run of 3, or 3 runs of one.
    assert large["plans"]["one by one"] == {"buckets": [], "runs": [1, 1, 1]}
    assert all(plan == {"buckets": [], "runs": [3]} for name, plan in large["plans"].items() if name != "one by one")
    for row in record["rows"]:
        assert set(row["vs_torch_eager"]) == {"torch for-loop", "torch foreach", *script.VARIANTS}
        assert min(row["vs_torch_eager"]["torch for-loop"], row["vs_torch_eager"]["torch foreach"]) == 1
    assert (script._engine.PACK_MAX_NUMEL, script._engine.RUN_MAX_NUMEL, spec.pack_max_numel,
            spec.pack_min_params) == before


def test_eager_groups_script_splits_a_group_per_tensor_into_host_work_and_rule_ops(tmp_path):
    script = benchmark_script("eager_groups")
    out = tmp_path / "eager_groups.json"
    (row,) = script.main(["--sets", "lenet", "--optimizers", "SGD", "--rounds", "1", "--steps-per-round", "1",
                          "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == [row]
    us = row["us"]
    assert set(us) == {f"{layout}, {rule}" for layout in script.LAYOUTS for rule in ("rule", "no-op rule")}
    assert row["tensor / one"] == pytest.approx(us["tensor, rule"] / us["one, rule"])
    assert row["host us per extra group"] == pytest.approx(
        (us["tensor, no-op rule"] - us["one, no-op rule"]) / (row["tensors"] - 1))
    # The stub runs the engine's whole step and updates nothing; the optimizer it stands in for does.
    params = sets.parameters(sets.build("lenet"), "cpu", torch.float32)
    before = [p.detach().clone() for p in params]
    script.stubbed(torch_gd.SGD)(params, lr=0.1, momentum=0.9).step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    torch_gd.SGD(params, lr=0.1, momentum=0.9).step()
    assert not any(torch.equal(p, b) for p, b in zip(params, before))
