"""Checkpoint reading and backbone weights: the one reader (ssl_transfer.io.read_checkpoint), formats,
prefix detection, strict errors, export, load_backbone (checkpoints and torchvision models), CLI
pretrain/export/transfer."""

import ast
import json

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from ssl_transfer.cli import main
from ssl_transfer.errors import CheckpointError
from ssl_transfer.io import load_model, read_checkpoint, save_model
from ssl_transfer.models import build_backbone
from ssl_transfer.models.torchvision_models import BackboneError, load_backbone
from ssl_transfer.models.weights import export_backbone, load_backbone_weights, resolve_backbone

torch.set_num_threads(1)


def torchvision_state(arch="resnet18", seed=0, **kw):
    torch.manual_seed(seed)
    return getattr(tvm, arch)(weights=None, **kw).state_dict()  # includes fc.weight / fc.bias


def backbone_of(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def target(arch="resnet18", stem="imagenet", channels=3):
    torch.manual_seed(123)  # weights different from any file's
    return build_backbone(arch, stem, channels)


def assert_loaded(backbone, expected):
    got = backbone.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ----------------------------------------------------------------------------------------
# formats and prefixes
# ----------------------------------------------------------------------------------------


def test_torchvision_state_dict_loads_and_drops_only_the_classifier(tmp_path):
    state = torchvision_state()
    torch.save(state, tmp_path / "tv.pth")
    net, spec = target()
    info = load_backbone_weights(tmp_path / "tv.pth", net, spec)
    assert_loaded(net, backbone_of(state))
    assert info["prefix"] == "" and sorted(info["dropped"]) == ["fc.bias", "fc.weight"]
    ref = tvm.resnet18(weights=None)
    ref.load_state_dict(state)
    ref.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(net.eval()(x), ref.eval()(x))


def test_lightning_checkpoint_prefers_online_backbone_over_momentum(tmp_path):
    online, momentum = backbone_of(torchvision_state(seed=1)), backbone_of(torchvision_state(seed=2))
    sd = {**{f"backbone.{k}": v for k, v in online.items()},
          **{f"backbone_momentum.{k}": v for k, v in momentum.items()},
          "projection_head.layers.0.weight": torch.zeros(4, 512)}
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": {"lr": 0.1}}, tmp_path / "lightly.ckpt")
    net, spec = target()
    assert load_backbone_weights(tmp_path / "lightly.ckpt", net, spec)["prefix"] == "backbone."
    assert_loaded(net, online)
    net, spec = target()  # --prefix picks the other one
    load_backbone_weights(tmp_path / "lightly.ckpt", net, spec, prefix="backbone_momentum.")
    assert_loaded(net, momentum)


def test_moco_checkpoint_with_module_encoder_q_and_mlp_fc(tmp_path):
    q, k = backbone_of(torchvision_state(seed=3)), backbone_of(torchvision_state(seed=4))
    sd = {**{f"module.encoder_q.{n}": v for n, v in q.items()}, **{f"module.encoder_k.{n}": v for n, v in k.items()},
          "module.encoder_q.fc.0.weight": torch.zeros(2048, 512), "module.encoder_q.fc.2.weight": torch.zeros(128, 2048),
          "module.queue": torch.zeros(128, 16)}
    torch.save({"state_dict": sd, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    net, spec = target()
    info = load_backbone_weights(tmp_path / "moco.pth.tar", net, spec)
    assert info["prefix"] == "module.encoder_q." and len(info["dropped"]) == 2
    assert_loaded(net, q)


def test_lightly_sequential_numbering_maps_to_torchvision_names(tmp_path):
    resnet = tvm.resnet18(weights=None)
    seq = nn.Sequential(*list(resnet.children())[:-1])  # lightly's examples build backbones this way
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in seq.state_dict().items()}}, tmp_path / "seq.ckpt")
    net, spec = target()
    load_backbone_weights(tmp_path / "seq.ckpt", net, spec)
    assert_loaded(net, backbone_of(resnet.state_dict()))


