import math
from pathlib import Path

import pytest
import yaml

from ssl_transfer.config import RunConfig, apply_overrides, config_from_dict, flatten, load_config
from ssl_transfer.errors import ConfigError
from ssl_transfer.losses import RelaxedContrastiveLoss, RKDLoss
from ssl_transfer.losses.registry import build_loss, loss_options

VARIANTS = sorted((Path(__file__).resolve().parents[1] / "bench" / "variants").glob("*.yaml"))


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_repo_configs_load_and_round_trip_through_their_resolved_dict(repo_root):
    """run.json stores cfg.to_dict(); --resume compares it: a resolved config must rebuild itself."""
    paths = sorted((repo_root / "configs").glob("*.yaml"))
    for path in paths:
        cfg = load_config(path)
        assert config_from_dict(cfg.to_dict()) == cfg, path


def test_loss_args_are_typed_by_the_loss_constructor_and_filled_with_its_defaults():
    cfg = config_from_dict({"transfer": {"loss_args": {"sigma": 3}}, "data": {"batch_size": 32}})
    assert cfg.transfer.loss_args == {"sigma": 3.0, "delta": 1.0, "block_size": None}
    assert isinstance(cfg.transfer.loss_args["sigma"], float)
    rkd = config_from_dict({"transfer": {"loss": "rkd", "loss_args": {"angle_weight": 0}}}).transfer.loss_args
    assert rkd == {"dist_weight": 1.0, "angle_weight": 0.0, "chunk_size": 64}
    # the registry builds exactly what the config describes
    built = build_loss("rkd", rkd, student_dim=4, teacher_dim=6, views=2)
    assert isinstance(built, RKDLoss) and built.angle_weight == 0.0 and built.dist_weight == 1.0
    assert set(loss_options("regression")) == {"bias"}  # its widths come from the stage
    relaxed = build_loss("relaxed_contrastive", {"sigma": 2.0, "delta": 0.5, "block_size": 64}, 4, 6, 2)
    assert isinstance(relaxed, RelaxedContrastiveLoss) and (relaxed.sigma, relaxed.delta) == (2.0, 0.5)


def test_each_stage_has_an_optimizer_section_with_its_own_defaults():
    cfg = config_from_dict({"source": {"optimizer": {"lr": 0.3}}, "transfer": {"optimizer": {"name": "sgd"}}})
    assert (cfg.source.optimizer.name, cfg.source.optimizer.lr, cfg.source.optimizer.lr_scale_with_batch) == (
        "sgd", 0.3, True)
    assert cfg.source.optimizer.weight_decay == 5e-4  # the section's default, not the type's
    assert (cfg.transfer.optimizer.name, cfg.transfer.optimizer.lr, cfg.transfer.optimizer.weight_decay) == (
        "sgd", 1e-3, 1e-4)
    assert type(cfg.source.optimizer) is type(cfg.transfer.optimizer)


def test_overrides_parse_yaml_values(tmp_path):
    p = write(tmp_path, "transfer: {loss_args: {sigma: 1.0}}\n")
    cfg = load_config(p, ["transfer.loss_args.sigma=3", "data.root=/x/y", "eval.linear_Cs=[0.5, 2]",
                          "trainer.num_threads=null", "transfer.optimizer.lr=5e-4"])
    assert cfg.transfer.loss_args["sigma"] == 3.0 and cfg.data.root == "/x/y"
    assert cfg.eval.linear_Cs == [0.5, 2.0] and cfg.trainer.num_threads is None
    assert cfg.transfer.optimizer.lr == 5e-4


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unparsable_yaml_names_line(tmp_path):
    p = write(tmp_path, "data:\n  name: [fashion_mnist\n")
    with pytest.raises(ConfigError, match=r"does not parse at line \d+"):
        load_config(p)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("data,needle", [
    ({"transfer": {"lossargs": {}}}, "unknown config key 'transfer.lossargs'; did you mean 'transfer.loss_args'"),
    ({"tranfser": {}}, "did you mean 'transfer'"),
    ({"data": {"batchsize": 3}}, "did you mean 'data.batch_size'"),
    ({"transfer": {"sigma": 3}}, "config key 'transfer.sigma' is now 'transfer.loss_args.sigma'"),
    ({"source": {"lr": 0.1}}, "config key 'source.lr' is now 'source.optimizer.lr'"),
    ({"transfer": {"rkd_angle_weight": 1}}, "is now 'transfer.loss_args.angle_weight'"),
    ({"transfer": {"loss_args": {"sigam": 1.0}}}, "transfer.loss_args.sigam is not an option of"),
    ({"transfer": {"loss": "rkd", "loss_args": {"sigma": 1.0}}}, "RKDLoss takes: dist_weight, angle_weight"),
    ({"transfer": {"loss": "regression", "loss_args": {"teacher_dim": 3}}}, "teacher_dim is set by the stage"),
])
def test_unknown_key_suggests_closest(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)


