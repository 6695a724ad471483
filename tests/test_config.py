from dataclasses import fields

import pytest

from config import R1Config, TrainConfig, field_help
from data import CorpusConfig
from grpo import GRPOConfig


def test_every_setting_is_explained_where_it_is_declared():
    # train.py --help shows these comments; a nested config is no setting of its own
    for config_class in (TrainConfig, R1Config, GRPOConfig, CorpusConfig):
        nested = {"grpo", "corpus", "r1"} if config_class is TrainConfig else set()
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
                         (dict(grpo=GRPOConfig(kl_beta=-1)), "GRPOConfig.kl_beta must be >= 0")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).validate()
