"""Recipes: a whole experiment as data (TOML or YAML), validated by pydantic.

A recipe names its components and gives their options; each component's own
options model validates them. Unknown keys and unknown component names are
one-line errors that name the key and list the valid choices, closest first.
``extends = "other-recipe"`` starts from another recipe (tables merge; lists,
and a component table that names a different component, are replaced). ``--set model.head.hidden=500`` overrides one value;
``model.attention.0.hidden`` and ``model.attention.my-attention.hidden``
both reach into the attention list.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vgkit.errors import UnknownNameError, VgkitError, choices_hint
from vgkit.registry import Registry


class _Strict(BaseModel):
    # inf and nan are never a meaningful learning rate, size or weight
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentConfig(BaseModel):
    """A component by registry name; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        """The component's options as written in the recipe."""
        return dict(self.model_extra or {})


class DataConfig(_Strict):
    """Which data, and how text and images are prepared."""

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    dataset: ComponentConfig = Field(ComponentConfig(name="synthetic"), description=(
        "a registered dataset: its name, or a table {name = ..., option = ...} (see "
        "the dataset options below)"))
    root: str | None = Field(None, description="dataset directory; none: data/<dataset name> "
                             "under the current directory")
    vocab: str | None = Field(None, description="vocabulary file (one token a line); none or "
                              "empty: built from the training split")
    min_count: int = Field(1, ge=1, description="a word's count in the training split needed "
                           "to enter a built vocabulary")
    train_split: str = Field("train", description="the split trained on")
    val_split: str = Field("val", description="validated after each epoch; picks the best "
                           "checkpoint")
    test_split: str = Field("test", description="the split `vgkit eval` uses by default")
    embeddings: str = Field("random", description="word vectors: random, a local GloVe/word2vec "
                            "text file (FILE.zip::member.txt inside a zip), a .npy with its word "
                            "index, or pkg:NAME (a file of an installed package)")
    image_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (224, 224), description="(H, W) of the network input in pixels")
    resize: Literal["stretch", "letterbox"] = Field("stretch", description="how an image "
                                                    "becomes image_size: stretched, or scaled "
                                                    "to fit and padded")


class ModelConfig(_Strict):
    """The composed model: backbone -> text encoder -> attention chain -> head."""

    backbone: ComponentConfig = Field(description="a registered backbone: {name = ..., options}")
    text_encoder: ComponentConfig = Field(description="a registered text encoder")
    attention: list[ComponentConfig] = Field([], description="the attention chain, in order "
                                             "([[model.attention]] tables); may be empty")
    head: ComponentConfig = Field(description="a registered head")
    # Departures a recipe may switch on (named as such in its docs); off by default.
    init_bias: Literal["none", "dataset-mean"] = Field("none", description="dataset-mean: the "
                                                       "head's output bias starts at the mean "
                                                       "training box (a departure)")
    feature_norm: Literal["none", "channel"] = Field("none", description="channel: backbone "
                                                     "maps standardised per channel with "
                                                     "training statistics (a departure)")


class OptimConfig(_Strict):
    """The optimizer: Adam (its defaults are Adam's recommended values)."""

    name: Literal["adam"] = Field("adam", description="the optimizer")
    lr: float = Field(0.001, gt=0, description="learning rate (Adam's alpha)")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first-moment decay")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam's second-moment decay")
    eps: float = Field(1e-8, gt=0, description="Adam's epsilon")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradients")
    # a pure function of the step, so a resumed run follows the same curve exactly
    schedule: Literal["constant", "cosine"] = Field("constant", description="constant, or "
                                                    "cosine: lr decays to 0 over the run")


