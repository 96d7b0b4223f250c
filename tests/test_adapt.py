"""kcdp-adapt end to end on the `tiny` preset: target labels never read, the export runs without
torch, the diagnostics are recorded, the source-check guard exits 3, a killed run resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_data import make_domain, slowed_training_steps

from kcdp_core.portable.labels import EMOJI7

# The manifest keys that record when and how fast an export ran, not what it holds.
RUN_KEYS = ("created", "timings_s")


def _garbage_copy(folder: Path, out: Path) -> Path:
    """The same images in folders named after the wrong classes (and nonsense), renamed, with a
    label CSV whose column is garbage: nothing here may change what is trained."""
    for i, path in enumerate(sorted(folder.rglob("*.png"))):
        wrong = [EMOJI7[(EMOJI7.index(path.parent.name) + 3) % 7], "???", "not-a-class"][i % 3]
        dst = out / wrong / f"img{(i * 7919) % 101:03d}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
    (out / "labels.csv").write_text("path,label\n" + "".join(f"x{i}.png,anger\n" for i in range(5)))
    return out


def _args(target: Path, out: Path, start: Path, src: Path, *extra: str) -> list[str]:
    return [
        str(target), "--out", str(out), "--model", str(start), "--source", str(src),
        "--epochs", "2", "--per-class", "3", "--precision", "fp32", "--quiet", "--max-drop", "100", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, one_torch_thread):
    from kcdp_core.config import tiny
    from kcdp_core.train.trainer import Trainer
    from kcdp_export.adapt import main

    root = tmp_path_factory.mktemp("adapt")
    mp = pytest.MonkeyPatch()
    mp.setenv("KCDP_CACHE", str(root / "cache"))
    src = make_domain(root / "src", (250, 200, 40), per_class=4, seed=0)
    target = make_domain(root / "target", (255, 255, 255), per_class=2, seed=1)
    garbage = _garbage_copy(target, root / "target_garbage")
    start = root / "start"
    config = tiny().replace(train={"setting": "uc", "epochs": 1, "seed": 2})
    Trainer(config, src, start, progress=False, log=lambda m: None).run()
    assert main(_args(target, root / "export", start, src)) == 0
    assert main(_args(garbage, root / "export_garbage", start, src)) == 0
    yield root, src, target, start
    mp.undo()


def test_target_labels_and_names_never_change_the_export(adapted) -> None:
    root = adapted[0]
    a, b = root / "export", root / "export_garbage"
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert "perception.onnx" in files
    for name in files:
        if name in ("manifest.json", "adaptation.json"):
            continue
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for key in RUN_KEYS:
        ma.pop(key), mb.pop(key)
    assert ma == mb
    ra, rb = (json.loads((d / "adaptation.json").read_text()) for d in (a, b))
    assert ra["target"] == rb["target"] and ra["diagnostics"] == rb["diagnostics"]


def test_diagnostics_are_recorded(adapted) -> None:
    root = adapted[0]
    report = json.loads((root / "export" / "adaptation.json").read_text())
    assert report["target"]["images"] == 14 and len(report["target"]["sha256"]) == 64
    d = report["diagnostics"]
    history = d["pseudo_labels_per_epoch"]
    assert [row["epoch"] for row in history] == [1, 2]  # no source-only warm-up from a trained model
    for row in history:
        assert sum(row["cliea"].values()) == 14 and sum(row["kept"].values()) <= 14
        assert 0 < row["kept_share"] <= 1
    assert history[0]["kept_share"] < history[1]["kept_share"]  # the kept share ramps up (0.3 -> 0.8)
    after = d["target_after"]
    assert sum(after["predicted"].values()) == 14
    assert 0 <= after["changed_from_start"] <= 1 and 0 <= after["cliea_head_agreement"] <= 1
    assert 0 < after["mean_confidence"] <= 1
    for side in ("source_check_before", "source_check_after"):
        assert d[side]["images"] == 7 and 0 <= d[side]["macro_f1"] <= 1  # one per class held aside
    assert d["source_check_drop_points"]["accuracy"] == pytest.approx(
        100 * (d["source_check_before"]["accuracy"] - d["source_check_after"]["accuracy"]), abs=0.01
    )
    assert d["refit"]["source_images"] == 3 * len(EMOJI7)  # on by default
    assert report["plan"]["epochs"] == 2 and report["plan"]["per_class"] == 3
    assert report["time_s"]["total"] >= report["time_s"]["training"] > 0
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    assert manifest["config"]["train"]["setting"] == "da" and manifest["config"]["train"]["target_bn"]


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from kcdp_runtime.cli import main
code = main(sys.argv[1:])
assert sys.modules["torch"] is None
sys.exit(code)
"""


def test_export_runs_in_the_runtime_without_torch(adapted) -> None:
    root, _, target, _ = adapted
    image = sorted(target.rglob("*.png"))[0]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(image), "--model", str(root / "export"), "--json"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.splitlines()[0])
    assert row["label"] in EMOJI7 and abs(sum(row["scores"].values()) - 1) < 1e-3


