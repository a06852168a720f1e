"""A config's YAML text, exactly as OmegaConf.to_yaml writes it, for many configs that differ in
a few values: the jobs of a population write 64 near-identical `.hydra/` files each, and PyYAML's
pure-Python emitter (about 3.5 ms for a hydra.yaml) cost more than their training.

In block style, a mapping's text is its entries' texts one after another, and an entry's text
depends only on its key, its value and the keys above it. So the text of each entry (a mapping's:
its own line, then its entries') is kept, keyed by its place and its value, and reused wherever an
equal entry comes again;
only what differs (a learning rate, a job's number and folder) is rendered anew. Each entry is
rendered by PyYAML itself, in place (nested under the keys above it), so line folding is the
same. tests/test_configtext.py checks the text against OmegaConf.to_yaml.
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf._utils import get_omega_conf_dumper

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same results as yaml.safe_load
# (keys above, key, repr of value) -> the entry's text; cleared when it grows past this many
_ENTRIES: dict[tuple[Any, ...], str] = {}
_MOST_ENTRIES = 20_000


def to_yaml(cfg: Any, *, resolve: bool = False, keys: list[str] | None = None) -> str:
    """OmegaConf.to_yaml(cfg, resolve=resolve), reusing the text of entries seen before; with
    `keys`, the text of a config holding only those of cfg's top-level entries."""
    if keys is None:
        data = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    else:
        data = {key: OmegaConf.to_container(cfg[key], resolve=resolve, enum_to_str=True) for key in keys}
    return yaml_text(data)


def yaml_text(data: Any) -> str:
    """OmegaConf.to_yaml's text of plain data (OmegaConf.to_container's), reusing entries' texts."""
    if type(data) is list and data and all(type(item) is str and _PLAIN_SETTING.match(item) for item in data):
        return "".join(f"- {item}\n" for item in data)  # overrides.yaml, as PyYAML writes a top-level list
    if not isinstance(data, dict) or not data:
        return _dump(data)
    if len(_ENTRIES) > _MOST_ENTRIES:
        _ENTRIES.clear()
    return "".join(_entry_text((), key, value) for key, value in data.items())


class TextTemplate:
    """The YAML text of one config (plain data, as to_yaml renders it) kept as segments, each
    mapping's own line and each other entry's lines, so that the text of a config that differs
    from it only in some entries (a population's jobs: a learning rate, a job's number and folder)
    is this text with those entries' segments rendered anew, without rendering or even converting
    the rest (OmegaConf.to_container of a job's Hydra node took longer than its training step).
    tests/test_configtext.py checks text() against OmegaConf.to_yaml."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self.segments: list[str] = []
        self.entries: dict[tuple[Any, ...], int] = {}  # an entry's keys -> its segment
        self._add((), data)

    def _add(self, above: tuple[Any, ...], data: dict[Any, Any]) -> None:
        for key, value in data.items():
            keys = above + (key,)
            own, parent = (_header(keys), _header(above)) if isinstance(value, dict) and value else (None, None)
            if own is not None and parent is not None:  # as _render writes a mapping: its line, then its entries
                self.segments.append(own[len(parent) :])
                self._add(keys, value)
            else:
                self.entries[keys] = len(self.segments)
                self.segments.append(_entry_text(above, key, value))

    def text(self, changes: dict[tuple[Any, ...], Any]) -> str | None:
        """The text with the entries at `changes`' keys (("optimizer", "lr"): 0.1) set to its
        values; None where one is not an entry of this text of its own (inside a list, say, or a
        mapping written as one entry), for the caller to render the whole config."""
        segments = self.segments[:]
        for keys, value in changes.items():
            index = self.entries.get(keys)
            if index is None:
                return None
            segments[index] = _entry_text(keys[:-1], keys[-1], value)
        return "".join(segments)


def resolved_data(cfg: Any) -> Any:
    """OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), read from the nodes directly
    where no interpolation is left (a population member's config, which OmegaConf.resolve
    resolved in place): to_container checks each node for interpolations and resolves it, a
    millisecond for a job's config. Where a value holds one (`${...}`, or an escaped one that
    resolving made literal), or a key is not a plain string or number, it is to_container's."""
    try:
        return _node_data(cfg)
    except _NotPlain:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


class _NotPlain(Exception):
    pass


