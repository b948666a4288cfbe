"""``python -m bench``: the gate's logic on synthetic samplers (deterministic, no wall clock):
interleaved ratios, targets, the failure table and exit code, saved runs and the trend report.
The real metrics' speed is measured by ``python -m bench check`` itself, never asserted here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gate  # noqa: E402


def fixed(per_call: float):
    """A sampler whose n calls 'take' n x per_call seconds."""
    return lambda n: n * per_call


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Two fake metrics (a 10x fast path and a 0.5x one) and a targets file for them."""
    metrics = {
        "fast_ten": gate.Metric("fast_ten", lambda: (fixed(1e-6), fixed(1e-5)), "10x", "fake"),
        "slow_half": gate.Metric("slow_half", lambda: (fixed(2e-6), fixed(1e-6)), "0.5x", "fake"),
    }
    monkeypatch.setattr(gate, "METRICS", metrics)
    targets = tmp_path / "targets.toml"
    targets.write_text('[fast_ten]\nbound = ">= 5"\nwhy = "ten times"\n\n'
                       '[slow_half]\nbound = ">= 0.8"\nwhy = "must not be slower"\n')
    return metrics, targets


def test_measure_interleaves_and_takes_the_median_ratio(synthetic):
    metrics, _ = synthetic
    calls = []

    def spy(tag, per_call):
        def sample(n):
            calls.append(tag)
            return n * per_call
        return sample

    m = gate.Metric("spy", lambda: (spy("fast", 1e-3), spy("ref", 3e-3)), "", "fake")
    res = gate.measure(m, rounds=4, min_time=1e-3, warmup=0)
    assert res.ratio == pytest.approx(3.0) and res.ratio_spread == pytest.approx(0.0, abs=1e-12)
    timed_calls = calls[-8:]  # after calibration: rounds alternate which side goes first
    assert timed_calls == ["fast", "ref", "ref", "fast", "fast", "ref", "ref", "fast"]


def test_targets_judge_and_table(synthetic):
    metrics, path = synthetic
    targets = gate.load_targets(path)
    results = {n: gate.measure(m, rounds=3, min_time=1e-4, warmup=0) for n, m in metrics.items()}
    rows = {r["metric"]: r for r in gate.judge(results, targets)}
    assert rows["fast_ten"]["ok"] and not rows["slow_half"]["ok"]
    table = gate.format_table(list(rows.values()), only_failures=True)
    assert "slow_half" in table and "fast_ten" not in table and "must not be slower" in table


@pytest.mark.parametrize("bad", ['bound = "12"', 'bound = "> 3"', 'bound = ">="'])
def test_malformed_bounds_are_refused(tmp_path, bad):
    path = tmp_path / "t.toml"
    path.write_text(f"[x]\n{bad}\n")
    with pytest.raises(ValueError, match="bound must look like"):
        gate.load_targets(path)


def test_check_exits_1_with_a_table_and_no_traceback(synthetic, monkeypatch, tmp_path, capsys):
    cli = _load_cli()
    _, targets = synthetic
    monkeypatch.setattr(gate, "ROOT", tmp_path)
    monkeypatch.setattr(cli, "_metrics", lambda only: list(gate.METRICS.values()))
    monkeypatch.setattr(cli, "_meta", lambda: {"revision": "test"})
    code = cli.main(["check", "--targets", str(targets), "--rounds", "3", "--min-time", "1e-4"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL: 1 of 2" in out and "Traceback" not in out
    assert out.rstrip().splitlines()[-2].startswith("slow_half")
    saved = list((tmp_path / ".benchmarks").rglob("*.json"))
    assert len(saved) == 1  # the run is kept for the trend report


def test_a_broken_metric_is_a_failed_row(synthetic, monkeypatch, tmp_path, capsys):
    cli = _load_cli()
    _, targets = synthetic

    def boom():
        raise RuntimeError("kernel missing\nsecond line")

    metrics = dict(gate.METRICS, broken=gate.Metric("broken", boom, "", "fake"))
    monkeypatch.setattr(gate, "METRICS", metrics)
    monkeypatch.setattr(cli, "_metrics", lambda only: list(metrics.values()))
    code = cli.main(["check", "--targets", str(targets), "--rounds", "3", "--min-time", "1e-4",
                     "--no-save"])
    out = capsys.readouterr().out
    assert code == 1 and "could not be measured: RuntimeError: kernel missing" in out
    assert "second line" not in out


def test_report_draws_each_ratio_over_the_saved_runs(synthetic, monkeypatch, tmp_path):
    cli = _load_cli()
    metrics, targets = synthetic
    monkeypatch.setattr(gate, "ROOT", tmp_path)
    monkeypatch.setattr(gate, "TARGETS", targets)
    for rev in ("aaa", "bbb"):
        results = {n: gate.measure(m, rounds=3, min_time=1e-4, warmup=0)
                   for n, m in metrics.items()}
        gate.save_run(results, {"revision": rev}, root=tmp_path)
    out = tmp_path / "r.html"
    assert cli.main(["report", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("<svg") == 2 and "fast_ten" in page and "bbb" in page
    import re

    assert not re.search(r'(src|href)="https?://', page)  # self-contained: nothing to fetch


def test_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("check", "compare", "report"):
        assert word in proc.stdout


def _load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "bench" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
