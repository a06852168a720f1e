"""The composed configs: every option of every group composes, and the contract's keys exist."""

from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from descend.prechecks import config_dir

CONF = config_dir()
GROUPS = ("task", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_the_contract_groups_exist():
    for group in (*GROUPS, "hydra"):
        assert (CONF / group).is_dir(), group


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = composed(f"{group}={option}")
        OmegaConf.to_container(cfg.task, resolve=True)  # interpolations resolve


def test_every_trainer_argument_is_reachable():
    import lightning.pytorch as pl

    cfg = composed()
    names = [n for n, p in inspect.signature(pl.Trainer.__init__).parameters.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    missing = [n for n in names if n not in cfg.trainer and n not in ("logger", "callbacks")]
    assert not missing, f"add to conf/trainer/default.yaml: {missing}"


def test_every_task_config_matches_its_constructor():
    from hydra.utils import get_class

    for option in sorted(p.stem for p in (CONF / "task").glob("*.yaml")):
        cfg = composed(f"task={option}").task
        cls = get_class(cfg._target_)
        accepted = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                accepted |= set(inspect.signature(klass.__init__).parameters)
        unknown = set(cfg) - accepted - {"_target_"}
        assert not unknown, f"conf/task/{option}.yaml has keys {unknown} that {cls.__name__} does not take"


def test_sgd_takes_the_learning_rate_the_task_is_tuned_for():
    assert composed("task=linreg").optimizer.lr == 0.01
    assert composed("task=inverse").optimizer.lr == pytest.approx(0.4605170186)
    assert composed("task=linreg", "optimizer.lr=0.3").optimizer.lr == 0.3


def test_runs_and_sweeps_go_under_outputs():
    cfg = composed()
    assert cfg.hydra.run.dir.startswith("outputs/runs/") and cfg.hydra.sweep.dir.startswith("outputs/multirun/")


def test_a_run_without_an_end_is_refused_unless_epochs_bound_it():
    from descend.build import unbounded

    assert "set trainer.max_epochs=N" in unbounded(composed("trainer.max_steps=-1").trainer)
    assert unbounded(composed("trainer.max_steps=-1", "trainer.max_epochs=3").trainer) == ""
    assert unbounded(composed("trainer.max_steps=-1", "trainer.max_time=00:00:01:00").trainer) == ""
    assert unbounded(composed().trainer) == ""


def test_the_limit_that_ended_a_run_is_named():
    from types import SimpleNamespace

    from descend.cli import stopped_by

    def trainer(steps, epochs, step, epoch):
        return SimpleNamespace(max_steps=steps, max_epochs=epochs, global_step=step, current_epoch=epoch, should_stop=False)

    assert stopped_by(trainer(100, 50, 100, 7)).startswith("trainer.max_steps=100, before trainer.max_epochs=50")
    assert stopped_by(trainer(100, -1, 100, 0)) == "trainer.max_steps=100"
    # max_steps at the end of the first of two epochs: Lightning's current_epoch is then 1
    assert stopped_by(trainer(100, 2, 100, 1)).startswith("trainer.max_steps=100, before trainer.max_epochs=2")
    assert stopped_by(trainer(200, 2, 200, 2)) == "trainer.max_steps=200"  # both limits at once
    assert stopped_by(trainer(-1, 50, 2250, 50)) == "trainer.max_epochs=50"


def test_a_key_of_another_option_names_the_option_it_belongs_to():
    from descend.prechecks import _unknown_key, config_dir, options_with_key

    assert options_with_key("task.model.dropout", config_dir()) == ["mlp"]
    # a sweep over optimizers, with a key of task=mlp: the optimizer is not the culprit
    message = _unknown_key("task.model.dropout=0", "task.model.dropout", ["optimizer=sgd", "optimizer.lr=0.1"], config_dir(),
                           " with optimizer=sgd", swept={"optimizer", "optimizer.lr"})
    assert message == "task.model.dropout=0: task.model.dropout belongs to task=mlp, not to the default task=inverse; add task=mlp to the command"
    # a key some options of a swept group lack stays refused as before: set it in a sweep of those that have it
    refused = _unknown_key("scheduler.gamma=0.1", "scheduler.gamma", ["scheduler=cosine"], config_dir(), " with scheduler=cosine", swept={"scheduler"})
    assert "set it only in a sweep of the options that have it" in refused


def test_a_list_of_a_groups_options_is_checked_option_by_option():
    from descend.prechecks import check_group_choices
    from descend.errors import RefusedCommand

    check_group_choices(["logger=[tensorboard,csv]"], config_dir())  # Hydra's several options of one group
    with pytest.raises(RefusedCommand, match="logger=nope is unknown; choose one of: csv, "):
        check_group_choices(["logger=[tensorboard,nope]"], config_dir())
