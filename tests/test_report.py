"""Report: long table, leaderboards, published column, Pareto front, ablation groups, HTML, CLI.

A fake suite folder with hand-written records (3 methods x 2 seeds, an ablation of SimCLR's
temperature, one diverged run) makes every expected number computable by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.published import PUBLISHED, best_match, lookup, method_key, run_cifar_stem
from bench.report import build_report, report_after_suite
from bench.report.cli import add_report_parser, flops_table, format_flops_table
from bench.report.figures import pareto_front, pooled_ci95
from bench.report.tables import ablation_groups, classify_metric, costs_table, leaderboard, load_runs, long_table

# label -> (method, options_set, {seed: linear_top1}); knn = linear - 0.05, knn20 = linear - 0.06
LINEAR = {
    "random": ("random", {}, {0: 0.30, 1: 0.32}),
    "simclr": ("simclr", {}, {0: 0.80, 1: 0.84}),
    "byol": ("byol", {}, {0: 0.85, 1: 0.87}),
    "simclr[temperature=0.5]": ("simclr", {"temperature": 0.5}, {0: 0.75}),
}
DIVERGED_REASON = "loss became nan at epoch 3, step 12"
N_METRIC_ROWS_OK = 12 + 8 + 3  # metrics (settings excluded) + numeric costs + train/eval/wall seconds


def _metrics(lin: float) -> dict[str, Any]:
    return {"knn_top1": lin - 0.05, "knn_top5": 0.95, "knn20_top1": lin - 0.06, "knn20_top5": 0.94,
            "linear_top1": lin, "fewshot_1": lin - 0.4, "fewshot_1_ci95": 0.02, "fewshot_5": lin - 0.2,
            "fewshot_5_ci95": 0.01, "collapse": 0.1, "effective_rank": 40.0, "feature_dim": 512,
            # protocol settings that evaluate() copies into metrics because they are numbers
            "knn_k": 200, "knn_temperature": 0.1, "fewshot_C": 1.0, "fewshot_draws": 3}


def _record(label: str, method: str, oset: dict[str, Any], seed: int, lin: float | None) -> dict[str, Any]:
    trains = method != "random"
    options = {"temperature": 0.2, **oset} if method == "simclr" else {}
    rec: dict[str, Any] = {
        "run_id": f"{method}-s{seed}-{abs(hash(label)) % 10**6:06d}", "label": label, "method": method, "seed": seed,
        "suite": "fake", "options": options, "options_set": oset, "dataset": "cifar10", "backbone": "resnet18",
        "epochs": 4, "batch_size": 64, "wall_s": 100.0 + seed, "train_s": 80.0 if trains else 0.0, "eval_s": 20.0,
        "history": [{"epoch": e, "loss": 5.0 - e, "lr": 0.1, "images_per_s": 500.0,
                     **({"val_knn_top1": 0.1 * e} if e % 2 == 0 else {})} for e in range(1, 5)] if trains else [],
        "method_record": {"evaluated_layer": "backbone"},
    }
    if lin is None:
        rec.update(status="diverged", reason=DIVERGED_REASON, epochs_done=3)
        return rec
    draws = {f"fewshot_{k}_draws": [lin - d - 0.01, lin - d, lin - d + 0.01] for k, d in ((1, 0.4), (5, 0.2))}
    rec.update(status="ok", epochs_done=4, metrics=_metrics(lin),
               protocols={"knn": {"knn_k": 200, "knn_temperature": 0.1, "knn20_k": 20, "knn20_temperature": 0.07},
                          "linear": {"best_C": 1.0, "val_top1": lin, "grid": {"0.1": lin - 0.1, "1.0": lin},
                                     "val_fraction": 0.2, "protocol": "linear_lbfgs"},
                          "fewshot": {"fewshot_shots": [1, 5], **draws}, "features": {"n_train": 1000}},
               costs={"params_encoder": 11_000_000, "params_trainable": 12_000_000, "inference_gmacs": 0.557,
                      "train_macs": 3e12 if trains else 0, "train_flops": 6e12 if trains else 0,
                      "train_macs_per_image": 3.3e9, "images_per_s": 500.0, "peak_mem_mb": 900.0,
                      "flops_convention": "MACs = multiply-adds (fvcore); FLOPs = 2 x MACs",
                      "inference_unsupported_ops": {"aten::add_": 3}})
    if label == "byol":  # twice the compute of SimCLR: on the Pareto front only through its accuracy
        rec["costs"]["train_flops"] = 1.2e13
    return rec


def _write_run(suite_dir: Path, rec: dict[str, Any]) -> None:
    d = suite_dir / rec["run_id"]
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))
    cfg = {"run_id": rec["run_id"], "label": rec["label"], "method": rec["method"], "seed": rec["seed"],
           "options": rec["options"], "options_set": rec["options_set"], "suite": "fake",
           "dataset": {"name": "cifar10", "image_size": None}, "backbone": {"name": "resnet18", "options": {}},
           "budget": {"epochs": 4, "batch_size": 64}}
    (d / "config.json").write_text(json.dumps(cfg))
    env = {"python": "3.11.9", "versions": {"torch": "2.14.1", "torchvision": "0.29.1"},
           "device": {"type": "cpu", "name": "x86_64"}, "git_commit": "abc123"}
    (d / "environment.json").write_text(json.dumps(env))


@pytest.fixture()
def suite_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fake"
    root.mkdir()
    (root / "suite.json").write_text(json.dumps({"name": "fake", "description": "synthetic records",
                                                 "dataset": {"name": "cifar10"}, "backbone": {"name": "resnet18"},
                                                 "budget": {"epochs": 4, "batch_size": 64}, "seeds": [0, 1]}))
    for label, (method, oset, by_seed) in LINEAR.items():
        for seed, lin in by_seed.items():
            _write_run(root, _record(label, method, oset, seed, lin))
    _write_run(root, _record("simclr[temperature=0.05]", "simclr", {"temperature": 0.05}, 0, None))
    return root


# -- long table ----------------------------------------------------------------------------------------
def test_long_table_shape_columns_and_values(suite_dir: Path) -> None:
    df = long_table(suite_dir)
    n_ok = sum(len(v[2]) for v in LINEAR.values())
    assert len(df) == n_ok * N_METRIC_ROWS_OK + 3  # the diverged run keeps wall/train/eval seconds
    for col in ("run_id", "label", "method", "seed", "status", "protocol", "metric", "value", "dataset", "backbone",
                "epochs", "batch_size", "opt.temperature", "torch", "device", "git_commit"):
        assert col in df.columns, col
    row = df[(df["label"] == "simclr") & (df["seed"] == 1) & (df["metric"] == "linear_top1")]
    assert len(row) == 1 and row["value"].iloc[0] == pytest.approx(0.84) and row["protocol"].iloc[0] == "linear"
    assert set(df.loc[df["label"] == "simclr[temperature=0.5]", "opt.temperature"]) == {0.5}
    assert not df["metric"].isin(["knn_k", "fewshot_C", "fewshot_draws"]).any()  # settings are not metrics
    assert set(df["git_commit"]) == {"abc123"} and set(df["torch"]) == {"2.14.1"}
    div = df[df["status"] == "diverged"]
    assert set(div["metric"]) == {"wall_s", "train_s", "eval_s"} and set(div["reason"]) == {DIVERGED_REASON}


def test_classify_metric() -> None:
    assert classify_metric("knn_top1") == "knn" and classify_metric("knn20_top5") == "knn20"
    assert classify_metric("fewshot_16") == "fewshot" and classify_metric("fewshot_16_ci95") == "fewshot"
    assert classify_metric("linear_top1") == "linear" and classify_metric("label1pct_top1") == "semi"
    assert classify_metric("knn_temperature") is None and classify_metric("fewshot_seed") is None
    assert classify_metric("something_new") == "other"


# -- leaderboards and published numbers ------------------------------------------------------------------
def test_leaderboard_mean_std_nseeds(suite_dir: Path) -> None:
    board = leaderboard(long_table(suite_dir), "linear", "linear_top1").set_index("label")
    assert list(board.index) == ["byol", "simclr", "simclr[temperature=0.5]", "random"]  # best first
    assert board.loc["simclr", "mean"] == pytest.approx(0.82)
    assert board.loc["simclr", "std"] == pytest.approx(math.sqrt(2 * 0.02**2))  # sample std, ddof 1
    assert board.loc["byol", "n_seeds"] == 2 and board.loc["simclr[temperature=0.5]", "n_seeds"] == 1
    assert math.isnan(board.loc["simclr[temperature=0.5]", "std"])
    assert board.loc["random", "role"] == "floor" and board.loc["byol", "role"] == ""
    assert "simclr[temperature=0.05]" not in board.index  # diverged: listed elsewhere, not ranked
    knn = leaderboard(long_table(suite_dir), "knn", "knn_top1").set_index("label")
    assert knn.loc["byol", "mean"] == pytest.approx(0.81)
    few = leaderboard(long_table(suite_dir), "fewshot", "fewshot_5").set_index("label")
    assert few.loc["simclr", "ci95"] == pytest.approx(0.01)


def test_published_column_only_when_dataset_and_backbone_match(suite_dir: Path) -> None:
    df = long_table(suite_dir)
    board = leaderboard(df, "linear", "linear_top1").set_index("label")
    assert board.loc["simclr", "published"] == pytest.approx(0.9074)
    assert board.loc["byol", "published"] == pytest.approx(0.9258)
    setting = board.loc["simclr", "published_setting"]
    assert "solo-learn" in setting and "1000 ep" in setting
    assert pd.isna(board.loc["random", "published"])
    knn = leaderboard(df, "knn", "knn_top1").set_index("label")
    assert knn.loc["simclr", "published"] == pytest.approx(0.847)  # lightly 200 ep: closest to 4 epochs
    for changed in ({"backbone": "resnet_small"}, {"dataset": "fashion_mnist"}, {"bb.width": 0.5}):
        other = leaderboard(df.assign(**changed), "linear", "linear_top1")
        assert other["published"].isna().all(), changed


def test_published_lookup() -> None:
    assert method_key("MoCo v2+") == "mocov2"
    both = lookup("simclr", "cifar10", "resnet18", "knn", cifar_stem=True)
    assert sorted(e.epochs for e in both) == [200, 800]
    assert best_match("simclr", "cifar10", "resnet18", "knn", epochs=700).value == pytest.approx(0.879)
    assert lookup("simclr", "cifar10", "resnet18", "linear", cifar_stem=False) == []  # ImageNet stem differs
    in100 = best_match("simsiam", "imagenet100", "resnet18", "linear", epochs=400, cifar_stem=False)
    assert in100.value == pytest.approx(0.7872) and "offline" in in100.setting  # offline preferred
    assert run_cifar_stem("cifar10") is True and run_cifar_stem("cifar10", image_size=224) is False
    assert run_cifar_stem("cifar10", {"cifar_stem": False}) is False
    assert all(0 < e.value < 1 for e in PUBLISHED) and all(e.setting for e in PUBLISHED)


# -- figures' computations --------------------------------------------------------------------------------
def test_pareto_front_hand_example() -> None:
    costs = [1.0, 2.0, 3.0, 4.0, 2.0, float("nan")]
    scores = [0.5, 0.4, 0.7, 0.6, 0.7, 0.99]
    # cost 2 scores 0.7 (index 4) dominates index 1 (0.4) and index 2 (cost 3, same 0.7); NaN ignored
    assert pareto_front(costs, scores) == [0, 4]
    assert pareto_front([1, 2, 3], [0.1, 0.2, 0.3]) == [0, 1, 2]
    assert pareto_front([], []) == []


def test_pooled_ci95() -> None:
    # t_{0.975, 2} = 4.302653; std of (1, 2, 3) = 1; half-width = 4.302653 / sqrt(3)
    assert pooled_ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert pooled_ci95([1.0]) is None


def test_ablation_grouping_finds_the_pair(suite_dir: Path) -> None:
    groups = ablation_groups(r.record for r in load_runs(suite_dir))
    assert len(groups) == 1
    g = groups[0]
    assert (g.method, g.field, g.fixed) == ("simclr", "temperature", {})
    assert [(v, label) for v, label, _ in g.members] == [
        (0.05, "simclr[temperature=0.05]"), (0.2, "simclr"), (0.5, "simclr[temperature=0.5]")]
    assert [was_set for _, _, was_set in g.members] == [True, False, True]  # 0.2 is the resolved default


def test_ablation_two_field_sweep() -> None:
    recs = [{"label": f"m[a={a},b={b}]", "method": "m", "options_set": {"a": a, "b": b}, "options": {"a": a, "b": b}}
            for a in (1, 2) for b in ("x", "y")]
    recs.append({"label": "other", "method": "n", "options_set": {"a": 1}, "options": {"a": 1}})
    groups = ablation_groups(recs)
    assert sorted((g.field, json.dumps(g.fixed)) for g in groups) == [
        ("a", '{"b": "x"}'), ("a", '{"b": "y"}'), ("b", '{"a": 1}'), ("b", '{"a": 2}')]


def test_costs_table(suite_dir: Path) -> None:
    costs = costs_table(long_table(suite_dir)).set_index("label")
    assert costs.loc["byol", "train_flops"] == pytest.approx(1.2e13)
    assert costs.loc["simclr", "wall_s"] == pytest.approx(100.5) and costs.loc["simclr", "n_runs"] == 2
    assert costs.loc["simclr[temperature=0.05]", "wall_s"] == pytest.approx(100.0)  # diverged run's time counts


# -- HTML ---------------------------------------------------------------------------------------------------
def test_report_html_self_contained(suite_dir: Path) -> None:
    path = build_report(suite_dir)
    assert path == suite_dir / "report.html" and path.exists()
    html = path.read_text()
    for title in ("kNN (k=200)", "kNN (k=20)", "Linear probe", "Few-shot, 1 per class", "Few-shot, 5 per class",
                  "Costs", "Failed, diverged and unfinished runs"):
        assert title in html, title
    assert DIVERGED_REASON in html
    assert "k=200, T=0.1" in html and "FLOPs = 2 x MACs" in html  # conventions stated
    assert "solo-learn README, ResNet-18 CIFAR stem, 1000 ep" in html  # published setting label
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html and "@import" not in html
    assert html.count('src="data:image/png;base64,') >= 5  # flops x2, curves, few-shot, ablation, per-run
    for run in load_runs(suite_dir):
        assert f'id="run-{run.run_id}"' in html
    assert "&#34;temperature&#34;: 0.5" in html or '"temperature": 0.5' in html  # resolved config shown
    long_pq = pd.read_parquet(suite_dir / "results_long.parquet")
    assert len(long_pq) == len(pd.read_csv(suite_dir / "results_long.csv")) == len(long_table(suite_dir))


def test_report_escapes_html(suite_dir: Path) -> None:
    rec_path = next(suite_dir.glob("*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec.update(status="failed", reason="<script>alert(1)</script>")
    rec_path.write_text(json.dumps(rec))
    html = build_report(suite_dir).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_report_cli_and_after_suite(suite_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(suite_dir), "--out", str(tmp_path / "r.html")])
    assert args.func(args) == 0 and (tmp_path / "r.html").exists()
    assert "r.html" in capsys.readouterr().out
    assert report_after_suite(tmp_path / "missing") is None  # logged, never raised
    assert report_after_suite(suite_dir) == suite_dir / "report.html"


def test_report_of_unfinished_run(suite_dir: Path) -> None:
    d = suite_dir / "byol-s9-unfinished"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"run_id": "byol-s9-unfinished", "label": "byol", "method": "byol",
                                               "seed": 9}))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 3.0}) + "\n")
    html = build_report(suite_dir).read_text()
    assert "unfinished" in html and 'id="run-byol-s9-unfinished"' in html


# -- flops table --------------------------------------------------------------------------------------------
def test_flops_table_one_row_per_label_data_loaded_once() -> None:
    from bench.config import expand_runs, parse_suite

    suite = parse_suite({"name": "t", "dataset": {"name": "digits"}, "backbone": {"name": "convnet4"},
                         "budget": {"epochs": 2, "batch_size": 16}, "seeds": [0, 1],
                         "methods": ["random", {"method": "simclr", "sweep": {"temperature": [0.1, 0.5]}}]})
    loads: list[str] = []

    def measure(method: str, data: str) -> dict[str, Any]:
        trains = method != "random"
        return {"params_encoder": 1_000_000, "params_trainable": 2_000_000, "inference_gmacs": 0.01,
                "train_macs_per_image": 3e7 if trains else None, "train_flops": 6e11 if trains else 0,
                "inference_unsupported_ops": {"aten::add": 1}, "flops_convention": "FLOPs = 2 x MACs"}

    df = flops_table(expand_runs(suite), load_data=lambda s: loads.append(s.dataset.name) or "data",
                     build=lambda s, d: s.method, measure=measure)
    assert loads == ["digits"]
    assert list(df["label"]) == ["random", "simclr[temperature=0.1]", "simclr[temperature=0.5]"]
    text = format_flops_table(df)
    assert "6.00e11" in text and "1.00 M" in text and "FLOPs = 2 x MACs" in text and "aten::add" in text


def test_empty_suite_and_mixed_option_types(tmp_path: Path, suite_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "sslbench" in build_report(empty).read_text()  # no runs yet: a page, not a crash
    rec_path = next(p for p in suite_dir.glob("simclr-*/record.json"))
    rec = json.loads(rec_path.read_text())
    rec["options"] = {**rec["options"], "temperature": "auto", "crops": [2, 6]}  # str beside floats, a list
    rec_path.write_text(json.dumps(rec))
    build_report(suite_dir)
    pq = pd.read_parquet(suite_dir / "results_long.parquet")
    assert "auto" in set(pq["opt.temperature"]) and "[2, 6]" in set(pq["opt.crops"].dropna())
