"""Suite YAML → validated, fully expanded run specs (pydantic).

A suite fixes, for every method alike, the data set, resolution, backbone, budget (epochs,
batch size), seeds and evaluation. Each entry of ``methods`` names a method, its options and
optionally a ``sweep`` (field → list of values) that expands into one run per combination:
an ablation is one field. Every run gets a readable label (``simclr[temperature=0.5]``)
and an id that hashes its resolved config, which is also its cache key on disk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from methods.base import UnknownMethodError, get_method


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the field and the allowed values."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(Strict):
    name: str = Field(description="cifar10 | cifar100 | fashion_mnist | imagefolder | imagenet100 | digits")
    image_size: int | None = Field(None, gt=0, description="resize on decode; default: native size")
    train_per_class: int | None = Field(None, gt=0, description="stratified training subset (None = all)")
    test_per_class: int | None = Field(None, gt=0, description="stratified test subset (None = all)")
    val_per_class: int = Field(10, ge=0, description="carved from train for per-epoch monitoring")
    root: str | None = Field(None, description="data folder; default $SSLBENCH_DATA_DIR")
    download: bool = False

    @field_validator("name")
    @classmethod
    def known_dataset(cls, v: str) -> str:
        from bench.data.datasets import list_datasets

        known = list_datasets()
        if v not in known:
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(known)}")
        return v


class BackboneConfig(Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known_backbone(cls, v: str) -> str:
        from bench.backbones import list_backbones

        known = list_backbones()
        if v not in known:
            raise ValueError(f"unknown backbone {v!r}; allowed: {', '.join(known)}")
        return v


class BudgetConfig(Strict):
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=1)


class EvalConfig(Strict):
    knn: bool = True
    linear: bool = True
    linear_protocol: Literal["lbfgs", "sgd"] = Field(
        "lbfgs", description="lbfgs: logistic regression on cached features (C on a train-carved val split); "
        "sgd: augmented SGD probe of the frozen encoder (lr on a train-carved val split), for GPU suites")
    sgd_epochs: int = Field(100, gt=0, description="epochs of the SGD linear probe")
    fewshot: bool = True
    fewshot_shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    fewshot_draws: int = Field(5, ge=1)
    semi_supervised: bool = Field(True, description="1% and 10% label subsets (fixed seeded lists)")
    monitor_every: int = Field(1, ge=0, description="epochs between kNN-on-validation checks (0 = off)")
    batch_size: int = Field(256, gt=0)


class TrainConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False
    num_threads: int | None = Field(None, gt=0)


class ExecutorConfig(Strict):
    kind: Literal["local", "ray", "slurm"] = "local"
    options: dict[str, Any] = Field(default_factory=dict)


class MethodEntry(Strict):
    method: str
    options: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)


class Suite(Strict):
    name: str
    description: str = ""
    dataset: DatasetConfig
    backbone: BackboneConfig
    budget: BudgetConfig
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    methods: list[MethodEntry | str] = Field(min_length=1)
    method_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options applied to every method (e.g. one optimizer recipe for a short CPU budget); "
        "a method entry's own options win; only fields a method accepts are applied to it",
    )
    eval: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    executor: ExecutorConfig = ExecutorConfig()


class RunSpec(Strict):
    """One run: resolved suite settings + method + options + seed."""

    suite: str
    method: str
    options: dict[str, Any]
    seed: int
    dataset: DatasetConfig
    backbone: BackboneConfig
    budget: BudgetConfig
    eval: EvalConfig
    train: TrainConfig

    def identity(self) -> dict[str, Any]:
        """What determines the result; the run id hashes exactly this."""
        return self.model_dump(mode="json", exclude={"suite", "options_set"})

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.method}-s{self.seed}-{digest}"

    @property
    def label(self) -> str:
        """benchopt-style readable identity: ``method[field=value,...]`` (non-default options)."""
        if not self.options_set:
            return self.method
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(self.options_set.items()))
        return f"{self.method}[{inner}]"

    options_set: dict[str, Any] = Field(default_factory=dict, description="options given in the suite")


def _short(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)


# -- loading and error formatting ------------------------------------------------------------
def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (to list allowed fields)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann] + list(getattr(ann, "__args__", ()))
        nxt = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        current = nxt[0] if nxt else None
        for arg in getattr(ann, "__args__", ()):  # list[MethodEntry | str]
            inner = [a for a in getattr(arg, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner:
                current = inner[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(err: ValidationError, model: type[BaseModel], where: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("MethodEntry", "str")))
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = ", ".join(owner.model_fields) if owner else "?"
            msg = f"unknown field {loc[-1]!r}; allowed fields: {allowed}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {path}: {msg}")
    # a str|MethodEntry union reports each branch; keep distinct lines only
    unique = list(dict.fromkeys(lines))
    return f"{where}: invalid suite\n" + "\n".join(unique)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML; raise ``SuiteError`` naming every bad field."""
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"suite file {path} does not exist (see `python -m bench list` for suites)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML: {e}") from e
    return parse_suite(raw, where=str(path))


