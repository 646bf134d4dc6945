"""Reliability: bad checkpoints, non-finite values, atomic writes (see docs/reliability.md)."""

import json
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from ssl_transfer.cli import main
from ssl_transfer.config import config_from_dict
from ssl_transfer.data import DataBundle
from ssl_transfer.errors import CheckpointError, ConfigError, NonFiniteError
from ssl_transfer.io import FORMAT_VERSION, atomic_write_text, load_model, save_model
from ssl_transfer.models import build_backbone


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    net, spec = build_backbone("resnet18", "imagenet", 1)
    save_model(d / "r18.pt", net, spec, extra={"head": torch.nn.Linear(512, 64).state_dict(), "embed_dim": 64})
    return d


def test_checkpoint_from_a_newer_format_is_refused(saved, tmp_path):
    payload = torch.load(saved / "r18.pt", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this ssl-transfer"):
        load_model(tmp_path / "new.pt")


def test_checkpoint_with_other_tensors_than_its_spec(saved, tmp_path):
    payload = torch.load(saved / "r18.pt", weights_only=True)
    payload["spec"]["arch"] = "resnet34"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match its spec"):
        load_model(tmp_path / "bad.pt")


def test_not_a_model_file(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not an ssl-transfer model file"):
        load_model(tmp_path / "x.pt")


def test_teacher_of_another_architecture_is_refused(saved):
    from ssl_transfer.stages.source import SourceStage

    cfg = config_from_dict({"data": {"name": "digits", "val_size": 100}, "source": {"backbone": "resnet34"}})
    bundle = DataBundle.from_config(cfg.data, 0)
    with pytest.raises(CheckpointError, match="set source.backbone/stem to match"):
        SourceStage(cfg).from_file(saved / "r18.pt", bundle)


def test_teacher_of_another_channel_count_names_the_input_channels(tmp_path):
    from ssl_transfer.stages.source import SourceStage

    net, spec = build_backbone("resnet18", "imagenet", 3)
    save_model(tmp_path / "rgb.pt", net, spec)
    cfg = config_from_dict({"data": {"name": "digits", "val_size": 100}})
    with pytest.raises(CheckpointError, match="takes 3 input channels but digits has 1"):
        SourceStage(cfg).from_file(tmp_path / "rgb.pt", DataBundle.from_config(cfg.data, 0))


def test_student_with_another_embedding_dim_is_refused(saved):
    from ssl_transfer.stages.source import SourceStage
    from ssl_transfer.stages.transfer import TransferStage

    cfg = config_from_dict({"data": {"name": "digits", "val_size": 100}, "transfer": {"embed_dim": 128}})
    bundle = DataBundle.from_config(cfg.data, 0)
    teacher = SourceStage(cfg).from_file(saved / "r18.pt", bundle)
    with pytest.raises(CheckpointError, match="64-d embedding but the config asks for a resnet18 with a 128-d"):
        TransferStage(cfg).from_file(saved / "r18.pt", teacher, bundle)


@pytest.mark.parametrize("data,needle", [
    ({"transfer": {"teacher_cache": True}}, "needs transfer.teacher_views: clean"),
    ({"transfer": {"memory_size": 64, "loss": "relaxed_ms"}}, "does not apply"),
    ({"transfer": {"loss": "rkd", "loss_args": {"dist_weight": 0, "angle_weight": 0}}}, "both 0"),
])
def test_contradictory_options(data, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(data)


def _views_batch(nan_where):
    from torch.utils.data import default_collate

    g = torch.Generator().manual_seed(0)
    batch = default_collate([{"views": [torch.randn(1, 16, 16, generator=g) for _ in range(2)], "label": 0,
                              "index": i} for i in range(6)])
    if nan_where == "input":
        batch["views"][0][0, 0, 0, 0] = float("nan")
    return batch


@pytest.mark.parametrize("where,needle", [("teacher", "non-finite teacher embedding"),
                                          ("student", "non-finite student embedding"),
                                          ("loss", "non-finite relaxed_contrastive loss")])
def test_non_finite_values_are_named(where, needle, monkeypatch):
    from ssl_transfer.stages.transfer import FrozenTeacher, TransferModule, build_student

    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    cfg = config_from_dict({"data": {"batch_size": 6}})
    module = TransferModule(cfg.transfer, cfg.data, build_student(cfg.transfer, backbone, spec, 1),
                            FrozenTeacher(backbone, spec.feat_dim))
    module.log_loss = lambda *a: None
    if where == "teacher":
        monkeypatch.setattr(module.teacher, "forward", lambda x: torch.full((x.shape[0], 512), float("inf")))
    elif where == "student":
        monkeypatch.setattr(module.student, "embed", lambda x: torch.full((x.shape[0], 512), float("nan")))
    else:
        monkeypatch.setattr(module.criterion, "forward", lambda s, t: s.sum() * float("nan"))
    with pytest.raises(NonFiniteError, match=needle + " in stage 'transfer' at epoch 0, step 0"):
        module.training_step(_views_batch(None), 0)


def test_nan_guard_stops_run_keeps_checkpoints_and_writes_results(repo_root, tmp_path, capsys, diverging_loss):
    out = tmp_path / "run"
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--set",
                 "source.epochs=0.25", "controls.teacher_continued=false"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0] and "stage 'transfer'" in err[0]
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "failed" and r["error"]["stage"] == "transfer" and r["finished_stages"][0] == "source"
    assert "non-finite" in r["error"]["message"]
    load_model(out / "teacher.pt")  # the finished stage's output is intact
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def _writer(path, stop):
    big_a = json.dumps({"v": "a" * 2_000_000})
    big_b = json.dumps({"v": "b" * 2_000_000})
    i = 0
    while not stop.is_set():
        atomic_write_text(path, big_a if i % 2 else big_b)
        i += 1


def test_kill_during_writes_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, json.dumps({"v": "start"}))
    ctx = mp.get_context("fork")
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        stop = ctx.Event()
        p = ctx.Process(target=_writer, args=(path, stop))
        p.start()
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        value = json.loads(path.read_text())["v"]  # always a whole file
        assert value == "start" or set(value) in ({"a"}, {"b"})
    leftovers = [f for f in os.listdir(tmp_path) if f != "results.json"]
    assert all(f.endswith(".tmp") for f in leftovers)  # only temporaries, never the target


def test_reported_nan_configuration_now_trains_finite(repo_root, tmp_path):
    """Student from the teacher, sigma 3, SGD lr 0.02: the relaxed loss is scale invariant, so
    its gradient is orthogonal to the embedding and SGD steps grow the norm until squared
    distances overflow (inf - inf = NaN). The loss now works at unit scale; the run is finite."""
    out = tmp_path / "run"
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--set",
                 "transfer.optimizer.name=sgd", "transfer.optimizer.lr=0.02", "transfer.epochs=3", "controls.teacher_continued=false"])
    assert code == 0
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed" and 0.3 < r["student"]["linear_acc"] <= 1.0


@pytest.mark.parametrize("spec,needle", [({"arch": "resnet18"}, "malformed spec"), ("resnet18", "malformed spec"),
                                         ({"arch": "vgg", "stem": "imagenet", "in_channels": 1, "feat_dim": 1},
                                          "malformed spec")])
def test_a_malformed_spec_is_one_line(saved, tmp_path, spec, needle):
    payload = torch.load(saved / "r18.pt", weights_only=True)
    payload["spec"] = spec
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=needle) as e:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(e.value)


def test_a_state_dict_with_missing_keys_names_them(saved, tmp_path):
    payload = torch.load(saved / "r18.pt", weights_only=True)
    del payload["backbone"]["layer4.1.bn2.weight"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 missing \(layer4\.1\.bn2\.weight\)"):
        load_model(tmp_path / "bad.pt")


def test_a_corrupt_compressed_dataset_file_is_one_line(tmp_path):
    import gzip

    from ssl_transfer.data.idx import read_idx
    from ssl_transfer.errors import DataError

    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    (tmp_path / "x.gz").write_bytes(good[:12] + bytes(b ^ 0xFF for b in good[12:30]) + good[30:])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "x.gz")
