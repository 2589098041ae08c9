"""The configurations of a sweep: a list, or a grid of option values, and the sweep file that names them.

A sweep compares training configurations of the local model, listed one by one or given as a grid of option
values (dotted names: ``local.C``, ``local.word_ngram_max``, ``seed``; every combination is tried). A sweep
file (``load_sweep_file``, YAML or JSON)::

    base:                       # optional: options every configuration shares
      local: {calibration_folds: 3}
    grid:                       # every combination: 3 x 2 = 6 configurations
      local.C: [0.3, 1.0, 3.0]
      local.word_ngram_max: [1, 2]
    # or, instead of grid, a list (each entry is laid over base):
    # configs:
    #   - {local: {C: 0.5}}
    #   - {local: {C: 2.0, char_ngram_max: 4}}

Scoring and choosing are ``nluflow.sweep``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nluflow.backends.base import LocalModelOptions, TrainingConfig
from nluflow.data import yaml_positions as yp
from nluflow.errors import ConfigError, DataError

__all__ = ["MAX_SWEEP_CONFIGS", "config_labels", "expand_grid", "load_sweep_file", "resolve_configs"]

logger = logging.getLogger(__name__)

# A grid multiplies quickly; more configurations than this is almost always a typo in the grid.
MAX_SWEEP_CONFIGS = 128
_SECTIONS = ("base", "grid", "configs")


# -- configurations ----------------------------------------------------------------------------------------


def _option_names() -> dict[str, set[str] | None]:
    """Dotted option prefixes a grid may name; ``None``: any sub-key (backend-specific ``extra``)."""
    sections: dict[str, set[str] | None] = {"local": set(LocalModelOptions.model_fields), "extra": None}
    return {**{n: set() for n in TrainingConfig.model_fields if n not in sections}, **sections}


def _check_grid_key(key: str) -> None:
    names = _option_names()
    head, _, rest = key.partition(".")
    if head not in names:
        raise ConfigError(
            f"grid option {key!r} is not a training option; expected one of "
            f"{', '.join(sorted(n for n in names if n not in ('local', 'extra')))}, 'local.<option>' or "
            "'extra.<option>'; nothing was trained"
        )
    allowed = names[head]
    if head in ("local", "extra"):
        if not rest or "." in rest:
            raise ConfigError(
                f"grid option {key!r} needs exactly one option name after '{head}.' (e.g. 'local.C'); "
                "nothing was trained"
            )
        if allowed is not None and rest not in allowed:
            raise ConfigError(
                f"grid option {key!r}: {rest!r} is not a local model option; expected one of "
                f"{', '.join(sorted(allowed))}; nothing was trained"
            )
    elif rest:
        raise ConfigError(f"grid option {key!r}: {head!r} has no sub-options; nothing was trained")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``; nested mappings (``local``, ``extra``) are merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _base_dict(base: TrainingConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, TrainingConfig):
        return base.model_dump(mode="json", exclude_unset=False)
    return dict(base)


def expand_grid(
    grid: Mapping[str, Sequence[Any]], base: TrainingConfig | Mapping[str, Any] | None = None
) -> list[TrainingConfig]:
    """Every combination of the grid's values laid over ``base``, in the grid's key order (the last key
    varies fastest). Unknown option names, empty value lists and out-of-range values raise ``ConfigError``."""
    if not grid:
        raise ConfigError(
            "the grid is empty; expected option names with lists of values; nothing was trained"
        )
    keys = list(grid)
    values: list[list[Any]] = []
    for key in keys:
        _check_grid_key(key)
        options = grid[key]
        if isinstance(options, str | bytes) or not isinstance(options, Sequence) or len(options) == 0:
            raise ConfigError(
                f"grid option {key!r} is {options!r}; expected a non-empty list of values; "
                "nothing was trained"
            )
        values.append(list(options))
    total = 1
    for v in values:
        total *= len(v)
    if total > MAX_SWEEP_CONFIGS:
        raise ConfigError(
            f"the grid makes {total} configurations ({' x '.join(str(len(v)) for v in values)}); expected at "
            f"most {MAX_SWEEP_CONFIGS}; nothing was trained; use fewer values or a list of configurations"
        )
    start = _base_dict(base)
    configs: list[TrainingConfig] = []
    for combo in itertools.product(*values):
        layer: dict[str, Any] = {}
        for key, value in zip(keys, combo, strict=True):
            head, _, rest = key.partition(".")
            if rest:
                layer.setdefault(head, {})[rest] = value
            else:
                layer[head] = value
        label = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
        try:
            configs.append(TrainingConfig.parse(_merge(start, layer)))
        except ConfigError as exc:
            raise ConfigError(f"grid combination {label}: {exc}") from None
    return configs


def resolve_configs(
    configs: Sequence[TrainingConfig | Mapping[str, Any]] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    base: TrainingConfig | Mapping[str, Any] | None = None,
) -> list[TrainingConfig]:
    """The sweep's configurations: a list or a grid, exactly one of them. ``base`` is laid under every grid
    combination and under every *mapping* in the list; a ``TrainingConfig`` in the list is complete and taken
    as it is (so a configuration means the same whether it arrives as an object or as JSON). Duplicates
    (same config hash) are dropped, keeping the first."""
    if (configs is None) == (grid is None):
        raise ConfigError(
            "a sweep needs either a list of configurations or a grid of option values (exactly one); "
            "nothing was trained"
        )
    if grid is not None:
        expanded = expand_grid(grid, base)
    else:
        assert configs is not None
        if not configs:
            raise ConfigError(
                "the list of configurations is empty; expected at least one; nothing was trained"
            )
        start = _base_dict(base)
        expanded = []
        for i, entry in enumerate(configs):
            if isinstance(entry, TrainingConfig):
                expanded.append(entry)
                continue
            try:
                expanded.append(TrainingConfig.parse(_merge(start, entry)))
            except ConfigError as exc:
                raise ConfigError(f"configuration {i + 1}: {exc}") from None
    if len(expanded) > MAX_SWEEP_CONFIGS:
        raise ConfigError(
            f"{len(expanded)} configurations given; expected at most {MAX_SWEEP_CONFIGS}; nothing was trained"
        )
    unique: dict[str, TrainingConfig] = {}
    for cfg in expanded:
        unique.setdefault(cfg.sha256(), cfg)
    if len(unique) < len(expanded):
        logger.info("sweep: %d duplicate configurations dropped", len(expanded) - len(unique))
    return list(unique.values())


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(_flatten(item, name + "."))
        else:
            out[name] = item
    return out


def config_labels(configs: Sequence[TrainingConfig]) -> list[str]:
    """A short label per configuration: the options whose values differ between them (``C=0.5,
    word_ngram_max=1``; ``local.`` is left out). ``base`` when nothing differs."""
    flat = [_flatten(c.model_dump(mode="json")) for c in configs]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    labels = []
    for f in flat:
        parts = [f"{k.removeprefix('local.')}={f.get(k)}" for k in varying]
        labels.append(", ".join(parts) or "base")
    return labels


# -- the sweep file ----------------------------------------------------------------------------------------


def load_sweep_file(path: str | Path) -> list[TrainingConfig]:
    """Read a sweep file (YAML or JSON; see the module docstring) into its configurations.

    Problems raise ``DataError`` at the file and line of the offending entry: unreadable or malformed file,
    an unknown section, both or neither of ``grid`` / ``configs``, an unknown option, an out-of-range value.
    """
    path = Path(path)
    root, raw = _read_sweep_yaml(path)
    lines = yp.key_lines(root)
    base = _check_sections(path, raw, lines)
    if "grid" in raw:
        return _grid_configs(path, raw["grid"], base, root, lines)
    return _listed_configs(path, raw["configs"], base, root, lines)


def _read_sweep_yaml(path: Path) -> tuple[yaml.Node | None, dict[str, Any]]:
    """The file's YAML node tree (for line numbers) and its value, which must be a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the sweep file: {exc.strerror}; nothing was trained", path) from None
    try:
        root = yp.compose(text)
        raw = yp.construct(root)
    except yp.YamlPositionError as exc:
        raise DataError(
            f"the sweep file is not valid YAML/JSON: {exc.problem or exc.cause}; nothing was trained",
            path,
            exc.line,
        ) from None
    if not isinstance(raw, dict):
        raise DataError(
            f"found {type(raw).__name__}; expected a mapping with 'grid' or 'configs' (and optionally "
            "'base'); nothing was trained",
            path,
            1,
        )
    return root, raw