def parse_suite(raw: Any, where: str = "suite") -> Suite:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a suite is a mapping with fields {', '.join(Suite.model_fields)}")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        raise SuiteError(format_validation_error(e, Suite, where)) from None
    expand_runs(suite, where)  # validates method names and options now, not mid-suite
    check_shared_options(suite, where)
    return suite


def _entry(e: MethodEntry | str) -> MethodEntry:
    return MethodEntry(method=e) if isinstance(e, str) else e


def _validate_options(method: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    cls = get_method(method)
    try:
        return cls.Options.model_validate(options).model_dump(mode="json")
    except ValidationError as e:
        raise SuiteError(format_validation_error(e, cls.Options, f"{where}: options of {method!r}")) from None


def applicable_shared_options(method: str, shared: dict[str, Any]) -> dict[str, Any]:
    """The suite-wide options this method accepts (e.g. ``temperature`` only where defined)."""
    fields = get_method(method).Options.model_fields
    return {k: v for k, v in shared.items() if k in fields}


def check_shared_options(suite: Suite, where: str) -> None:
    """Every suite-wide option must be a field of at least one method of the suite."""
    names = {_entry(e).method for e in suite.methods}
    known = set().union(*(get_method(n).Options.model_fields for n in names))
    unknown = sorted(set(suite.method_options) - known)
    if unknown:
        raise SuiteError(f"{where}: method_options: unknown field(s) {unknown}; "
                         f"fields of this suite's methods: {', '.join(sorted(known))}")


def expand_runs(
    suite: Suite,
    where: str = "suite",
    *,
    methods: list[str] | None = None,
    epochs: int | None = None,
) -> list[RunSpec]:
    """Every (method entry × sweep combination × seed) as a ``RunSpec``.

    ``methods`` selects entries by method name (CLI ``--methods``); ``epochs`` overrides
    the budget for every run alike.
    """
    budget = suite.budget if epochs is None else BudgetConfig(epochs=epochs, batch_size=suite.budget.batch_size)
    entries = [_entry(e) for e in suite.methods]
    if methods is not None:
        for name in methods:
            try:
                get_method(name)
            except UnknownMethodError as e:
                raise SuiteError(f"--methods: {e}") from None
            if name not in {e.method for e in entries}:
                raise SuiteError(
                    f"--methods: {name!r} is not in suite {suite.name!r}; "
                    f"the suite has: {', '.join(dict.fromkeys(e.method for e in entries))}"
                )
        entries = [e for e in entries if e.method in methods]
    specs = []
    for i, entry in enumerate(entries):
        try:
            get_method(entry.method)
        except UnknownMethodError as e:
            raise SuiteError(f"{where}: methods[{i}].method: {e}") from None
        keys = list(entry.sweep)
        for values in itertools.product(*(entry.sweep[k] for k in keys)) if keys else [()]:
            given = {**entry.options, **dict(zip(keys, values))}
            shared = applicable_shared_options(entry.method, suite.method_options)
            resolved = _validate_options(entry.method, {**shared, **given}, f"{where}: methods[{i}]")
            for seed in suite.seeds:
                specs.append(
                    RunSpec(
                        suite=suite.name, method=entry.method, options=resolved, options_set=given, seed=seed,
                        dataset=suite.dataset, backbone=suite.backbone, budget=budget,
                        eval=suite.eval, train=suite.train,
                    )
                )
    return specs