class TrainConfig(_Strict):
    """How long and how to train."""

    batch_size: int = Field(20, ge=1, description="expressions per step, over all ranks "
                            "(divisible by their number)")
    epochs: int = Field(10, ge=1, description="passes over the training split")
    seed: int = Field(0, description="seeds initialisation, shuffling and dropout")
    log_every: int = Field(50, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every: int = Field(500, ge=1, description="steps between mid-epoch saves of "
                                  "the last checkpoint")
    eval_batch_size: int = Field(64, ge=1, description="expressions per batch in validation "
                                 "and vgkit eval")
    workers: int = Field(2, ge=0, description="DataLoader worker processes (feature extraction, "
                         "and images read every step by a trainable backbone)")


class Reported(_Strict):
    """A published number that ``vgkit bench`` prints beside the recipe's own result."""

    value: float = Field(ge=0, le=100, description="the number in percent, as published")
    metric: str = Field("acc@0.5", description="what was measured")
    dataset: str = Field(description="a registered dataset name")
    split: str = Field("test", description="the split it was measured on")
    setting: str = Field(description="where the number stands in its source, e.g. "
                         "\"ablations, without attention\"")
    source: str = Field(description="the citation (and where in it)")
    method: str = Field("", description="empty: the setting this recipe reproduces; else "
                        "another method's number from the same source, shown for context")


class SearchRange(_Strict):
    """One hyper-parameter range of the recipe's random search (``vgkit search``)."""

    label: str = Field(description="the hyper-parameter, in its source's wording")
    short: str = Field(description="its column heading in vgkit search's table")
    keys: list[str] = Field(description="--set paths that take the sampled value (those the "
                            "recipe has)")
    low: float = Field(description="the smallest value")
    high: float = Field(description="the largest value")
    step: float = Field(gt=0, description="the grid step from low to high")
    chosen: float | None = Field(None, description="the value the source settled on, if it "
                                 "says")

    def values(self) -> list[float | int]:
        """Every value of the range, in order."""
        n = round((self.high - self.low) / self.step)
        integral = float(self.step).is_integer() and float(self.low).is_integer()
        return [int(self.low + k * self.step) if integral else round(self.low + k * self.step, 6)
                for k in range(n + 1)]


class Recipe(_Strict):
    """A complete, validated experiment."""

    name: str = Field(description="the recipe's name (runs/<name> by default)")
    description: str = Field("", description="one line shown by vgkit recipes")
    reference: str = Field("", description="what the recipe reproduces or follows")
    data: DataConfig = Field(DataConfig(), description="[data]")
    model: ModelConfig = Field(description="[model]")
    loss: ComponentConfig = Field(description="a registered loss: {name = ..., options}")
    optim: OptimConfig = Field(OptimConfig(), description="[optim]")
    train: TrainConfig = Field(TrainConfig(), description="[train]")
    reported: list[Reported] = Field([], description="[[reported]]: published numbers, never "
                                     "inherited through extends (a variant reports its own)")
    search: list[SearchRange] = Field([], description="[[search]]: the space vgkit search "
                                      "draws from; inherited like any list")

    def own_reported(self, dataset: str | None = None, split: str | None = None,
                     metric: str = "acc@0.5") -> list[Reported]:
        """The published numbers of this recipe's own setting (optionally for one dataset/split)."""
        return [r for r in self.reported if not r.method and r.metric == metric
                and dataset in (None, r.dataset) and split in (None, r.split)]

    def components(self) -> Iterable[tuple[str, str, ComponentConfig]]:
        """(kind, recipe path, config) of every component the recipe names."""
        m = self.model
        yield "dataset", "data.dataset", self.data.dataset
        yield "backbone", "model.backbone", m.backbone
        yield "text_encoder", "model.text_encoder", m.text_encoder
        for i, a in enumerate(m.attention):
            yield "attention", f"model.attention.{i}", a
        yield "head", "model.head", m.head
        yield "loss", "loss", self.loss

    def data_root(self) -> Path:
        """Where the dataset lives: ``data.root`` or ``data/<dataset name>``."""
        return Path(self.data.root or Path("data") / self.data.dataset.name).expanduser()

    def resolved(self, registry: Registry) -> dict[str, Any]:
        """The recipe as a dict with every component option filled in (defaults included)."""
        data = self.model_dump(mode="json")
        for kind, path, comp in self.components():
            opts = registry.get(kind, comp.name).make_options(comp.options())
            _set_path(data, path, {"name": comp.name, **opts.model_dump(mode="json")})
        return data


# ---------------------------------------------------------------- reading


def read_recipe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML or YAML recipe file into a dict (no validation)."""
    p = Path(path)
    if not p.is_file():
        raise VgkitError(f"recipe file not found: {p}")
    if p.suffix not in {".toml", ".yaml", ".yml"}:
        raise VgkitError(f"{p}: a recipe file must end in .toml, .yaml or .yml")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise VgkitError(f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                         "save the recipe as UTF-8") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise VgkitError(f"{p}: not valid {p.suffix[1:].upper()}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VgkitError(f"{p}: a recipe must be a mapping at the top level")
    return data


def recipe_from_file(path: Any) -> Callable[..., dict[str, Any]]:
    """A recipe-kind build function that reads `path` (a file or importlib resource)."""

    def build(_options: Any = None) -> dict[str, Any]:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if str(path).endswith(".toml") else yaml.safe_load(text)

    build.__doc__ = f"Recipe read from {path}."
    return build


def load_recipe(name_or_path: str, overrides: Iterable[str] = (), *,
                registry: Registry | None = None) -> Recipe:
    """Resolve a built-in name or a file, apply ``key=value`` overrides, validate everything."""
    if registry is None:
        from vgkit.plugins import get_registry

        registry = get_registry()
    data, source = _raw(name_or_path, registry, seen=())
    for item in overrides:
        data = apply_override(data, item)
    return validate_recipe(data, registry, source=source)


def _raw(name_or_path: str, registry: Registry, seen: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    if name_or_path in seen:
        raise VgkitError(f"recipe {name_or_path!r} extends itself: {' -> '.join(seen)}")
    looks_like_file = Path(name_or_path).suffix in {".toml", ".yaml", ".yml"} or os.sep in name_or_path
    if looks_like_file:
        data, source = read_recipe_file(name_or_path), str(name_or_path)
    else:
        data = copy.deepcopy(registry.build("recipe", name_or_path))
        source = f"recipe {name_or_path!r}"
    base = data.pop("extends", None)
    if base is None:
        return data, source
    parent, _ = _raw(str(base), registry, (*seen, name_or_path))
    parent.pop("reported", None)  # a parent's published numbers are not the variant's
    return _merge(parent, data), source


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge tables; lists, and a component table naming another component, replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        old = out.get(k)
        same_component = not (isinstance(v, dict) and isinstance(old, dict)
                              and "name" in v and v["name"] != old.get("name"))
        if isinstance(v, dict) and isinstance(old, dict) and same_component:
            out[k] = _merge(old, v)
        else:
            out[k] = v
    return out


def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply one ``dotted.key=value`` (value parsed as a TOML value, else kept as a string)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise VgkitError(f"--set {item!r}: expected KEY=VALUE, e.g. model.head.hidden=500")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out = copy.deepcopy(data)
    _set_path(out, key.strip(), value, create=True)
    return out


def _set_path(data: Any, path: str, value: Any, *, create: bool = False) -> None:
    parts = path.split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, ".".join(parts[: i + 1]))
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node and create:
                    node[part] = {}
                if part not in node:
                    raise VgkitError(f"--set {path}: no key {part!r}")
                node = node[part]
        else:
            raise VgkitError(f"--set {path}: {'.'.join(parts[:i])} is a value, not a table")


def has_path(data: Any, path: str) -> bool:
    """Whether a dotted ``--set`` path names an existing value of `data` (lists by index or name)."""
    node = data
    for part in path.split("."):
        if isinstance(node, list):
            try:
                node = node[_list_index(node, part, path)]
            except VgkitError:
                return False
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.isdigit():
        if int(part) >= len(items):
            raise VgkitError(f"--set {where}: the list has {len(items)} items")
        return int(part)
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if part in names:
        return names.index(part)
    raise UnknownNameError(f"item of {where.rsplit('.', 1)[0]}", part, [str(n) for n in names])


# ---------------------------------------------------------------- validation


def validate_recipe(data: dict[str, Any], registry: Registry, *, source: str = "recipe") -> Recipe:
    """Validate a recipe dict: schema, component names, component options."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise VgkitError(f"{source}: {_explain(exc, Recipe)}") from None
    for kind, path, comp in recipe.components():
        try:
            component = registry.get(kind, comp.name)
        except UnknownNameError as exc:
            raise VgkitError(f"{source}: {path}.name: {exc}") from None
        try:
            component.make_options(comp.options())
        except ValidationError as exc:
            raise VgkitError(f"{source}: {path}.{_explain(exc, component.options)}") from None
    return recipe


def _explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first error as one line: the dotted key, what is wrong, the valid choices."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, err["loc"][:-1])
        return f"{key}: unknown key {loc[-1]!r}; valid: {choices_hint(loc[-1], valid)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    got = err.get("input")
    shown = json.dumps(got) if isinstance(got, str | int | float | bool | None) else type(got).__name__
    return f"{key}: {err['msg']} (got {shown})"


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
