from pathlib import Path

import pytest
import yaml

from ssl_transfer.config import RunConfig, apply_overrides, config_from_dict, load_config
from ssl_transfer.errors import ConfigError

VARIANTS = sorted((Path(__file__).resolve().parents[1] / "bench" / "variants").glob("*.yaml"))


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_repo_configs_load(repo_root):
    for path in sorted((repo_root / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), RunConfig), path


def test_defaults_and_types():
    cfg = config_from_dict({"transfer": {"sigma": 3}, "data": {"batch_size": 32}})
    assert cfg.transfer.sigma == 3.0 and isinstance(cfg.transfer.sigma, float)
    assert cfg.data.batch_size == 32 and cfg.transfer.delta == 1.0


def test_overrides_parse_yaml_values(tmp_path):
    p = write(tmp_path, "transfer: {sigma: 1.0}\n")
    cfg = load_config(p, ["transfer.sigma=3", "data.root=/x/y", "eval.linear_Cs=[0.5, 2]",
                          "trainer.num_threads=null"])
    assert cfg.transfer.sigma == 3.0 and cfg.data.root == "/x/y"
    assert cfg.eval.linear_Cs == [0.5, 2.0] and cfg.trainer.num_threads is None


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
    ({"transfer": {"sigam": 1.0}}, "unknown config key 'transfer.sigam'; did you mean 'transfer.sigma'"),
    ({"tranfser": {}}, "did you mean 'transfer'"),
    ({"data": {"batchsize": 3}}, "did you mean 'data.batch_size'"),
])
def test_unknown_key_suggests_closest(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)


@pytest.mark.parametrize("data,needle", [
    ({"transfer": {"sigma": "big"}}, "transfer.sigma = 'big' has the wrong type; use float"),
    ({"data": {"batch_size": 2.5}}, "data.batch_size = 2.5 has the wrong type; use int"),
    ({"data": {"download": "yes"}}, "data.download = 'yes' has the wrong type; use bool"),
    ({"data": {"name": "fashion_mnst"}}, "did you mean 'fashion_mnist'"),
    ({"transfer": {"sigma": 0}}, "transfer.sigma = 0.0 must be > 0"),
    ({"transfer": {"delta": -1}}, "transfer.delta = -1.0 must be > 0"),
    ({"data": {"views": 1}}, "at least 2 views"),
    ({"data": {"batch_size": 1}}, "data.batch_size >= 2"),
    ({"source": {"lr": 0}}, "source.lr = 0.0 must be > 0"),
    ({"data": {"min_scale": 0}}, "data.min_scale"),
    ({"eval": {"linear_Cs": []}}, "eval.linear_Cs"),
    ({"data": {"val_size": 0}}, "data.val_size"),
    ({"transfer": {"student_init": "teacher", "student_backbone": "resnet50"}}, "student_init"),
    ({"data": "fashion_mnist"}, "data must be a mapping"),
])
def test_bad_values_name_key_and_fix(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["transfer.sigma"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.name)
def test_bench_variants_are_valid_overrides_of_the_quickstart(path, repo_root):
    """bench/sweep.py applies each variant's key=value overrides to a config: every key must
    exist and every value must pass the config's checks, or a sweep would fail half-way."""
    variants = yaml.safe_load(path.read_text())
    assert isinstance(variants, dict) and variants, f"{path.name} defines no variants"
    for name, overrides in variants.items():
        assert isinstance(overrides, list), f"{path.name}:{name} must be a list of key=value"
        assert isinstance(load_config(repo_root / "configs" / "quickstart.yaml", overrides), RunConfig)


def test_a_misspelt_variant_override_is_refused(repo_root):
    assert len(VARIANTS) >= 8
    with pytest.raises(ConfigError, match="transfer.epochs"):
        load_config(repo_root / "configs" / "quickstart.yaml", ["transfer.epoch=0.6"])