def _check_sections(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> dict[str, Any]:
    """Check the top-level sections (known; exactly one of grid/configs) and return the valid ``base``."""
    for key in raw:
        if key not in _SECTIONS:
            raise DataError(
                f"unknown section {key!r}; expected 'base', and 'grid' or 'configs'; nothing was trained",
                path,
                lines.get(str(key)),
            )
    if ("grid" in raw) == ("configs" in raw):
        raise DataError(
            "expected exactly one of 'grid' (option -> list of values) or 'configs' (a list of "
            f"configurations), found {'both' if 'grid' in raw else 'neither'}; nothing was trained",
            path,
            1,
        )
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise DataError(
            "'base' must be a mapping of training options; nothing was trained", path, lines.get("base")
        )
    try:
        TrainingConfig.parse(base)
    except ConfigError as exc:
        raise DataError(f"base: {exc}", path, lines.get("base")) from None
    return base


def _grid_configs(
    path: Path, grid: Any, base: dict[str, Any], root: yaml.Node | None, lines: dict[str, int]
) -> list[TrainingConfig]:
    if not isinstance(grid, dict):
        raise DataError(
            "'grid' must map option names to lists of values; nothing was trained", path, lines.get("grid")
        )
    grid_lines = yp.key_lines(yp.child(root, "grid"))
    for key in grid:
        try:
            _check_grid_key(str(key))
        except ConfigError as exc:
            raise DataError(str(exc), path, grid_lines.get(str(key))) from None
    try:
        return resolve_configs(grid=grid, base=base)
    except ConfigError as exc:
        raise DataError(str(exc), path, lines.get("grid")) from None


def _listed_configs(
    path: Path, entries: Any, base: dict[str, Any], root: yaml.Node | None, lines: dict[str, int]
) -> list[TrainingConfig]:
    node = yp.child(root, "configs")
    items = node.value if isinstance(node, yaml.SequenceNode) else []
    if not isinstance(entries, list) or not entries:
        raise DataError(
            "'configs' must be a non-empty list of training option mappings; nothing was trained",
            path,
            lines.get("configs"),
        )
    for i, entry in enumerate(entries):
        where = yp.line_of(items[i]) if i < len(items) else lines.get("configs")
        if not isinstance(entry, dict):
            raise DataError(
                f"configuration {i + 1} is {type(entry).__name__}; expected a mapping of training options; "
                "nothing was trained",
                path,
                where,
            )
        try:
            TrainingConfig.parse(_merge(base, entry))
        except ConfigError as exc:
            raise DataError(f"configuration {i + 1}: {exc}", path, where) from None
    return resolve_configs(configs=entries, base=base)