def test_a_source_check_drop_past_the_limit_exits_3_and_exports_nothing(adapted, capsys) -> None:
    from kcdp_export.adapt import EXIT_DROP, main

    root, src, target, start = adapted
    out = root / "export_refused"
    # Any result "drops" more than -1000 points; --resume reuses the finished run (no training).
    assert main(_args(target, out, start, src, "--max-drop", "-1000", "--resume")) == EXIT_DROP
    err = capsys.readouterr().err
    assert "WARNING" in err and "--force --resume" in err and "resuming" in err
    assert not out.exists()


def test_the_refit_refits_the_head_of_the_same_training(adapted) -> None:
    from kcdp_export.adapt import main

    root, src, target, start = adapted
    out = root / "export_plain"
    # The refit comes after training and is not in the run's key: --resume finds the finished run.
    assert main(_args(target, out, start, src, "--no-refit", "--resume")) == 0
    refit, plain = (json.loads((d / "adaptation.json").read_text()) for d in (root / "export", out))
    assert plain["diagnostics"]["refit"] is None
    assert refit["work"] == plain["work"]
    assert refit["diagnostics"]["pseudo_labels_per_epoch"] == plain["diagnostics"]["pseudo_labels_per_epoch"]
    r = refit["diagnostics"]["refit"]  # the head refit on the target's centroid labels and the source sample
    assert sum(r["labels"].values()) == 14 and 0 <= r["relabelled"] <= 1
    assert r["source_images"] == 3 * len(EMOJI7) and 0 < r["head_fits_labels"] <= 1
    assert Path(refit["work"], "refit", "model.safetensors").is_file()
    assert (out / "perception.onnx").read_bytes() != (root / "export" / "perception.onnx").read_bytes()


def test_declared_classes_bound_the_pseudo_labels_and_the_export(adapted) -> None:
    from kcdp_export.adapt import main

    root, src, target, start = adapted
    out, classes = root / "export_classes", ["happiness", "sadness", "surprise"]
    assert main(_args(target, out, start, src, "--classes", *classes)) == 0
    report = json.loads((out / "adaptation.json").read_text())
    assert report["target"]["classes"] == classes and report["target"]["classes_declared"]
    d = report["diagnostics"]
    named = [row["cliea"] for row in d["pseudo_labels_per_epoch"]]
    named += [d[side]["predicted"] for side in ("target_before", "target_after")] + [d["refit"]["labels"]]
    for histogram in named:
        assert sum(histogram.values()) == 14 and {c for c, n in histogram.items() if n} <= set(classes)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == classes and manifest["config"]["train"]["target_classes"] == classes
    images = [str(p) for p in sorted(target.rglob("*.png"))[:4]]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *images, "--model", str(out), "--json"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        assert row["label"] in classes and abs(sum(row["scores"].values()) - 1) < 1e-3
        assert all(row["scores"][c] == 0 for c in EMOJI7 if c not in classes)


def test_a_declared_class_the_model_lacks_is_refused_before_any_work(adapted, capsys) -> None:
    from kcdp_export.adapt import main

    root, src, target, start = adapted
    out = root / "export_joy"
    assert main(_args(target, out, start, src, "--classes", "happiness", "joy")) == 1
    err = capsys.readouterr().err
    assert "joy" in err and "happiness" in err and not out.exists()


def test_resume_on_a_folder_of_another_run_stops_and_keeps_it(adapted, capsys) -> None:
    from kcdp_export.adapt import main

    root, src, target, start = adapted
    work = Path(json.loads((root / "export" / "adaptation.json").read_text())["work"])
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    out = root / "export_other"
    assert main(_args(target, out, start, src, "--lr", "1e-3", "--work", str(work), "--resume")) == 1
    err = capsys.readouterr().err
    assert str(work) in err and "differs in lr" in err and "without --resume" in err
    assert not out.exists()
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


def test_an_option_at_its_default_leaves_the_run_key_and_resume_alone() -> None:
    from kcdp_core.train.adapt import _mismatch, _run_key

    fields = {"epochs": None, "lr": None, "seed": 0, "weights": "w", "target": "t", "sources": []}
    key = _run_key(fields)
    # a later version's option, at its default: same key, and a saved run without it resumes
    assert _run_key(fields | {"rounds": 1}) == key
    assert _mismatch({"key": key, "fields": fields}, fields | {"rounds": 1}, key) == []
    # set away from its default, or a saved value that changed: named
    assert _run_key(fields | {"rounds": 2}) != key
    assert _mismatch({"key": key, "fields": fields}, fields | {"rounds": 2}, key) == ["rounds"]
    assert _mismatch({"key": key, "fields": fields | {"seed": 1}}, fields, key) == ["seed"]
    assert _mismatch({"key": key, "fields": fields}, fields | {"target": "u"}, key) == ["target"]
    # a plan.json of an earlier version (no fields): its key alone decides
    assert _mismatch({"key": key}, fields, key) == [] and _mismatch({"key": "x"}, fields, key) != []


