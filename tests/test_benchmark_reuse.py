"""benchmarks/accuracy.py reuses a finished run folder only if the recipe it was trained under is
the one its variant builds today: a changed preset default must not pass old runs off as new."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pytest
from accuracy_script import load_accuracy

ARGS = argparse.Namespace(
    preset="mini", epochs=5, batch_size=None, lr=None, head_lr=None, balanced=False, set=None, foundation=None
)


def test_a_run_is_reused_only_under_its_own_recipe(tmp_path) -> None:
    acc = load_accuracy()
    run = tmp_path / "kcdp_da_run"
    assert acc.recipe_changes(run, acc.config_for("kcdp_da", ARGS, 0)) == []  # nothing trained yet

    acc.config_for("da_no_target_bn", ARGS, 0).save(run)  # trained before AdaBN became the default
    assert acc.recipe_changes(run, acc.config_for("da_no_target_bn", ARGS, 0)) == []
    assert acc.recipe_changes(run, acc.config_for("kcdp_da", ARGS, 0)) == ["train.target_bn: False -> True"]
    changes = acc.recipe_changes(run, acc.config_for("da_no_target_bn", ARGS, 1))
    assert changes == ["train.seed: 0 -> 1"]


def test_a_uc_run_ignores_fields_only_da_reads(tmp_path) -> None:
    acc = load_accuracy()
    run = tmp_path / "source_only_run"
    saved = acc.config_for("source_only", ARGS, 0)
    saved.replace(train={"target_bn": False, "pseudo_fraction": 0.9}).save(run)
    assert acc.recipe_changes(run, acc.config_for("source_only", ARGS, 0)) == []
    saved.replace(train={"epochs": 7}).save(run)
    assert acc.recipe_changes(run, acc.config_for("source_only", ARGS, 0)) == ["train.epochs: 7 -> 5"]


def test_a_variant_that_is_no_row_of_the_table_stops_the_command() -> None:
    acc = load_accuracy()
    args = argparse.Namespace(**vars(ARGS), variants=["kcdp_da", "da_mixstyl"], tasks=None)
    with pytest.raises(SystemExit, match="avatars_loo: no row da_mixstyl"):
        acc.build_table("avatars_loo", args)


def test_the_oracle_trains_on_drawn_images_of_the_left_out_style_and_scores_only_the_rest(tmp_path) -> None:
    """The oracle row's source = the task's source + n labelled images per class of the left-out
    style, its scored set = that style's other images; the extra labelled styles join every source."""
    import csv

    from kcdp_core.data.avatar_build import build_avatars
    from kcdp_core.data.avatar_key import EXTRA_STYLES

    acc = load_accuracy()
    avatars, extra = tmp_path / "avatars", tmp_path / "extra"
    build_avatars(avatars, per_class=3, size=32, workers=1, corpus_per_style=0)
    build_avatars(extra, per_class=3, size=32, workers=1, corpus_per_style=0, style_set="extra")
    args = argparse.Namespace(
        **vars(ARGS), tasks=["loo:moods"], avatars=str(avatars), extra_avatars=str(extra), data=str(tmp_path),
        runs=str(tmp_path / "runs"), avatar_per_class=2, emoji_per_class=None, avatar_target=None, subset_seed=0,
    )  # fmt: skip
    (task,) = acc.tasks_for("avatars_loo", args)
    oracle = acc.oracle_task(task, args)

    def rows(manifest):
        with open(manifest, newline="") as f:
            return list(csv.DictReader(f))

    source, scored = rows(oracle.source), rows(oracle.eval_data)
    moods = [r for r in source if r["domain"] == "moods"]
    assert len(moods) == 2 * 5 and {r["label"] for r in moods} == {p.name for p in task.eval_data.iterdir()}
    assert len(scored) == 1 * 5 and not {r["path"] for r in scored} & {r["path"] for r in source}
    assert rows(task.source) == [r for r in source if r["domain"] != "moods"]  # the task's source, unchanged
    assert {r["domain"] for r in source} >= set(EXTRA_STYLES)
    assert sum(r["domain"] == "critters" for r in source) == 2 * 5  # cut per class like a benchmark style
    emoji_task = acc.Task("emoji->moods", oracle.source, task.target, task.eval_data, truth_classes=True)
    with pytest.raises(SystemExit, match="leave one avatar style out only"):
        acc.oracle_task(emoji_task, args)


