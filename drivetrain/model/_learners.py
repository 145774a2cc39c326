"""The fitted model of one outcome component, behind one protocol.

Every part an :class:`~drivetrain.model.OutcomeModel` fits is a :class:`ComponentLearner`: it predicts the
component for every action of a batch of contexts, writes itself as plain files (LightGBM text or JSON,
never pickle), and, when it is made of LightGBM trees, adds them to a compiled forest. The parts:

* :class:`Constant`: a component that never varies in the rows it would learn from;
* :class:`TwoStage`: the S-learner's context stage and action-effect stage (LightGBM ``init_score``);
* :class:`Boosted`: one LightGBM model (the T-learner's per-action model, on the context alone);
* :class:`PerAction`: the T-learner, one context model per action;
* :class:`Estimator`: any scikit-learn estimator (predicts, cannot be saved or compiled).

A LightGBM model is held as :class:`Trees`: its text, and the Booster read from it only when something
predicts with LightGBM itself. A model loaded to serve predicts with the compiled forest, built from the
text: it never reads its trees into LightGBM, nor imports LightGBM.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from drivetrain.errors import ArtifactError, UsageError
from drivetrain.model._forest import BROADCAST, EVERY, ROW, ForestBuilder

if TYPE_CHECKING:
    import lightgbm as lgb

__all__ = ["Boosted", "ComponentLearner", "Constant", "Estimator", "PerAction", "Trees", "TwoStage", "read_learner"]

#: LightGBM objectives whose raw score is the log of the prediction.
LOG_LINK_OBJECTIVES = frozenset({"gamma", "poisson", "tweedie"})
#: Link of a raw score in a compiled forest: identity, logistic, exp.
IDENTITY, LOGISTIC, EXP = 0, 1, 2
_LINKS = {"regression": IDENTITY, "cross_entropy": LOGISTIC, "binary": LOGISTIC, "gamma": EXP, "poisson": EXP, "tweedie": EXP}


class ComponentLearner(Protocol):
    """A fitted model of one component."""

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """The component for each context of ``x`` (n, d) under each of the K encoded ``actions`` (K, a):
        (n, K), on the outcome's scale."""
        ...

    def to_files(self, directory: Path, stem: str) -> Any:
        """Write the model under ``directory`` (file names start with ``stem``); return the JSON entry
        :func:`read_learner` reads it back from."""
        ...

    def compile_into(self, builder: ForestBuilder, slot: int) -> tuple[int, float] | None:
        """Add the trees to ``slot`` of ``builder`` and return (link, constant added to the raw score), or
        ``None`` when the model cannot be compiled."""
        ...