def test_project_teacher_file_and_solo_style_model_entry(tmp_path):
    src, spec = build_backbone("resnet18", "cifar", 1)
    save_model(tmp_path / "teacher.pt", src, spec, extra={"method": "simclr"})
    net, _ = target("resnet18", "cifar", 1)
    assert load_backbone_weights(tmp_path / "teacher.pt", net, spec)["format"] == "ssl-transfer"
    assert_loaded(net, src.state_dict())
    torch.save({"model": {f"model.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "m.pth")
    net, _ = target("resnet18", "cifar", 1)
    assert load_backbone_weights(tmp_path / "m.pth", net, spec)["prefix"] == "model."
    assert_loaded(net, src.state_dict())


# ----------------------------------------------------------------------------------------
# strict errors
# ----------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    state = backbone_of(torchvision_state())
    broken = {f"backbone.{k}": v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    broken["backbone.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": broken}, tmp_path / "b.ckpt")
    net, spec = target()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "b.ckpt", net, spec)
    one_line(e, "under prefix 'backbone.'", "1 missing (layer4.1.bn2.weight)",
             "1 unexpected (backbone.extra.weight)", "source.backbone/stem")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing loaded
    # a CIFAR-stem file for an ImageNet-stem config: conv1's shape names the problem
    cifar, _ = build_backbone("resnet18", "cifar", 3)
    torch.save(cifar.state_dict(), tmp_path / "cifar.pth")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "cifar.pth", *target())
    one_line(e, "1 of another shape (conv1.weight (64, 3, 3, 3) in the file vs (64, 3, 7, 7))")
    # a ResNet-50 file for a ResNet-18 config
    torch.save(torchvision_state("resnet50"), tmp_path / "r50.pth")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "r50.pth", *target())
    one_line(e, "does not fit a resnet18 (imagenet stem, 3 input channels)", "unexpected", "of another shape")


def test_unreadable_and_unmatched_files(tmp_path):
    net, spec = target()
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "none.pth", net, spec)
    one_line(e, "does not exist")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "junk.pth", net, spec)
    one_line(e, "cannot be read")
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "other.pth", net, spec)
    one_line(e, "no key of checkpoint", "a.weight", "--prefix")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "empty.pth", net, spec)
    one_line(e, "holds no state dict")
    torch.save({"state_dict": torchvision_state(), "hp": CheckpointError("x")}, tmp_path / "pickled.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "pickled.ckpt", net, spec)
    one_line(e, "cannot be read safely", "--unsafe-load")
    assert load_backbone_weights(tmp_path / "pickled.ckpt", net, spec, unsafe=True)["prefix"] == ""
    src, src_spec = build_backbone("resnet18", "cifar", 1)
    save_model(tmp_path / "teacher.pt", src, src_spec)
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(tmp_path / "teacher.pt", net, spec)
    one_line(e, "holds a resnet18 (cifar stem, 1 input channels) but the config asks for a resnet18 "
                "(imagenet stem, 3 input channels)")


# ----------------------------------------------------------------------------------------
# the one checkpoint reader
# ----------------------------------------------------------------------------------------


def test_read_checkpoint_is_the_only_torch_load(repo_root):
    """Every checkpoint the packages read goes through ssl_transfer.io.read_checkpoint."""
    calls = []
    for package in ("ssl_transfer", "linear_eval"):
        for path in sorted((repo_root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    calls.append(str(path.relative_to(repo_root)))
    assert calls == ["ssl_transfer/io.py"]
    import ssl_transfer.models.weights as weights

    assert weights.read_checkpoint is read_checkpoint  # still importable from there (pipeline)


def test_read_checkpoint_and_load_model_errors_are_one_line(tmp_path):
    for reader in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError) as e:
            reader(tmp_path / "none.pt")
        one_line(e, "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"spec": {}, "backbone": {}, "hp": CheckpointError("x")}, tmp_path / "pickled.pt")
    for reader in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError) as e:
            reader(tmp_path / "junk.pt")
        one_line(e, "cannot be read (", "truncated")
        with pytest.raises(CheckpointError) as e:
            reader(tmp_path / "pickled.pt")
        one_line(e, "cannot be read safely", "--unsafe-load")
    assert isinstance(read_checkpoint(tmp_path / "pickled.pt", unsafe=True)["hp"], CheckpointError)
    torch.save({"a": torch.ones(2)}, tmp_path / "sd.pth")
    assert torch.equal(read_checkpoint(tmp_path / "sd.pth")["a"], torch.ones(2))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "sd.pth")
    one_line(e, "not an ssl-transfer model file")


# ----------------------------------------------------------------------------------------
# load_backbone: ssl-transfer checkpoints and torchvision models
# ----------------------------------------------------------------------------------------


def test_load_backbone_from_ssl_transfer_checkpoint(tmp_path):
    torch.manual_seed(0)
    net, spec = build_backbone("resnet18", "cifar", 1)
    save_model(tmp_path / "student.pt", net, spec)
    loaded, info = load_backbone(tmp_path / "student.pt")
    assert info["source"] == "checkpoint" and info["feat_dim"] == 512 and info["spec"]["stem"] == "cifar"
    assert not loaded.training
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    with pytest.raises(ValueError, match="drop the weights"):
        load_backbone(tmp_path / "student.pt", weights=tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "missing" / "teacher.pt")


def test_load_backbone_torchvision_penultimate_features_and_weights(tmp_path):
    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "full.pth")
    x = torch.randn(2, 3, 16, 16)
    ref_feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
        ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)

    net, info = load_backbone("torchvision:resnet18", weights=tmp_path / "full.pth")
    assert isinstance(net.fc, nn.Identity) and info["feat_dim"] == 512 and info["removed_classifier"] == "fc"
    torch.testing.assert_close(net(x), ref_feats)
    # a headless state dict (no fc.*), wrapped and DDP-prefixed, loads the same weights
    headless = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": headless}, tmp_path / "headless.pth")
    net2, _ = load_backbone("torchvision:resnet18", weights=tmp_path / "headless.pth")
    torch.testing.assert_close(net2(x), ref_feats)
    # without weights: random init, never a download, still penultimate features
    net3, _ = load_backbone("torchvision:resnet18")
    out3 = net3(x)
    assert out3.shape == (2, 512) and not torch.allclose(out3, ref_feats)


