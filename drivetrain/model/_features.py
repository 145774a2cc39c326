"""The one definition of model features, shared by fitting, batch decisions and the decision service.

Context features become a float matrix: numbers as they are (missing as NaN, which LightGBM routes
natively), booleans as 0/1, categories as their index in the contract's list of values (unknown or
missing as NaN, declared to LightGBM as categorical). Personal-data fields are never model inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from drivetrain.errors import DataError
from drivetrain.spec import Spec

__all__ = ["FeatureEncoder"]


@dataclass(frozen=True)
class FeatureEncoder:
    """Contexts -> (n, d) float matrix, d = len(names). ``version`` is the spec's feature version."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]
    version: str

    @classmethod
    def from_spec(cls, spec: Spec) -> FeatureEncoder:
        feats = {n: f for n, f in spec.model.context.features.items() if not f.personal and f.type != "string"}
        return cls(
            names=tuple(feats),
            kinds=tuple(f.type for f in feats.values()),
            categories={n: tuple(f.values or ()) for n, f in feats.items() if f.type == "categorical"},
            version=spec.feature_version,
        )

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == "categorical"]

    def transform(self, contexts: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Encode ``contexts`` (a DataFrame or a mapping of columns); shape (n, d)."""
        missing = [n for n in self.names if n not in contexts]
        if missing:
            raise DataError(f"contexts must have the feature columns {missing}, got {sorted(contexts.keys())}")
        columns = []
        for name, kind in zip(self.names, self.kinds, strict=True):
            raw = contexts[name]
            if kind == "categorical":  # a hash lookup of each value among the categories: -1 when unknown or missing
                values = pd.Index(raw) if isinstance(raw, pd.Series) else pd.Index(np.asarray(raw, dtype=object).ravel())
                codes = pd.Index(list(self.categories[name]), dtype=object).get_indexer(values)
                columns.append(np.where(codes >= 0, codes, np.nan).astype(np.float64))
            else:
                columns.append(pd.to_numeric(pd.Series(np.asarray(raw)), errors="coerce").to_numpy(dtype=np.float64))
        if not columns:
            raise DataError("the spec must declare at least one non-personal context feature, got none")
        return np.column_stack(columns)

    def transform_row(self, context: Mapping[str, Any]) -> np.ndarray:
        """:meth:`transform` for one parsed context (the decision service's path); shape (d,)."""
        out = np.empty(len(self.names))
        for i, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            value = context.get(name)
            if kind == "categorical":
                values = self.categories[name]
                out[i] = values.index(value) if value in values else np.nan
            else:
                try:
                    out[i] = np.nan if value is None else float(value)
                except (TypeError, ValueError):
                    out[i] = np.nan
        return out

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "kinds": list(self.kinds), "categories": {k: list(v) for k, v in self.categories.items()}, "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        return cls(tuple(data["names"]), tuple(data["kinds"]), {k: tuple(v) for k, v in data["categories"].items()}, str(data["version"]))