SLOW_ADAPT = (
    slowed_training_steps(0.5)
    + """
import sys
from pathlib import Path
from kcdp_core.train.adapt import AdaptOptions, adapt
target, start, src, work = sys.argv[1:]
adapt(AdaptOptions(Path(target), start, [Path(src)], epochs=2, per_class=3, work=Path(work), progress=False),
      log=lambda m: None)
"""
)


def test_a_killed_adaptation_resumes_to_the_same_model(adapted) -> None:
    from kcdp_core.train.adapt import AdaptOptions, adapt

    root, src, target, start = adapted
    work = root / "killed"
    metrics = work / "round1" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_ADAPT, str(target), str(start), str(src), str(work)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            if any(r["kind"] == "step" and r["epoch"] == 2 for r in rows):
                break  # epoch 1 is checkpointed, epoch 2 under way
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((work / "round1" / "train_state.json").read_text())["epoch"] == 1
    options = AdaptOptions(
        target, str(start), [src], epochs=2, per_class=3, work=work, resume=True, progress=False
    )
    said: list[str] = []
    result = adapt(options, log=said.append)
    assert any("resuming" in m for m in said)
    reference = Path(json.loads((root / "export" / "adaptation.json").read_text())["work"])
    for name in ("round1/model.safetensors", "round1/best/model.safetensors"):
        assert (work / name).read_bytes() == (reference / name).read_bytes(), name
    exported = json.loads((root / "export" / "adaptation.json").read_text())["diagnostics"]
    for d in (result.report["diagnostics"], exported):
        d.pop("max_drop_points")  # the option, not a result
    assert result.report["diagnostics"] == exported


def test_the_budget_takes_the_most_source_images_that_fit() -> None:
    from kcdp_core.train.adapt import Labelled, SourcePool, plan_budget

    pool = SourcePool(
        {("a", "anger"): [Path(f"a{i}") for i in range(1000)], ("b", "happiness"): [Path("b0")] * 10},
        [Labelled(Path("c"), "anger", "a")],
        [],
    )
    kw = {"n_target": 400, "seconds_per_image": 0.02, "batch_size": 16, "val_fraction": 0.15}
    small, large = plan_budget(pool, seconds_left=60, **kw), plan_budget(pool, seconds_left=200, **kw)
    assert 4 <= small.per_class < large.per_class < 1000 and small.epochs == large.epochs == 4
    assert small.estimated_training_s <= 60 and large.estimated_training_s <= 200
    slower = plan_budget(pool, seconds_left=200, knowledge_seconds_per_image=0.05, **kw)
    assert slower.per_class < large.per_class  # uncaptioned source images cost time too
    assert plan_budget(pool, seconds_left=None, **kw).per_class == 1000
    assert plan_budget(pool, seconds_left=1, **kw).per_class == 4  # the floor, said so in `how`


def test_recipe_sources_follow_the_recipe_labelled_styles_procedural_faces_and_left_out_families(tmp_path):
    """A recipe with --labelled-avatars, --procedural and --leave-out-families: the labelled styles
    train on their lowest seeds and check on the next ones, procedural faces only train, a left-out
    family is nowhere. (The cache holds finished builds, so nothing is rendered here but them.)"""
    from kcdp_core.data.avatar_build import build_avatars
    from kcdp_core.data.procedural_faces import build_procedural
    from kcdp_core.train.adapt import CHECK_PER_CLASS, recipe_sources
    from kcdp_core.train.default_model import OPEN_DOMAINS

    cache = tmp_path / "cache"
    for domain in OPEN_DOMAINS:
        make_domain(cache / "emoji128" / "domains" / domain, (200, 180, 40), per_class=1)
    (cache / "emoji128" / "report.json").write_text("{}")
    build_avatars(cache / "avatars_labelled", per_class=2 + CHECK_PER_CLASS, size=32, workers=1,
                  corpus_per_style=0, style_set="labelled")  # fmt: skip
    build_procedural(cache / "procedural", per_class=2, size=32, workers=1)
    recipe = ["--labelled-avatars", "L", "--labelled-per-class", "2", "--procedural", "P",
              "--leave-out-families", "lorelei"]  # fmt: skip

    pool = recipe_sources(recipe, EMOJI7, cache, log=lambda m: None)
    groups = {group for group, _ in pool.train}
    assert "procedural" in groups and "dylan" in groups and "voxel-art" in groups
    assert not {"lorelei", "lorelei-neutral"} & groups
    assert all(len(pool.train[(g, c)]) == 2 for g, c in pool.train if g == "dylan")
    assert {c.group for c in pool.check} >= {"dylan"} and "procedural" not in {c.group for c in pool.check}
    trained = {p for paths in pool.train.values() for p in paths}
    assert not trained & {c.path for c in pool.check}