def test_load_backbone_other_torchvision_heads():
    net, info = load_backbone("torchvision:mobilenet_v3_small")
    assert info["removed_classifier"] == "classifier.3" and info["feat_dim"] == 1024
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1024)


def test_load_backbone_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet999'"):
        load_backbone("torchvision:resnet999")
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        load_backbone("resnet50")
    with pytest.raises(ValueError, match="does not end in a linear"):
        load_backbone("torchvision:squeezenet1_1")
    sd = tvm.resnet18(weights=None).state_dict()
    bad = {k: v for k, v in sd.items() if k != "conv1.weight"}
    bad["extra.weight"] = torch.zeros(1)
    bad["bn1.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError) as e:
        load_backbone("torchvision:resnet18", weights=tmp_path / "bad.pth")
    msg = str(e.value)
    assert "\n" not in msg and "1 missing (conv1.weight)" in msg
    assert "1 unexpected (extra.weight)" in msg and "bn1.weight (3,) vs (64,)" in msg
    torch.save({"a": 1}, tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        load_backbone("torchvision:resnet18", weights=tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="does not exist"):
        load_backbone("torchvision:resnet18", weights=tmp_path / "nope.pth")


def test_load_backbone_unreadable_weights_raise_backbone_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    torch.save({"state_dict": torchvision_state(), "hp": CheckpointError("x")}, tmp_path / "pickled.pth")
    for name, needle in (("junk.pth", "cannot be read ("), ("pickled.pth", "cannot be read safely")):
        with pytest.raises(BackboneError) as e:
            load_backbone("torchvision:resnet18", weights=tmp_path / name)
        one_line(e, needle)


# ----------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------


def test_export_infers_architecture_and_writes_torchvision_keys(tmp_path):
    # a solo-learn-like CIFAR ResNet-50 checkpoint: backbone.* keys, 3x3 stem, MLP projector
    src, _ = build_backbone("resnet50", "cifar", 3)
    sd = {**{f"backbone.{k}": v for k, v in src.state_dict().items()}, "projector.0.weight": torch.zeros(8, 2048)}
    torch.save({"state_dict": sd}, tmp_path / "solo.ckpt")
    info = export_backbone(tmp_path / "solo.ckpt", tmp_path / "backbone.pth")
    assert info["spec"] == {"arch": "resnet50", "stem": "cifar", "in_channels": 3, "feat_dim": 2048}
    out = torch.load(tmp_path / "backbone.pth", weights_only=True)
    ref = tvm.resnet50(weights=None)
    ref.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool, ref.fc = nn.Identity(), nn.Identity()
    ref.load_state_dict(out)  # strict: exactly torchvision's keys without fc
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ref.eval()(x), src.eval()(x))
    with pytest.raises(CheckpointError) as e:  # never overwrites
        export_backbone(tmp_path / "solo.ckpt", tmp_path / "backbone.pth")
    one_line(e, "already exists")


def test_export_of_this_projects_lightning_checkpoint_uses_its_hyperparameters(tmp_path):
    import lightning as L
    from test_moco import Views, data, moco_cfg
    from torch.utils.data import DataLoader

    from ssl_transfer.stages.pretrain import MoCoV2Module

    module = MoCoV2Module(moco_cfg(stem="small"), data(), 1)
    t = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    t.fit(module, DataLoader(Views(), batch_size=4))
    t.save_checkpoint(tmp_path / "last.ckpt")
    backbone, spec, info = resolve_backbone(tmp_path / "last.ckpt")
    assert (spec.arch, spec.stem, spec.in_channels) == ("resnet18", "small", 1)  # "small" only from hparams
    assert info["prefix"] == "backbone."  # not key_backbone.
    assert_loaded(backbone, module.backbone.state_dict())


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_success_and_one_line_failures(tmp_path, capsys):
    torch.save(torchvision_state(), tmp_path / "tv.pth")
    code, out, _ = cli(capsys, "export", tmp_path / "tv.pth", "--out", tmp_path / "bb.pth")
    assert code == 0 and "resnet18 (imagenet stem, 3 channels, 512-d features)" in out and "dropped fc." in out
    assert set(torch.load(tmp_path / "bb.pth", weights_only=True)) == set(backbone_of(torchvision_state()))
    for argv, needle in [((tmp_path / "tv.pth", "--out", tmp_path / "bb.pth"), "already exists"),
                         ((tmp_path / "missing.pth", "--out", tmp_path / "x.pth"), "does not exist"),
                         ((tmp_path / "tv.pth", "--out", tmp_path / "y.pth", "--arch", "resnet50"),
                          "does not fit a resnet50")]:
        code, _, err = cli(capsys, "export", *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "y.pth").exists()


def test_cli_pretrain_then_transfer_from_external_weights(repo_root, tmp_path, capsys):
    smoke = repo_root / "configs" / "smoke.yaml"
    out = tmp_path / "pre"
    code, stdout, err = cli(capsys, "pretrain", smoke, "--out", out, "--set", "source.epochs=0.5")
    assert code == 0, err
    assert "simclr teacher (resnet18, 0.5 epochs): linear" in stdout
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["teacher"]["linear_acc"] <= 1 and results["method"] == "simclr"
    assert (out / "teacher.pt").is_file() and (out / "checkpoints" / "source" / "last.ckpt").is_file()
    assert "student" not in results
    code, _, err = cli(capsys, "pretrain", smoke, "--out", out)  # exists, no --overwrite
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # the teacher's backbone as someone else's checkpoint: prefix 'model.', torchvision keys
    exported = tmp_path / "backbone.pth"
    assert cli(capsys, "export", out / "teacher.pt", "--out", exported)[0] == 0
    state = torch.load(exported, weights_only=True)
    torch.save({"model": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "ext.pth")
    run_dir = tmp_path / "tr"
    code, _, err = cli(capsys, "transfer", smoke, "--teacher", tmp_path / "ext.pth", "--out", run_dir,
                       "--set", "controls.teacher_continued=false", "transfer.epochs=0.25")
    assert code == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    # the loaded teacher is evaluated exactly like the pretrained one
    assert res["teacher"]["linear_acc"] == pytest.approx(results["teacher"]["linear_acc"], abs=1e-9)
    assert res["teacher_checkpoint"] == str(tmp_path / "ext.pth")
    # a wrong --prefix and a mismatching architecture fail in one line before writing anything
    code, _, err = cli(capsys, "transfer", smoke, "--teacher", tmp_path / "ext.pth", "--out", tmp_path / "t2",
                       "--prefix", "encoder.")
    assert code == 2 and "under prefix 'encoder.'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "transfer", smoke, "--teacher", tmp_path / "ext.pth", "--out", tmp_path / "t3",
                       "--set", "source.stem=cifar")
    assert code == 2 and "conv1.weight (64, 1, 7, 7) in the file vs (64, 1, 3, 3)" in err
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()
