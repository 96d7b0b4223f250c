"""DA training never reads the target's labels; training is deterministic with a fixed seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_data import make_domain, write_manifest


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_da")
    mp = pytest.MonkeyPatch()
    mp.setenv("KCDP_CACHE", str(root / "cache"))  # hermetic tiny foundation and knowledge caches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared CPU: more threads only spin
    src = make_domain(root / "src", (250, 200, 40), per_class=2, seed=0)
    tgt = make_domain(root / "tgt", (255, 255, 255), per_class=2, seed=1)
    yield root, src, tgt
    torch.set_num_threads(threads)
    mp.undo()


def _train(config, source, target, out):
    from kcdp_core.train.trainer import Trainer

    Trainer(config, source, out, target=target, progress=False, log=lambda m: None).run()
    return load_file(str(out / "model.safetensors"))


def test_target_labels_never_read(domains) -> None:
    from kcdp_core.config import tiny

    root, src, tgt = domains
    true = write_manifest(tgt, root / "target_true.csv")
    shuffled = write_manifest(tgt, root / "target_shuffled.csv", shuffle_labels=True)
    assert true.read_text() != shuffled.read_text()
    config = tiny().replace(train={"setting": "da", "epochs": 2, "seed": 3})
    a = _train(config, src, true, root / "run_true")
    b = _train(config, src, shuffled, root / "run_shuffled")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert a[name].view(-1).view(dtype=torch.uint8).equal(b[name].view(-1).view(dtype=torch.uint8)), (
            f"{name} differs: the target labels leaked into training"
        )
    # The target did shape training: a UC run on the same source ends elsewhere.
    c = _train(config.replace(train={"setting": "uc"}), src, None, root / "run_uc")
    assert any(not a[n].equal(c[n]) for n in a)


def test_epoch_pseudo_labels_and_threshold_run(domains) -> None:
    import json

    from kcdp_core.config import tiny

    root, src, tgt = domains
    config = tiny().replace(
        train={
            "setting": "da",
            "epochs": 1,
            "pseudo_labels": "epoch",
            "balanced_sampling": True,
            "val_fraction": 0.5,
        },
        cliea={"threshold": 0.2},
        knowledge={"use_triplets": False},
    )
    _train(config, src, tgt, root / "run_epoch")
    rows = [json.loads(line) for line in (root / "run_epoch" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all(0.0 <= r["kept_t"] <= 1.0 for r in steps)
    epoch = [r for r in rows if r["kind"] == "epoch"][-1]
    assert "val_macro_f1" in epoch and sum(epoch["pseudo_label_counts"].values()) <= 4 * len(steps)
    assert (root / "run_epoch" / "best" / "model.safetensors").exists()


def test_resuming_a_finished_run_trains_no_epoch_and_says_so(domains) -> None:
    """The benchmark reads `epochs_run` to tell a training's time from a re-score's (AdaBN on resume)."""
    from kcdp_core.config import tiny
    from kcdp_core.train.trainer import Trainer

    root, src, tgt = domains
    config = tiny().replace(train={"setting": "da", "epochs": 2, "seed": 5})
    out = root / "run_resumed"
    first = Trainer(config, src, out, target=tgt, progress=False, log=lambda m: None).run(resume=True)
    weights = (out / "model.safetensors").read_bytes()
    again = Trainer(config, src, out, target=tgt, progress=False, log=lambda m: None).run(resume=True)
    assert (first.epochs_run, again.epochs_run) == (2, 0)
    assert (again.best_epoch, again.best_val_macro_f1) == (first.best_epoch, first.best_val_macro_f1)
    assert (out / "model.safetensors").read_bytes() == weights


def test_init_checkpoint_starts_from_trained_weights_and_consistency_trains(domains) -> None:
    """init_checkpoint loads a run's trained tensors (any other architecture is refused); the
    two-view consistency term is logged and changes what is trained."""
    import json

    from kcdp_core.config import tiny
    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.trainer import load_initial_weights

    root, src, tgt = domains
    base = root / "run_uc_init"
    _train(tiny().replace(train={"setting": "uc", "epochs": 1, "seed": 4}), src, None, base)
    model = KCDPModel.from_config(tiny())
    load_initial_weights(model, base)
    trained = load_file(str(base / "model.safetensors"))
    state = model.trained_state_dict()
    assert all(state[n].equal(trained[n]) for n in trained)
    with pytest.raises(ValueError, match="not this architecture"):
        load_initial_weights(KCDPModel.from_config(tiny().replace(head={"classifier": "linear"})), base)

    config = tiny().replace(
        train={"setting": "da", "epochs": 1, "seed": 4, "init_checkpoint": str(base), "pseudo_labels": "epoch"}
    )
    plain = _train(config, src, tgt, root / "run_init")
    both = _train(config.replace(train={"consistency_weight": 1.0}), src, tgt, root / "run_consistency")
    rows = [json.loads(x) for x in (root / "run_consistency" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["consistency"] >= 0 for r in rows if r["kind"] == "step")
    assert any(not plain[n].equal(both[n]) for n in plain)