def test_recorded_commands_name_data_and_runs_as_variables(monkeypatch, tmp_path) -> None:
    from kcdp_core.recorded_paths import with_path_variables

    monkeypatch.setenv("DATA", str(tmp_path / "data") + "/")
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    text = f"kcdp-bench latency --images {tmp_path}/data/emoji/domains/twitter --results {tmp_path}/runs/l.md"
    assert (
        with_path_variables(text)
        == "kcdp-bench latency --images $DATA/emoji/domains/twitter --results $RUNS/l.md"
    )
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "avatars_loo", "--avatars", f"{tmp_path}/data/avatars"])
    assert (
        load_accuracy().recorded_command("accuracy.py")
        == "python benchmarks/accuracy.py avatars_loo --avatars $DATA/avatars"
    )


def test_a_shipped_record_names_paths_relative_to_the_repository_or_as_variables(
    monkeypatch, tmp_path
) -> None:
    from kcdp_core.recorded_paths import recorded_path

    (tmp_path / "repo" / "assets").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    assert recorded_path("assets") == "assets"
    assert recorded_path(tmp_path / "data" / "calib") == "$DATA/calib"


def test_an_adapt_row_trains_kcdp_adapts_regime_from_its_own_tasks_start(tmp_path) -> None:
    """adapt_from_uc starts from the KCDP (UC) run of the same task and seed, with the fields
    kcdp-adapt trains with (kcdp_core/train/adapt.py adapt_config), not the preset's DA."""
    from kcdp_core.config import preset
    from kcdp_core.train.adapt import AdaptOptions, Plan, adapt_config

    acc = load_accuracy()
    args = argparse.Namespace(**vars(ARGS), runs=str(tmp_path))
    task = acc.Task("loo:moods", tmp_path / "leave_out_moods.csv", tmp_path / "moods.csv", tmp_path / "moods")
    config = acc.config_for("adapt_from_uc", args, 2, task)
    start = acc.run_name("kcdp_uc", task, 2, args)
    assert config.train.init_checkpoint == str(start / "best") and start.name.endswith("_none_s2")

    plan = Plan(4, 10, 100, 0.01, 0.01, 10.0, "test")
    cmd = adapt_config(preset("mini"), AdaptOptions(target=tmp_path, seed=2), plan, str(start / "best"))
    assert config.train == cmd.train
    assert (config.train.lr, config.train.lambda2, config.train.setting) == (5e-6, 0.3, "da")
    assert acc.config_for("kcdp_da", args, 2, task).train.lr != config.train.lr
    # the refit row trains nothing of its own: it refits the adapt row's run of the same task and seed
    assert acc.config_for("adapt_refit_from_uc", args, 2, task) == config
    assert acc.REFITS["adapt_refit_from_uc"] == "adapt_from_uc"
    # the consistency row differs by its term only; AdaBN alone trains nothing (lr 0) for one epoch
    cons = acc.config_for("adapt_consistency", args, 2, task).train
    assert (
        cons.consistency_weight == 1.0 and dataclasses.replace(cons, consistency_weight=0.0) == config.train
    )
    bn = acc.config_for("adabn_from_uc", args, 2, task).train
    assert (bn.epochs, bn.lr, bn.head_lr, bn.target_bn, bn.init_checkpoint) == (
        1,
        0.0,
        0.0,
        True,
        str(start / "best"),
    )


def test_the_gap_closed_is_measured_against_kcdp_uc_and_the_oracle_per_seed() -> None:
    acc = load_accuracy()
    # each row's mean macro-F1 over the tasks, seeds 0 and 1
    seed_means = {"kcdp_uc": [0.3, 0.3], "kcdp_da": [0.4, 0.4], "oracle": [0.6, 0.5]}
    names = {"kcdp_uc": "UC", "kcdp_da": "DA", "oracle": "oracle"}
    lines = acc.gap_closed(seed_means, names)
    # seed 0: .1 of .3 = 33%; seed 1: .1 of .2 = 50%
    assert lines[-1] == "| DA | 42% ± 8% |"
    assert acc.gap_closed({k: v for k, v in seed_means.items() if k != "oracle"}, names) == []