@pytest.mark.parametrize("data,needle", [
    ({"transfer": {"loss_args": {"sigma": "big"}}}, "transfer.loss_args.sigma = 'big' has the wrong type; use float"),
    ({"data": {"batch_size": 2.5}}, "data.batch_size = 2.5 has the wrong type; use int"),
    ({"data": {"download": "yes"}}, "data.download = 'yes' has the wrong type; use bool"),
    ({"data": {"name": "fashion_mnst"}}, "did you mean 'fashion_mnist'"),
    ({"transfer": {"loss_args": {"sigma": 0}}}, "refused by RelaxedContrastiveLoss: sigma must be > 0"),
    ({"transfer": {"loss_args": {"delta": -1}}}, "delta must be > 0"),
    ({"transfer": {"loss": "rkd", "loss_args": {"dist_weight": 0, "angle_weight": 0}}}, "not both 0"),
    ({"data": {"views": 1}}, "data.views >= 2"),
    ({"data": {"batch_size": 1}}, "data.batch_size = 1 must be >= 2"),
    ({"source": {"optimizer": {"lr": 0}}}, "source.optimizer.lr = 0.0 must be > 0"),
    ({"source": {"optimizer": "sgd"}}, "'source.optimizer' is a section"),
    ({"transfer": {"optimizer": {"schedule": "step"}}}, "needs transfer.optimizer.milestones"),
    ({"transfer": {"epochs": 2, "optimizer": {"schedule": "step", "milestones": [3]}}}, "below the stage's 2 epochs"),
    ({"data": {"min_scale": 0}}, "data.min_scale"),
    ({"eval": {"linear_Cs": []}}, "eval.linear_Cs is empty"),
    ({"eval": {"linear_Cs": [1.0, -2.0]}}, "eval.linear_Cs[1] = -2.0 must be > 0"),
    ({"data": {"val_size": 0}}, "data.val_size"),
    ({"transfer": {"student_init": "teacher", "student_backbone": "resnet50"}}, "student_init"),
    ({"data": "fashion_mnist"}, "'data' is a section; set its keys"),
    ({"trainer": {"precision": "bogus"}}, "trainer.precision = 'bogus' is not valid"),
    ({"seed": -1}, "seed = -1 must be >= 0"),
    ({"seed": 2**40}, "seed = 1099511627776 must be >= 0 and <= 4294967295"),
    ({"trainer": {"num_threads": -2}}, "trainer.num_threads = -2 must be >= 1"),
    ({"data": {"root": ""}}, "data.root = '' is empty"),
    ({"transfer": {"epochs": 10**400}}, "transfer.epochs = 1000"),  # an int beyond a float's range
])
def test_bad_values_name_key_and_fix(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["eval.knn_temperature", "transfer.loss_args.sigma", "source.optimizer.lr",
                                 "data.min_scale", "eval.knn_monitor_every", "transfer.epochs"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_never_pass_a_range_check(key, value):
    """A check written as x <= 0 lets NaN through; every float is checked for finiteness first."""
    data: dict = {}
    apply_overrides(data, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=r"is (not a number|infinite)"):
        config_from_dict(data)


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["transfer.loss_args.sigma"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides({}, ["transfer..sigma=2"])


def test_flatten_is_the_key_space_of_resume_checks():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": None}) == {"a.b": 1, "a.c.d": [1], "e": None}


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.name)
def test_bench_variants_are_valid_overrides_of_the_quickstart(path, repo_root):
    """bench.sweep applies each variant's key=value overrides to a config: every key must exist
    and every value must pass the config's checks, or a sweep would fail half-way."""
    variants = yaml.safe_load(path.read_text())
    assert isinstance(variants, dict) and variants, f"{path.name} defines no variants"
    for name, overrides in variants.items():
        assert isinstance(overrides, list), f"{path.name}:{name} must be a list of key=value"
        assert isinstance(load_config(repo_root / "configs" / "quickstart.yaml", overrides), RunConfig)


def test_a_misspelt_variant_override_is_refused(repo_root):
    with pytest.raises(ConfigError, match="transfer.epochs"):
        load_config(repo_root / "configs" / "quickstart.yaml", ["transfer.epoch=0.6"])
