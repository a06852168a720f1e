"""configtext.to_yaml writes exactly OmegaConf.to_yaml's text, however often entries come again."""

from __future__ import annotations

import random

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra_plugins.descend_population_launcher.population_launcher import job_config
from omegaconf import OmegaConf

from descend import configtext
from descend.prechecks import config_dir

TRICKY = [
    0, 1, -3, 1.0, 0.46, 1e-12, float("inf"), float("nan"), True, False, None, "", " ", "true", "1", "1.5", "no",
    "a: b", "#x", "${hydra:runtime.output_dir}", "line\nbreak", "trailing ", "ünïcode ∑", "'quoted'", '"dq"',
    "- dash", "x" * 150, " ".join(["word"] * 40), "Examples:\n  python -m train a=b\n" * 4, [], {}, [1, "a", None],
    [{"a": 1}, {"b": [2, 3]}], {"nested": {"deep": {"deeper": "x" * 90}}},
    1e17, -0.0, 2.5e-300, float("-inf"), 0.1 + 0.2, "/tmp/multirun/2026-11-30/12-00-00/3", "/a/b=c/d-e_f.g", "/",
    "/" + "long/" * 30, "/with space", "/x:y", "/x#y",
]


def random_mapping(rng: random.Random, depth: int) -> dict:
    keys = ["a", "lr", "optimizer", "x" * 60, "with space", "1", "true", "k:v", "ünï", "_target_"]
    mapping = {}
    for key in rng.sample(keys, rng.randint(1, 5)):
        mapping[key] = random_mapping(rng, depth - 1) if depth and rng.random() < 0.4 else rng.choice(TRICKY)
    return mapping


def test_random_configs_match_omegaconf() -> None:
    rng = random.Random(314)
    for _ in range(300):
        cfg = OmegaConf.create(random_mapping(rng, 4))
        assert configtext.to_yaml(cfg) == OmegaConf.to_yaml(cfg)


