from dataclasses import fields

import pytest

from config import R1Config, TrainConfig, add_config_flags, field_help
from data import CorpusConfig
from distill import DistillConfig
from grpo import GRPOConfig
from rejection import RejectionConfig
from sft import SFTConfig


def test_every_setting_is_explained_where_it_is_declared():
    # train.py's, sft.py's, rejection.py's and distill.py's --help show these annotations; a nested config is no
    # setting of its own
    nested_in = {TrainConfig: {"grpo", "corpus", "r1"}, DistillConfig: {"sft", "rejection"}}
    for config_class in (TrainConfig, R1Config, GRPOConfig, CorpusConfig, SFTConfig, RejectionConfig, DistillConfig):
        nested = nested_in.get(config_class, set())
        comments = field_help(config_class)
        assert set(comments) == {f.name for f in fields(config_class)} - nested, config_class.__name__
        assert all(len(comment.split()) >= 3 for comment in comments.values()), comments
    assert field_help(GRPOConfig)["group_size"].startswith("G: answers sampled per prompt")


def test_validation_names_the_fields():
    TrainConfig().validate()
    for bad, message in ((dict(pretrain_steps=0), "TrainConfig.pretrain_steps must be positive"),
                         (dict(recipe="r2"), "TrainConfig.recipe must be r1-zero or r1"),
                         (dict(r1=R1Config(final_rl_steps=-1)), "R1Config.final_rl_steps must be >= 0"),
                         (dict(corpus=CorpusConfig(max_attempts=0)), "CorpusConfig.max_attempts must be >= 1"),
                         (dict(grpo=GRPOConfig(kl_beta=-1)), "GRPOConfig.kl_beta must be >= 0"),
                         (dict(pretrain_micro_batch_size=-1), "TrainConfig.pretrain_micro_batch_size must be >= 0"),
                         (dict(pretrain_micro_batch_size=48), r"must divide each process's share of the batch \(64")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).validate()


def test_config_flags_carry_the_field_help_and_default():
    import argparse
    from dataclasses import dataclass
    from typing import Annotated

    @dataclass
    class Example:
        steps: Annotated[int, "how many steps to take"] = 3
        fast: Annotated[bool, "skip the slow part"] = False
        careful: Annotated[bool, "check every step"] = True

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example, prefix="ex_", skip=())
    assert vars(parser.parse_args([])) == {"ex_steps": 3, "ex_fast": False, "ex_careful": True}
    assert vars(parser.parse_args(["--ex-steps", "5", "--ex-fast", "--no-ex-careful"])) == \
        {"ex_steps": 5, "ex_fast": True, "ex_careful": False}
    assert "how many steps to take (default: 3)" in " ".join(parser.format_help().split())
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example, skip=("fast", "careful"))
    assert vars(parser.parse_args([])) == {"steps": 3}