def _node_data(node: Any) -> Any:
    # called for every node of a member's config, several times a member: a container is told
    # by its _content (a value node holds _val), as isinstance would through ABCMeta's check, for
    # less; the checks read the fields Container._is_none and _is_missing read, without their calls
    content = node.__dict__.get("_content", _VALUE)
    if content is not _VALUE:
        if content is None:
            return None
        if type(content) is str:  # a container's interpolation, or ???
            if content == "???":
                return "???"
            raise _NotPlain
        if type(content) is list:
            return [_node_data(child) for child in content]
        if not all(type(key) in (str, int) for key in content):
            raise _NotPlain
        return {key: _node_data(child) for key, child in content.items()}
    value = node._value()
    if isinstance(value, str) and "${" in value:
        raise _NotPlain
    return value.name if isinstance(value, Enum) else value


_VALUE = object()  # _node_data's mark of a value node


def plain_value(cfg: Any, key: str) -> Any:
    """The value at dotted `key` of an OmegaConf config as OmegaConf.to_container(cfg,
    enum_to_str=True) holds it: unresolved, containers as plain dicts and lists."""
    parent_key, _, leaf = key.rpartition(".")
    parent = _plain_mapping(cfg, parent_key) if parent_key else cfg
    if parent is None:
        parent = OmegaConf.select(cfg, parent_key)
    node = parent._get_node(leaf)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, enum_to_str=True)
    value = node._value()
    return value.name if isinstance(value, Enum) else value


def _plain_mapping(cfg: Any, key: str) -> Any:
    """The mapping at dotted `key` when each step is a plain mapping's entry (what OmegaConf.select
    returns there, without its grammar: a job's launcher reads a dozen a job), else None."""
    node = cfg
    for part in key.split("."):
        node = node._get_node(part, validate_access=False) if type(node) is DictConfig else None
        if type(node) is not DictConfig or node._is_interpolation() or node._is_none() or node._is_missing():
            return None
    return node


def plain_select(cfg: Any, key: str) -> Any:
    """OmegaConf.select(cfg, key) for a dotted `key` of plain names, read from the nodes where
    each step is a plain mapping and the value is a plain value (no interpolation, not ???):
    OmegaConf's select parses the key and checks each step, 20 us a call, for the values every
    job reads. Otherwise OmegaConf's own select."""
    parent_key, _, leaf = key.rpartition(".")
    parent = _plain_mapping(cfg, parent_key) if parent_key else cfg if type(cfg) is DictConfig else None
    node = parent._get_node(leaf, validate_access=False) if parent is not None else None
    if node is not None and "_val" in node.__dict__ and not node._is_interpolation() and not node._is_missing():
        return node._value()
    return OmegaConf.select(cfg, key)


def read_yaml(path: Path) -> Any:
    """A YAML file's data (a run's .hydra/ files), parsed by libyaml where PyYAML has it: the
    pure-Python parser takes about 10 ms for a config.yaml, and a summary of 1024 jobs reads
    thousands. Raises OSError for a missing file and yaml.YAMLError for a malformed one."""
    return yaml.load(path.read_text(), Loader=SAFE_LOADER)


def _entry_text(above: tuple[Any, ...], key: Any, value: Any) -> str:
    """The lines `key: value` takes in the whole text, nested under the keys `above`."""
    if isinstance(value, dict) and value:  # its line, then its entries' texts: keyed one by one below,
        own, parent = _header(above + (key,)), _header(above)  # not by the repr of the whole subtree
        if own is not None and parent is not None:
            return own[len(parent) :] + "".join(_entry_text(above + (key,), k, v) for k, v in value.items())
    if type(value) in (int, float) or (type(value) is str and _SCALAR_STRING.match(value)):
        return _scalar_text(above, key, value)  # not bool: a job's number, learning rate, id, name or folder, new in every job
    if type(value) is list and value and all(type(item) is str and _PLAIN_SETTING.match(item) for item in value):
        return _settings_text(above, key, value)  # a job's overrides
    cache_key = (above, key, repr(value))  # repr tells 1 from 1.0, '1' and True
    text = _ENTRIES.get(cache_key)
    if text is None:
        text = _render(above, key, value)
        _ENTRIES[cache_key] = text
    return text


# Strings whose text _scalar_text writes without PyYAML's emitter. None has a space (so no line is
# ever folded), a quote, a colon or a "#"; in block style a comma or bracket inside a plain scalar
# is allowed. _PLAIN_PATH and _PLAIN_SETTING are written plain, as a number is: no YAML indicator
# or implicit type (bool, null, number, timestamp, "=") starts with "/", and none starting with a
# letter holds a "=" (nor does Python's float() or int() read one, which OmegaConf's representer
# would quote). _DIGITS (a job's id) is what OmegaConf's representer single-quotes, as int() reads it.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./=-]*\Z")  # a job's folder
_PLAIN_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_.,/+-]*=[A-Za-z0-9_.,/=+-]*\Z")  # `optimizer.lr=0.1`, override_dirname
_DIGITS = re.compile(r"[0-9]+\Z")
_SCALAR_STRING = re.compile(f"{_PLAIN_PATH.pattern}|{_PLAIN_SETTING.pattern}|{_DIGITS.pattern}")