@pytest.mark.parametrize("overrides", [[], ["task=mlp", "optimizer=adam"], ["task=lowrank", "scheduler=cosine"]])
def test_composed_configs_match_omegaconf_while_values_change(overrides: list[str]) -> None:
    """A sweep's configs, hydra node included: the first renders every entry, the others reuse
    the unchanged ones and render the changed ones."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for lr in (0.01, 0.1, 0.46, 0.1):
            cfg = compose("train", [*overrides, f"optimizer.lr={lr}", f"seed={int(lr * 100)}"], return_hydra_config=True)
            cfg.hydra.job.num = int(lr * 100)
            cfg.hydra.runtime.output_dir = f"/tmp/job{lr}"
            HydraConfig.instance().set_config(cfg)  # for ${hydra:...} when resolving
            for node in (cfg, cfg.hydra):
                assert configtext.to_yaml(node) == OmegaConf.to_yaml(node)
            job = job_config(cfg)  # what the task receives, as dashboard.log_to_tensorboard writes it
            assert configtext.to_yaml(job, resolve=True) == OmegaConf.to_yaml(job, resolve=True)


def test_numbers_and_folders_are_written_as_pyyaml_writes_them() -> None:
    """An int, float, plain absolute path, `key=value` setting or string of digits is `key: 0`'s
    text with PyYAML's text of the value in place of the 0 (configtext._scalar_text): PyYAML's own
    rendering (OmegaConf's dumper), for any such value and any key."""
    rng = random.Random(21)
    numbers = [0, 1, -7, 10**30, -(10**30), 0.0, -0.0, 1.0, 0.46, 1e-05, 1e17, 1.5e300, 5e-324, float("inf"), float("-inf"),
               float("nan"), 0.1 + 0.2, 123456789.0, 1e16, 1e15]
    numbers += [rng.uniform(-1e3, 1e3) for _ in range(100)] + [rng.lognormvariate(0, 60) for _ in range(100)]
    numbers += [rng.randint(-10**12, 10**12) for _ in range(50)]
    numbers += ["/", "/tmp/multirun/2026-11-30/12-00-00/3", "/" + "long/" * 30]
    numbers += ["/" + "/".join(rng.choice(["tmp", "a=b", "x.y", "2026-11-30", "12-00-00", "_", "-"]) for _ in range(rng.randint(0, 8)))
                for _ in range(50)]
    parts = ["optimizer", "lr", "0.1", "1e-05", "-3", "+x", "a_b", "true", "null", "nan", "inf", "0x1F", "2026-11-30", "/tmp", ",", "="]
    numbers += ["a=", "x=y", "seed=3", "optimizer.lr=0.46", "a=1,b=2", "t=true", "n=null", "v=.inf", "k==", "f=1e5", "Yes=No"]
    numbers += [rng.choice("abcxyzNOT_") + "".join(rng.choice(parts) for _ in range(rng.randint(0, 4))) + "="
                + "".join(rng.choice(parts) for _ in range(rng.randint(0, 4))) for _ in range(100)]
    numbers += ["0", "7", "12", "007", "1023", "9" * 40]
    numbers = [n for n in numbers if not isinstance(n, str) or configtext._SCALAR_STRING.match(n)]
    assert len([n for n in numbers if isinstance(n, str)]) > 150  # the short way is tried on these
    keys = ["lr", "x" * 150, "with space", "1", "true", "k:v", "ünï", "_target_", 3, "a" * 75]
    for above in [(), ("optimizer",), ("hydra", "job"), ("y" * 90, "z")]:
        for key in keys:
            for number in numbers:
                assert configtext._entry_text(above, key, number) == configtext._render(above, key, number), (above, key, number)
    assert configtext._ENTRIES[("scalar", ("optimizer",), "lr")] == "  lr: "  # the short way was taken


def test_overrides_lists_are_written_as_pyyaml_writes_them() -> None:
    """A job's overrides (a list of `key=value` settings) under any key, and as a whole file
    (overrides.yaml), without PyYAML's emitter (configtext._settings_text): its own rendering."""
    rng = random.Random(7)
    lists = [["optimizer.lr=0.1"], ["optimizer.lr=0.1", "seed=2", "hydra/launcher=population"], ["a=1,2", "b=[0.8,0.9]"],
             [f"x{i}=" + str(rng.random()) for i in range(rng.randint(1, 30))], ["task=mlp", "optimizer=adam", "n=null"]]
    for above in [(), ("hydra", "overrides"), ("y" * 90, "z")]:
        for key in ["task", "x" * 150, "with space", 3]:
            for value in lists:
                assert configtext._entry_text(above, key, value) == configtext._render(above, key, value), (above, key, value)
    assert configtext._ENTRIES[("settings", ("hydra", "overrides"), "task")] is not None  # the short way was taken
    for data in lists:
        assert configtext.to_yaml(OmegaConf.create(data)) == OmegaConf.to_yaml(OmegaConf.create(data))


def test_lists_and_scalars_are_written_whole() -> None:
    for data in (["optimizer.lr=0.1", "seed=2"], ["a b", "c=d"], [], {}):
        assert configtext.to_yaml(OmegaConf.create(data)) == OmegaConf.to_yaml(OmegaConf.create(data))


@pytest.mark.parametrize("overrides", [[], ["task=mlp", "optimizer=adam", "optimizer.betas=[0.8,0.9]"]])
def test_a_jobs_text_is_the_first_jobs_with_its_own_entries(overrides: list[str]) -> None:
    """The population launcher writes a derived job's config.yaml and hydra.yaml as the first
    job's text (TextTemplate) with the entries its overrides set and its own number and folder
    (PER_JOB_HYDRA_KEYS) rendered anew: byte for byte OmegaConf.to_yaml of its whole config."""
    from hydra_plugins.descend_population_launcher.population_launcher import PER_JOB_HYDRA_KEYS

    keys = ["optimizer.lr", "seed"] + (["optimizer.betas"] if overrides else [])
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        jobs = []
        for number, (lr, seed) in enumerate([(0.01, 1), (0.46, 7), (1e-12, 314), (2.0, 0)]):
            betas = [f"optimizer.betas=[{0.8 + number / 100},0.9]"] if overrides else []
            cfg = compose("train", [*overrides, f"optimizer.lr={lr}", f"seed={seed}", *betas], return_hydra_config=True)
            cfg.hydra.job.num = cfg.hydra.job.id = number
            cfg.hydra.runtime.output_dir = f"/tmp/sweep/{number}_lr={lr}"
            jobs.append(cfg)
    first = jobs[0]
    task_text = configtext.TextTemplate(OmegaConf.to_container(job_config(first), enum_to_str=True))
    hydra_text = configtext.TextTemplate({"hydra": OmegaConf.to_container(first.hydra, enum_to_str=True)})
    for cfg in jobs:
        task = job_config(cfg)
        text = task_text.text({tuple(k.split(".")): configtext.plain_value(task, k) for k in keys})
        assert text == OmegaConf.to_yaml(task)
        hydra = hydra_text.text({("hydra", *k.split(".")): configtext.plain_value(cfg.hydra, k) for k in PER_JOB_HYDRA_KEYS})
        assert hydra == OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, "hydra"))
    assert task_text.text({("task", "no_such_key"): 1}) is None  # not an entry: the caller renders the whole config