def _design(x: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Rows (context i, action k) in that order: (n * K, d + a)."""
    n, k = x.shape[0], actions.shape[0]
    return np.column_stack([np.repeat(x, k, axis=0), np.tile(actions, (n, 1))])


def frozen(booster: lgb.Booster) -> Trees:
    """What ``lgb.train`` does to a booster without ``keep_training_booster`` (the model read back from its
    text, its training rows freed), the text kept: compiling and saving the model need it, and a second
    dump of the same trees costs what the first did. The booster is read from that text, so the text is
    what it holds (dumping it again can differ in a field LightGBM drops on reading: a one-leaf tree's
    leaf weight)."""
    text = booster.model_to_string()
    booster.model_from_string(text).free_dataset()
    return Trees(text, booster)


class Trees:
    """One LightGBM model: the text it is saved, compiled and described from, and the Booster that predicts
    with LightGBM itself, read from that text the first time it is asked for (reading a model's boosters
    into LightGBM costs more than the compiled forest's build, and importing LightGBM, with the
    scikit-learn it imports, half a second of a service's start)."""

    def __init__(self, text: str, booster: lgb.Booster | None = None, *, name: str = "a LightGBM model") -> None:
        self.text = text
        self.name = name
        self._booster = booster

    @property
    def booster(self) -> lgb.Booster:
        if self._booster is None:
            import lightgbm as lgb

            try:
                self._booster = lgb.Booster(model_str=self.text)
            except lgb.basic.LightGBMError as exc:
                raise ArtifactError(f"{self.name} must be a LightGBM text model, got: {exc}") from None
        return self._booster

    @property
    def objective(self) -> str:
        """The objective the trees were fitted with, as LightGBM writes it in the text's header (its
        canonical name: ``cross_entropy``, ``gamma``, ``regression``, ...)."""
        for line in self.text.splitlines()[:20]:
            if line.startswith("objective="):
                words = line.split("=", 1)[1].split()
                return words[0] if words else ""
        return ""


def _write_booster(directory: Path, stem: str, trees: Trees) -> str:
    name = f"{stem}.txt"
    (directory / name).write_text(trees.text)
    return name


def _read_booster(path: Path) -> Trees:
    """The model in ``path``, read into LightGBM when something first predicts with it (the artifact's
    checksums were verified; a text the compiled forest cannot read fails its build)."""
    return Trees(path.read_text(), name=path.name)


class Constant:
    """Stands in for a model when a component never varies in the rows it would learn from."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return np.full((x.shape[0], actions.shape[0]), self.value)

    def to_files(self, directory: Path, stem: str) -> Any:
        name = f"{stem}.json"
        (directory / name).write_text(json.dumps({"constant": self.value}) + "\n")
        return name

    def compile_into(self, builder: ForestBuilder, slot: int) -> tuple[int, float] | None:
        return IDENTITY, self.value


class Boosted:
    """One LightGBM model of (context, encoded action) columns, or of the context alone (``actions`` with
    no columns); the prediction goes through the objective's link."""

    def __init__(self, trees: Trees) -> None:
        self.trees = trees

    @property
    def booster(self) -> lgb.Booster:
        return self.trees.booster

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        design = x if actions.shape[1] == 0 else _design(x, actions)
        out = np.asarray(self.booster.predict(design, num_threads=num_threads), dtype=np.float64)
        return np.repeat(out[:, None], actions.shape[0], axis=1) if actions.shape[1] == 0 else out.reshape(x.shape[0], -1)

    def to_files(self, directory: Path, stem: str) -> Any:
        return _write_booster(directory, stem, self.trees)

    def compile_into(self, builder: ForestBuilder, slot: int, *, row: int = -1) -> tuple[int, float] | None:
        objective = self.trees.objective
        if objective not in _LINKS:
            return None
        builder.add(self.trees.text, slot, mode=ROW if row >= 0 else EVERY, row=row)
        return _LINKS[objective], 0.0


class TwoStage:
    """S-learner in two stages: ``base`` learns the context alone, ``effect`` learns how the action moves
    the outcome starting from the base's raw score (LightGBM ``init_score``). Centering the outcome on
    the context first lets the trees spend their splits on the action's effect, where the decisions are
    made (in the spirit of the R-learner, Nie & Wager 2021); measured in docs/decisions.md.

    The raw scores add on the link scale: logit for a binary outcome, log when the boosters were fitted
    with a log-link objective (read from the booster, so a saved model needs no extra field), else the
    identity."""

    def __init__(self, base: Trees, effect: Trees, context_columns: int, binary: bool) -> None:
        self.base_trees = base
        self.effect_trees = effect
        self.context_columns = context_columns
        self.binary = binary
        self.log_link = not binary and effect.objective in LOG_LINK_OBJECTIVES

    @property
    def base(self) -> lgb.Booster:
        return self.base_trees.booster

    @property
    def effect(self) -> lgb.Booster:
        return self.effect_trees.booster

    def raw(self, design: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Summed raw score of (context, action) rows."""
        base = np.asarray(self.base.predict(design[:, : self.context_columns], raw_score=True, num_threads=num_threads), dtype=np.float64)
        return base + np.asarray(self.effect.predict(design, raw_score=True, num_threads=num_threads), dtype=np.float64)

    def link(self, raw: np.ndarray) -> np.ndarray:
        if self.binary:
            return 1.0 / (1.0 + np.exp(-raw))
        return np.exp(raw) if self.log_link else raw

    def predict(self, design: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """The component of (context, action) rows (n, d + a): (n,)."""
        return self.link(self.raw(design, num_threads))

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return self.predict(_design(x, actions), num_threads).reshape(x.shape[0], actions.shape[0])

    def to_files(self, directory: Path, stem: str) -> Any:
        return {"base": _write_booster(directory, f"{stem}-base", self.base_trees),
                "effect": _write_booster(directory, f"{stem}-effect", self.effect_trees),
                "context_columns": self.context_columns, "binary": self.binary}

    def compile_into(self, builder: ForestBuilder, slot: int) -> tuple[int, float] | None:
        builder.add(self.base_trees.text, slot, mode=BROADCAST)
        builder.add(self.effect_trees.text, slot, mode=EVERY)
        return LOGISTIC if self.binary else EXP if self.log_link else IDENTITY, 0.0


class PerAction:
    """The T-learner's part: one model of the context alone per action."""

    def __init__(self, members: Sequence[ComponentLearner]) -> None:
        self.members = list(members)

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        alone = np.zeros((1, 0))
        return np.column_stack([m.predict_actions(x, alone, num_threads)[:, 0] for m in self.members])

    def to_files(self, directory: Path, stem: str) -> Any:
        return [m.to_files(directory, f"{stem}-a{j}") for j, m in enumerate(self.members)]

    def compile_into(self, builder: ForestBuilder, slot: int) -> tuple[int, float] | None:
        if not all(isinstance(m, Boosted) for m in self.members):
            return None
        links = {_LINKS.get(m.trees.objective) for m in self.members if isinstance(m, Boosted)}
        if len(links) != 1 or None in links:
            return None  # one link per slot: members fitted with different objectives are predicted in batch
        for j, m in enumerate(self.members):
            assert isinstance(m, Boosted)
            m.compile_into(builder, slot, row=j)
        return links.pop(), 0.0  # type: ignore[return-value]


class Estimator:
    """A fitted scikit-learn estimator of (context, encoded action) columns, or of the context alone
    (``with_actions=False``). scikit-learn takes no missing values: they arrive as -1."""

    def __init__(self, estimator: Any, *, binary: bool, with_actions: bool) -> None:
        self.estimator = estimator
        self.binary = binary
        self.with_actions = with_actions

    def predict_actions(self, x: np.ndarray, actions: np.ndarray, num_threads: int = 1) -> np.ndarray:
        design = np.nan_to_num(_design(x, actions) if self.with_actions else x, nan=-1.0)
        if self.binary and hasattr(self.estimator, "predict_proba"):
            out = np.asarray(self.estimator.predict_proba(design)[:, 1], dtype=np.float64)
        else:
            out = np.asarray(self.estimator.predict(design), dtype=np.float64)
        return out.reshape(x.shape[0], -1) if self.with_actions else np.repeat(out[:, None], actions.shape[0], axis=1)

    def to_files(self, directory: Path, stem: str) -> Any:
        raise UsageError(f"only LightGBM models can be saved in a policy artifact (no pickle), got {type(self.estimator).__name__}")

    def compile_into(self, builder: ForestBuilder, slot: int) -> tuple[int, float] | None:
        return None


def read_learner(directory: Path, entry: Any) -> ComponentLearner:
    """The learner an entry of :meth:`ComponentLearner.to_files` names, read from ``directory``."""
    if isinstance(entry, list):
        return PerAction([read_learner(directory, e) for e in entry])
    if isinstance(entry, dict):
        try:
            return TwoStage(_read_booster(directory / entry["base"]), _read_booster(directory / entry["effect"]),
                            int(entry["context_columns"]), bool(entry["binary"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"a two-stage model entry must name base, effect, context_columns and binary, got {entry!r} ({exc})") from None
    if not isinstance(entry, str):
        raise ArtifactError(f"a model entry must be a file name, a list or a two-stage entry, got {entry!r}")
    path = directory / entry
    if path.suffix == ".json":
        try:
            return Constant(float(json.loads(path.read_text())["constant"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path.name} must hold {{\"constant\": number}}, got unreadable content ({exc})") from None
    return Boosted(_read_booster(path))