def _scalar_text(above: tuple[Any, ...], key: Any, value: int | float | str) -> str:
    """_render(above, key, value) of an int, a float or a _SCALAR_STRING without PyYAML's emitter
    (0.1 ms an entry): the text of `key: 0` with the value in place of the 0, as PyYAML's
    representer writes it (str() of an int, SafeRepresenter.represent_float's text of a float, a
    plain string as it is, a string of digits in single quotes). Such a value is a scalar without
    spaces, which the emitter writes as it is, wherever the key puts it."""
    cache_key = ("scalar", above, key)
    prefix = _ENTRIES.get(cache_key)
    if prefix is None:
        sample = _render(above, key, 0)
        prefix = sample[: -len("0\n")] if sample.endswith(": 0\n") else ""
        _ENTRIES[cache_key] = prefix
    if not prefix:  # a key PyYAML does not write as `key: 0`: it renders the entry
        return _render(above, key, value)
    if type(value) is str:
        text = f"'{value}'" if _DIGITS.match(value) else value
    else:
        text = str(value) if type(value) is int else _representer().represent_float(value).value
    return f"{prefix}{text}\n"


def _settings_text(above: tuple[Any, ...], key: Any, value: list[str]) -> str:
    """_render(above, key, value) of a non-empty list of _PLAIN_SETTING strings (a job's overrides)
    without PyYAML's emitter: each item on a line of its own, after the `- ` and the indent PyYAML
    gives a list in that place, as the text of `key: [a=0]` shows them."""
    cache_key = ("settings", above, key)
    parts = _ENTRIES.get(cache_key)
    if parts is None:
        sample = _render(above, key, ["a=0"])
        head, _, item = sample[: -len("a=0\n")].rpartition("\n") if sample.endswith("- a=0\n") else ("", "", "")
        parts = _ENTRIES[cache_key] = (head + "\n", item) if item.strip() == "-" else None  # type: ignore[assignment]
    if parts is None:  # not a block list in this place: PyYAML renders it
        return _render(above, key, value)
    head, item = parts
    return head + "".join(f"{item}{setting}\n" for setting in value)


@functools.cache
def _representer() -> Any:
    """One OmegaConf YAML dumper, for its representer's text of a scalar (it writes nothing)."""
    return get_omega_conf_dumper()(None)


def _render(above: tuple[Any, ...], key: Any, value: Any) -> str:
    text = _dump(_nested(above, {key: value}))
    prefix = _header(above) or ""
    assert text.startswith(prefix), (above, key)  # _header's check: keys above take a line each
    return text[len(prefix) :]


def _header(keys: tuple[Any, ...]) -> str | None:
    """The lines of `keys` nested one in the next (`a:`, `  b:`): what stands above their entries.
    None where a key is not written on a line of its own (a long or complex key)."""
    if not keys:
        return ""
    cache_key = ("header", keys)
    if cache_key not in _ENTRIES:
        lines = _dump(_nested(keys, {"_": 0})).splitlines(keepends=True)
        plain = len(lines) == len(keys) + 1 and all(line.rstrip().endswith(":") for line in lines[:-1])
        _ENTRIES[cache_key] = "".join(lines[:-1]) if plain else None  # type: ignore[assignment]
    return _ENTRIES[cache_key]


def _nested(keys: tuple[Any, ...], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _dump(data: Any) -> str:
    # OmegaConf.to_yaml's own call
    return yaml.dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=get_omega_conf_dumper())


def flat_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (plain dicts) as one level: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resolved_flat(config: dict[str, Any]) -> dict[str, Any]:
    """flat_config of a saved config (.hydra/config.yaml as plain dicts), each interpolation
    (`optimizer.lr: ${task.sgd_lr}`) resolved as the run resolved it; one that cannot be resolved
    here (`${hydra:runtime.output_dir}` outside its run) is kept as written."""
    flat = flat_config(config)
    pending = [k for k, v in flat.items() if isinstance(v, str) and "${" in v]
    if not pending:
        return flat
    tree = OmegaConf.create(config)
    for key in pending:
        value = OmegaConf.select(tree, key, throw_on_resolution_failure=False)
        if value is not None:
            flat[key] = value
    return flat