@pytest.mark.parametrize("task", ["inverse", "mlp", "lowrank", "linreg", "eigen", "quadratic"])
def test_resolved_data_is_to_containers(task: str) -> None:
    """configtext.resolved_data equals OmegaConf.to_container(resolve=True, enum_to_str=True) for
    a job's config before resolving (its interpolations: to_container's own path) and after
    OmegaConf.resolve (read from the nodes), and for values to_container treats specially."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", [f"task={task}", "optimizer.lr=0.25"], return_hydra_config=True)
        cfg.hydra.runtime.output_dir = "/tmp/job"
        HydraConfig.instance().set_config(cfg)
        job = job_config(cfg)
        expected = OmegaConf.to_container(job, resolve=True, enum_to_str=True)
        assert configtext.resolved_data(job) == expected
        OmegaConf.resolve(job)
        assert configtext.resolved_data(job) == expected
    odd = OmegaConf.create({"missing": "???", "none": None, "list": [1, {"a": None}, "???"], "empty": {},
                            "escaped": "\\${not.one}", "nested": {"x": "${none}"}})
    assert configtext.resolved_data(odd) == OmegaConf.to_container(odd, resolve=True, enum_to_str=True)
    del odd["escaped"]  # resolved, it is a literal ${not.one} that to_container would take for an interpolation
    OmegaConf.resolve(odd)
    assert configtext.resolved_data(odd) == OmegaConf.to_container(odd, resolve=True, enum_to_str=True)


def test_plain_value_is_what_to_container_holds_at_the_key() -> None:
    """plain_value walks plain mappings itself and leaves the rest (interpolated mappings, lists,
    None, ???, missing keys) to OmegaConf.select: each key gives to_container's value there."""
    cfg = OmegaConf.create({"a": {"b": {"c": 1, "s": "${a.b.c}"}, "i": "${a.b}", "n": None, "m": "???",
                                  "l": [1, {"x": 2}], "e": {}}})
    OmegaConf.set_struct(cfg, True)
    plain = OmegaConf.to_container(cfg, enum_to_str=True)
    for key, expected in (("a", plain["a"]), ("a.b", plain["a"]["b"]), ("a.b.c", 1), ("a.b.s", "${a.b.c}"), ("a.i", "${a.b}"),
                          ("a.n", None), ("a.m", "???"), ("a.l", [1, {"x": 2}]), ("a.l.1.x", 2), ("a.e", {})):
        assert configtext.plain_value(cfg, key) == expected, key
    assert configtext.plain_value(cfg, "a.i.c") == 1  # under an interpolated mapping: OmegaConf's select
    with pytest.raises(AttributeError):
        configtext.plain_value(cfg, "a.zz.c")  # as before: save_configs then writes the whole text


def test_plain_select_is_omegaconfs_select() -> None:
    """plain_select reads plain entries itself and leaves interpolations, ???, lists and missing
    keys to OmegaConf.select: the same value for every key."""
    cfg = OmegaConf.create({"a": {"b": {"c": 1, "s": "${a.b.c}", "n": None}, "i": "${a.b}", "m": "???", "l": [1, {"x": 2}],
                                  "e": {}, "t": "text"}, "top": 3.5})
    OmegaConf.set_struct(cfg, True)
    for key in ("top", "a.b.c", "a.b.s", "a.b.n", "a.i.c", "a.m", "a.l.1.x", "a.t", "a.zz", "a.zz.c", "a.b"):
        assert configtext.plain_select(cfg, key) == OmegaConf.select(cfg, key), key
