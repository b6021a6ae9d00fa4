"""Suites, run records, resume, divergence and CLI errors, end to end on tiny real data (digits)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main
from bench.config import SuiteError, expand_runs, parse_suite
from bench.runner import execute_run
from bench.store import RunDir
from bench.suite import run_suite
from methods.base import Batch, Method, StepOutput, register
from methods.reference import crop_flip_recipe

TINY = {
    "name": "tiny",
    "dataset": {"name": "digits", "train_per_class": 30, "val_per_class": 5},
    "backbone": {"name": "convnet4"},
    "budget": {"epochs": 2, "batch_size": 32},
    "methods": ["random", "simclr"],
    "eval": {"fewshot_shots": [1, 5], "fewshot_draws": 2},
}


@register("nanloss")
class NaNLoss(Method):
    """Test-only method whose loss becomes NaN at its third step."""

    def __init__(self, backbone, options, ctx):
        super().__init__(backbone, options, ctx)
        self.head = torch.nn.Linear(backbone.feature_dim, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def base_view_recipe(self):
        return crop_flip_recipe(self.ctx.image_size)

    def forward_train(self, batch: Batch) -> StepOutput:
        self.calls += 1
        loss = self.head(self.backbone(batch.views[0])).pow(2).mean()
        return StepOutput(loss * (float("nan") if self.calls.item() >= 3 else 1.0))


def suite_with(**changes):
    raw = json.loads(json.dumps(TINY))
    raw.update(changes)
    return raw


def test_run_ids_are_stable_and_config_hashes():
    a = expand_runs(parse_suite(TINY))
    b = expand_runs(parse_suite(TINY))
    assert [s.run_id for s in a] == [s.run_id for s in b]
    c = expand_runs(parse_suite(suite_with(budget={"epochs": 3, "batch_size": 32})))
    assert a[1].run_id != c[1].run_id


def test_sweep_expands_and_labels_are_readable():
    raw = suite_with(methods=[{"method": "simclr", "options": {"proj_dim": 64},
                               "sweep": {"head_norm": ["bn", "none"]}}], seeds=[0, 1])
    specs = expand_runs(parse_suite(raw))
    assert len(specs) == 4
    assert {s.label for s in specs} == {"simclr[head_norm=bn,proj_dim=64]", "simclr[head_norm=none,proj_dim=64]"}
    assert specs[0].options["temperature"] is None and specs[0].options["proj_dim"] == 64


@pytest.mark.parametrize("raw,needle", [
    (suite_with(methods=["simclrr"]), "unknown method 'simclrr'. Did you mean simclr"),
    (suite_with(budget={"epoch": 2, "batch_size": 32}), "unknown field 'epoch'; allowed fields: epochs, batch_size"),
    (suite_with(methods=[{"method": "simclr", "options": {"temprature": 0.1}}]), "unknown field 'temprature'"),
    (suite_with(dataset={"name": "cifar11"}), "unknown dataset 'cifar11'"),
    (suite_with(backbone={"name": "resnet19"}), "unknown backbone 'resnet19'"),
])
def test_bad_suites_get_one_clear_error(raw, needle):
    with pytest.raises(SuiteError) as err:
        parse_suite(raw)
    assert needle in str(err.value)


def test_methods_filter_rejects_names_not_in_suite():
    with pytest.raises(SuiteError, match="not in suite"):
        expand_runs(parse_suite(TINY), methods=["byol"])
    assert [s.method for s in expand_runs(parse_suite(TINY), methods=["simclr"])] == ["simclr"]


def test_suite_end_to_end_records_summary_and_skip(tmp_path):
    out = run_suite(parse_suite(TINY), tmp_path, progress=False, echo=lambda *a: None)
    suite_dir = tmp_path / "tiny"
    summary = pd.read_csv(suite_dir / "summary.csv")
    assert set(summary["method"]) == {"random", "simclr"}
    assert (summary["status"] == "ok").all()
    for col in ("method", "seed", "status", "knn_top1", "wall_s", "linear_top1", "fewshot_1", "train_flops"):
        assert col in summary.columns
    assert summary["knn_top1"].between(0, 1).all()
    rec = json.loads((suite_dir / out["specs"][1].run_id / "record.json").read_text())
    assert rec["epochs_done"] == 2 and len(rec["history"]) == 2
    assert rec["protocols"]["knn"] and "best_C" in rec["protocols"]["linear"]
    env = json.loads((suite_dir / out["specs"][1].run_id / "environment.json").read_text())
    assert env["versions"]["torch"] and "device" in env
    # a rerun skips finished runs: records are returned untouched
    mtime = (suite_dir / out["specs"][1].run_id / "record.json").stat().st_mtime
    run_suite(parse_suite(TINY), tmp_path, progress=False, echo=lambda *a: None)
    assert (suite_dir / out["specs"][1].run_id / "record.json").stat().st_mtime == mtime


def test_resume_is_exact(tmp_path):
    spec = expand_runs(parse_suite(suite_with(eval={"linear": False, "fewshot": False, "monitor_every": 0})),
                       methods=["simclr"])[0]
    straight = execute_run(spec, tmp_path / "a", progress=False)
    part = execute_run(spec, tmp_path / "b", progress=False, stop_after_epochs=1)
    assert part["status"] == "unfinished" and (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = execute_run(spec, tmp_path / "b", progress=False)
    assert resumed["resumed"] is True and resumed["epochs_done"] == 2
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["metrics"]["knn_top1"] == resumed["metrics"]["knn_top1"]
    assert [r["epoch"] for r in RunDir(tmp_path / "b").read_metrics()] == [1, 2]


def test_divergence_is_recorded_and_suite_goes_on(tmp_path):
    raw = suite_with(methods=["nanloss", "random"])
    run_suite(parse_suite(raw), tmp_path, progress=False, echo=lambda *a: None)
    summary = pd.read_csv(tmp_path / "tiny" / "summary.csv").set_index("method")
    assert summary.loc["nanloss", "status"] == "diverged"
    assert "loss became nan" in summary.loc["nanloss", "reason"]
    assert summary.loc["random", "status"] == "ok"


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(suite_with(methods=["simclr", "bool"])))
    assert main(["run", str(bad), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "methods[1].method" in err and "unknown method 'bool'" in err and "byol" in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_missing_data_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLBENCH_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SSLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite_with(dataset={"name": "cifar10", "train_per_class": 5})))
    assert main(["run", str(p), "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cifar10" in err and "nowhere" in err


def test_dry_run_trains_nothing(tmp_path, capsys):
    root = Path(__file__).resolve().parent.parent
    assert main(["run", str(root / "suites" / "cifar10.yaml"), "--dry-run", "--results-dir", str(tmp_path)]) == 0
    assert "resnet18" not in capsys.readouterr().err
    assert not (tmp_path / "cifar10").exists()


def test_kill_mid_run_then_rerun_completes(tmp_path):
    """A real SIGKILL of `bench run` after the first checkpoint; the rerun resumes and finishes."""
    suite = tmp_path / "k.yaml"
    raw = suite_with(methods=["simclr"], budget={"epochs": 6, "batch_size": 16},
                     eval={"linear": False, "fewshot": False, "monitor_every": 0})
    suite.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "bench", "run", str(suite), "--results-dir", str(tmp_path / "r"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = lambda: list((tmp_path / "r" / "tiny").glob("*/checkpoint.pt"))  # noqa: E731
    deadline = time.time() + 120
    while not ckpts() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpts(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = ckpts()[0].parent
    if (run_dir / "record.json").exists():
        pytest.skip("the run finished before it could be killed")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "ok" and rec["resumed"] is True and rec["epochs_done"] == 6


def test_suite_wide_method_options_apply_where_accepted_and_entries_win():
    raw = suite_with(methods=["random", "simclr", {"method": "byol", "options": {"base_lr": 0.5}}],
                     method_options={"optimizer": "sgd", "base_lr": 0.3, "temperature": 0.2})
    specs = {s.method: s for s in expand_runs(parse_suite(raw))}
    assert specs["simclr"].options["temperature"] == 0.2 and specs["simclr"].options["optimizer"] == "sgd"
    assert "temperature" not in specs["byol"].options  # BYOL has no temperature: not applied
    assert specs["byol"].options["base_lr"] == 0.5 and specs["byol"].options["optimizer"] == "sgd"
    assert specs["simclr"].label == "simclr"  # suite-wide options do not clutter labels
    with pytest.raises(SuiteError, match="method_options: unknown field"):
        parse_suite(suite_with(method_options={"temprature": 0.2}))


def test_failing_protocol_keeps_the_others(monkeypatch):
    import bench.eval.run as er
    from bench.config import EvalConfig
    from bench.train import load_run_data

    spec = expand_runs(parse_suite(TINY))[0]
    data = load_run_data(spec)
    monkeypatch.setattr(er, "few_shot", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    enc = __import__("bench.backbones", fromlist=["build_backbone"]).build_backbone("convnet4", in_channels=1,
                                                                                     image_size=8)
    out = er.evaluate(enc, data, EvalConfig(fewshot_draws=2, fewshot_shots=(1,)), torch.device("cpu"), 0)
    assert out["protocols"]["fewshot"] == {"error": "RuntimeError: boom"}
    assert 0 <= out["metrics"]["knn_top1"] <= 1 and 0 <= out["metrics"]["linear_top1"] <= 1
    assert out["protocols"]["semi_supervised"]["semi_skipped_fractions"] == [0.01, 0.1]  # 240 labels only


def test_sgd_linear_protocol_runs_through_evaluate():
    import bench.eval.run as er
    from bench.backbones import build_backbone
    from bench.config import EvalConfig
    from bench.train import load_run_data

    data = load_run_data(expand_runs(parse_suite(TINY))[0])
    enc = build_backbone("convnet4", in_channels=1, image_size=8)
    cfg = EvalConfig(knn=False, fewshot=False, semi_supervised=False, linear_protocol="sgd", sgd_epochs=2)
    out = er.evaluate(enc, data, cfg, torch.device("cpu"), 0)
    assert 0 <= out["metrics"]["linear_top1"] <= 1
    lin = out["protocols"]["linear"]
    assert lin["best_lr"] in lin["grid"] and lin["val_top1"] == lin["grid"][lin["best_lr"]]
