"""Fuzz every config key with bad values generated from the config's own schema.

For each key (and each option of the default loss under ``transfer.loss_args``) the values wrong
type, NaN, ±inf, negative, zero, huge and empty string are tried through the CLI as
``--overwrite`` of a finished run: each must exit 2 with one line and no traceback, and leave the
run byte-identical. The few values that are *valid* for a key (zero threads of loading, a zero
warm-up, an empty weights prefix, ...) are listed in VALID with the reason; a new key whose bad
values pass the checks fails this test until it gets a range.
"""

import dataclasses
import typing

import pytest
import yaml
from conftest import TINY_RUN, snapshot

from ssl_transfer.cli import main
from ssl_transfer.config import RunConfig, apply_overrides, config_from_dict
from ssl_transfer.losses.registry import loss_options

KINDS = {"wrong type": "[1, 2]", "text": "abc", "nan": ".nan", "+inf": ".inf", "-inf": "-.inf", "negative": "-1",
         "zero": "0", "huge": "1.0e+300", "huge int": "9223372036854775807", "empty string": '""'}
ZERO_MEANS_SOMETHING = {  # zero is a documented setting of these keys
    "seed", "data.split_seed", "data.num_workers", "data.cj_prob", "data.cj_strength", "data.hf_prob",
    "data.random_gray_scale", "data.gaussian_blur", "source.optimizer.momentum", "source.optimizer.weight_decay",
    "source.optimizer.warmup_fraction", "source.moco_momentum", "transfer.memory_size",
    "transfer.optimizer.momentum", "transfer.optimizer.weight_decay", "transfer.optimizer.warmup_fraction",
    "eval.knn_monitor_every", "trainer.checkpoint_every_n_steps",
    "classify.loss_weight", "classify.kd_weight", "classify.optimizer.momentum", "classify.optimizer.weight_decay",
    "classify.optimizer.warmup_fraction", "metric.warmup_epochs", "metric.select_every"}
VALID = {
    **{(k, "zero"): "zero is a documented setting" for k in ZERO_MEANS_SOMETHING},
    ("source.weights_prefix", "empty string"): "'' means the keys have no prefix",
    ("source.weights_prefix", "text"): "any prefix",
    # a file name; task metric checks that it is a file when a run starts (tests/test_metric_task.py)
    ("metric.imagenet_weights", "text"): "any file name", ("metric.student_imagenet_weights", "text"): "any file name",
    ("eval.linear_Cs", "wrong type"): "[1, 2] is a valid grid",
    ("eval.recall_ks", "wrong type"): "[1, 2] is a valid list of K",
    ("data.train_classes", "wrong type"): "[1, 2] is a valid list of training classes",
    ("trainer.devices", "negative"): "-1 means every device (Lightning)",
    # the relaxed loss is defined for every positive bandwidth and margin: on unit teacher vectors a
    # huge sigma makes every pair a positive, a huge delta pushes every pair; both compute finitely
    ("transfer.loss_args.sigma", "huge"): "any sigma > 0", ("transfer.loss_args.sigma", "huge int"): "any sigma > 0",
    ("transfer.loss_args.delta", "huge"): "any delta > 0", ("transfer.loss_args.delta", "huge int"): "any delta > 0",
}


def leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


KEYS = [*leaves(RunConfig), *(f"transfer.loss_args.{a}" for a in loss_options("relaxed_contrastive"))]
CASES = [(key, kind) for key in KEYS for kind in KINDS if (key, kind) not in VALID]


def test_the_valid_exceptions_are_valid():
    """Each listed exception builds a config that holds exactly the given value."""
    for key, kind in VALID:
        data: dict = {}
        apply_overrides(data, [f"{key}={KINDS[kind]}"])
        node = config_from_dict(data)
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        given = yaml.safe_load(KINDS[kind])
        assert node == (float(given) if isinstance(node, float) else given), (key, kind, node)


@pytest.mark.parametrize("key", KEYS)
def test_bad_values_of_every_key_exit_2_in_one_line_and_change_nothing(key, finished, smoke, capsys):
    before = snapshot(finished)
    for kind, value in KINDS.items():
        if (key, kind) in VALID:
            continue
        code = main(["run", smoke, "--out", str(finished), "--overwrite", "--set", *TINY_RUN, f"{key}={value}"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, f"{key}={value} ({kind}) was accepted"
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (key, kind, err)
    assert snapshot(finished) == before
