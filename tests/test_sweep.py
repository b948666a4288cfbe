"""``python -m harness.sweep``: spec errors, a killed sweep resumed, an erroring case recorded,
the local and Ray executors agreeing, and the index page in Chromium.

One small spec (tests/sweep_fixtures/small.toml: two tiny FLUX.1 cases, two refused requests)
runs three times: killed in a subprocess with two local workers, resumed in this process (one
worker: it loads the model once), and on a local Ray instance (two actors: each loads it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.sweep import results
from harness.sweep.cli import main
from harness.sweep.spec import expand

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "tests" / "sweep_fixtures" / "small.toml"
REFUSED = "--dtype must be one of float32, bfloat16, got 'float16'"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------- the spec
def _cases(text: str, tmp_path: Path):
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    import tomllib

    return expand(tomllib.loads(text), spec, tolerance=None, models={"tiny-flux1", "tiny-llava"})


def test_lists_cross_and_include_exclude_follow_the_matrix_rules(tmp_path):
    cases = _cases('model = "tiny-flux1"\nprompt = "p"\nseed = [0, 1]\nsteps = [2, 4]\n'
                   '[[exclude]]\nseed = 1\nsteps = 4\n'
                   '[[include]]\nsteps = 2\nguidance-scale = 5.0\n'      # joins the steps-2 cases
                   '[[include]]\nmodel = "tiny-llava"\nprompt = "q"\n'  # fits none: a case alone
                   'max-new-tokens = 3\n', tmp_path)
    got = [c.values for c in cases]
    assert got == [
        {"model": "tiny-flux1", "prompt": "p", "seed": 0, "steps": 2, "guidance-scale": 5.0},
        {"model": "tiny-flux1", "prompt": "p", "seed": 0, "steps": 4},
        {"model": "tiny-flux1", "prompt": "p", "seed": 1, "steps": 2, "guidance-scale": 5.0},
        {"model": "tiny-llava", "prompt": "q", "max-new-tokens": 3, "seed": 0}]
    assert len({c.id for c in cases}) == 4
    # The id hashes the resolved request: key order and spelled-out defaults do not change it.
    same = _cases('steps = 4\nseed = 0\nprompt = "p"\nmodel = "tiny-flux1"\nnoise = "torch"\n',
                  tmp_path)
    assert same[0].id == cases[1].id


@pytest.mark.parametrize("text, needle", [
    ('model = "tiny-flux1"\nprompt = "p"\nstepz = 2\n', "unknown key 'stepz'; allowed: "),
    ('prompt = "p"\nsteps = 2.5\n', "steps = 2.5: --steps takes an integer"),
    ('prompt = "p"\nseed = []\n', "seed is an empty list"),
    ('prompt = "p"\nsteps = [2\n', "invalid TOML"),
    ('seed = [0, 1]\n', "has no prompt"),
    ('prompt = "p"\nseed = [0, 1]\n[[exclude]]\nseed = 7\n', "[[exclude]] #1 (seed = 7) matches"),
    ('prompt = "p"\nmodel = "tiny-flux9"\n', "model = \"tiny-flux9\" is neither a built-in"),
    ('prompt = "p"\nimage = "missing.png"\n', "image = \"missing.png\": no such file"),
    ('prompt = "p"\nguidance-scale = "high"\n', "--guidance-scale takes a number"),
    ('prompt = "p"\ntolerance = 0.1\n', "unknown key 'tolerance'"),
])
def test_a_spec_error_is_refused_in_one_line(tmp_path, capsys, text, needle):
    spec, out = tmp_path / "bad.toml", tmp_path / "out"
    spec.write_text(text)
    assert main([str(spec), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {spec}: "), err
    assert needle in err, err
    assert not out.exists()


def test_cli_refuses_before_importing_torch(tmp_path):
    spec, out = tmp_path / "bad.toml", tmp_path / "out"
    spec.write_text('model = "tiny-flux1"\nprompt = "p"\nsteps = [2, "four"]\n')
    code = ("import runpy, sys\n"
            f"sys.argv = ['harness.sweep', {str(spec)!r}, '--output-dir', {str(out)!r}]\n"
            "try:\n    runpy.run_module('harness.sweep', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "sys.exit(10 + len(heavy) if heavy else code)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f'error: {spec}: steps = "four": --steps takes an integer\n'
    assert proc.stdout == "" and not out.exists()


def test_a_partial_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "verdict": "bitwise"}\n{"id": "b", "verd')
    assert list(results.read(path)) == ["a"]
    results.repair(path)
    results.append(path, {"id": "b", "verdict": "pass", "worst": float("inf")})
    assert results.read(path) == {"a": {"id": "a", "verdict": "bitwise"},
                                  "b": {"id": "b", "verdict": "pass", "worst": None}}


# ---------------------------------------------------------------------------------- running it
@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The small spec killed (SIGKILL to the driver) after its first result with two local
    worker processes, then resumed here with one; what each stage left."""
    out = tmp_path_factory.mktemp("sweep") / "local"
    jsonl = out / "results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.sweep", str(SMALL), "--output-dir", str(out),
         "--workers", "2", "--threads", "1", "--quiet"], cwd=REPO, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no case finished"
            time.sleep(0.05)
        proc.kill()  # the driver only: its workers must end with it
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid):
            assert time.monotonic() < deadline, "worker processes outlived the killed driver"
            time.sleep(0.1)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    before = jsonl.read_bytes()
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cases/*/result.json")}
    code, stdout = _main_capturing([str(SMALL), "--output-dir", str(out), "--threads", "1",
                                    "--quiet"])
    return {"out": out, "before": before, "stamps": stamps, "code": code,
            "summary": _summary(stdout)}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _main_capturing(argv) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_resume_runs_only_the_missing_cases(resumed):
    out, before = resumed["out"], resumed["before"]
    done_before = [json.loads(line) for line in before.decode().splitlines() if line.strip()]
    assert 1 <= len(done_before) < 4, "the kill came too late to test a resume"
    after = (out / "results.jsonl").read_bytes()
    assert after.startswith(before)  # earlier lines untouched, new ones appended
    ids = [r["id"] for r in _lines(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 4  # no case ran twice
    s = resumed["summary"]
    assert (s["cases"], s["done"], s["ran"], s["skipped"]) == (4, 4, 4 - len(done_before),
                                                              len(done_before))
    for case_id, stamp in resumed["stamps"].items():  # finished folders were not rewritten
        assert (out / "cases" / case_id / "result.json").stat().st_mtime_ns == stamp
    assert not list((out / "cases").glob(".*"))  # no staging folder of the killed run left


def test_an_erroring_case_is_recorded_and_the_sweep_goes_on(resumed):
    out = resumed["out"]
    records = {(r["values"]["dtype"], r["seed"]): r for r in _lines(out / "results.jsonl")}
    for seed in (0, 1):
        bad = records["float16", seed]
        assert (bad["status"], bad["verdict"], bad["exit_code"], bad["accepted"]) == (
            "error", "error", 2, False)
        assert bad["error"] == REFUSED and bad["output"] is None
        assert not (out / "cases" / bad["id"]).exists()
        good = records["float32", seed]
        assert (good["status"], good["verdict"], good["worst_abs_diff"]) == (
            "done", "bitwise", 0.0), good["error"]
        folder = out / good["output"]
        assert {"image_0.png", "reference_0.png", "parity.json", "result.json"} <= {
            p.name for p in folder.iterdir()}
        assert json.loads((folder / "parity.json").read_text())["verdict"] == "bitwise"
    assert resumed["code"] == 3 and resumed["summary"]["verdicts"] == {"bitwise": 2, "error": 2}
    # The resumed run's one worker (this process) loaded the model once and kept it.
    here = sorted((r for r in records.values() if r["worker"]["pid"] == os.getpid()
                   and r["status"] == "done"), key=lambda r: r["seed"])
    assert [r["loaded_model"] for r in here] == [True] + [False] * (len(here) - 1)
    assert all(r["load_s"] == 0 for r in here[1:])


def test_the_local_and_ray_executors_give_the_same_results(resumed, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, stdout = _main_capturing([str(SMALL), "--output-dir", str(out), "--executor",
                                        "ray", "--workers", "2", "--threads", "1", "--quiet"])
    finally:
        ray.shutdown()
    assert code == 3 and _summary(stdout)["ran"] == 4
    local = {r["id"]: r for r in _lines(resumed["out"] / "results.jsonl")}
    remote = {r["id"]: r for r in _lines(out / "results.jsonl")}
    assert local.keys() == remote.keys()
    keys = ("status", "verdict", "exit_code", "worst_abs_diff", "image_max_abs_diff", "error",
            "output", "model", "seed")
    for case_id, mine in local.items():
        theirs = remote[case_id]
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}, (mine, theirs)
        assert theirs["worker"]["executor"] == "ray"
        if mine["output"]:
            for name in ("image_0.png", "reference_0.png"):
                assert (out / mine["output"] / name).read_bytes() == \
                    (resumed["out"] / mine["output"] / name).read_bytes()
    # Each actor loads the model once (here: each ran one case on a fresh load; the local
    # run kept its model for the second case, so the same bytes mean a kept model carries no
    # state from one case to the next).
    ran = [r for r in remote.values() if r["status"] == "done"]
    assert sum(r["loaded_model"] for r in ran) == len({r["worker"]["actor"] for r in ran})


def test_index_page_in_chromium(resumed):
    from tests.browser import check_page

    out = resumed["out"]
    page = check_page(out / "index.html")
    assert page["images_loaded"] and not page["network_requests"], page
    assert not page["console_errors"] and page["svg_count"] >= 2 and not page["empty_svgs"]
    assert page["title"] == "Parity sweep: 2 of 4 cases pass", page["text"][:2000]
    records = _lines(out / "results.jsonl")
    for r in records:
        assert r["id"] in page["text"]
    assert REFUSED in page["text"]
    html = (out / "index.html").read_text()
    for r in records:  # each finished case links its own report page
        if r["output"]:
            assert f'href="{r["output"]}/report.html"' in html
            assert (out / r["output"] / "report.html").is_file()
    # Worst |Δ| first (errors above every number); one click on that column reverses it.
    from tests.browser import _open

    def order(page, *_):
        ids = "rows => rows.map(r => r.cells[0].innerText)"
        first = page.eval_on_selector_all("#cases tbody tr", ids)
        page.click("#cases th:nth-child(3)")
        return first, page.eval_on_selector_all("#cases tbody tr", ids)

    first, clicked = _open(out / "index.html", order)
    errors = {r["id"] for r in records if r["status"] == "error"}
    assert set(first[:2]) == errors == set(clicked[2:]), (first, clicked)
    assert sorted(first) == sorted(clicked) == sorted(r["id"] for r in records)
