"""A spec with a personal field of every type, and customers whose clear values are easy to find by grep."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from drivetrain.spec import Spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
NBOO_SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"
SEGMENTS = ["seg-alpha-7", "seg-beta-9", "seg-delta-4"]


def personal_raw() -> dict[str, Any]:
    """The NBOO spec with personal fields of every type: an e-mail (text), a postcode (integer), an income
    (float), a VIP flag (boolean) and a segment (categorical)."""
    raw = copy.deepcopy(yaml.safe_load(NBOO_SPEC.read_text()))
    features = raw["context"]["features"]
    features["postcode"] = {"type": "integer", "min": 1000, "max": 99_999_999, "personal": True, "owner": "crm"}
    features["customer_email"] = {"type": "string", "personal": True, "owner": "crm"}
    features["income"] = {"type": "float", "min": 0, "max": 10_000_000, "personal": True, "owner": "crm"}
    features["vip"] = {"type": "boolean", "personal": True, "owner": "crm"}
    features["segment"] = {"type": "categorical", "values": SEGMENTS, "personal": True, "owner": "crm"}
    return raw


def personal_spec() -> Spec:
    return parse_spec(personal_raw(), source="personal")


def customer(i: int) -> dict[str, Any]:
    """Customer i's personal values, each unlikely to appear in a file by chance (8 digits, an address)."""
    return {
        "customer_email": f"jane.{i}.doe@mail.example",
        "postcode": 48_213_900 + i,
        "income": 91_873.25 + i,
        "vip": i % 2 == 0,
        "segment": SEGMENTS[i % 3],
    }


def clear_patterns(values: list[Any]) -> re.Pattern[str]:
    """Whole-word occurrences of any of ``values`` in the spellings a file could hold them in."""
    forms: set[str] = set()
    for value in values:
        if isinstance(value, bool):
            continue  # "true" and "false" are in every file with a boolean column: checked by type instead
        forms.add(str(value))
        if isinstance(value, int | float):
            forms |= {repr(float(value)), str(int(value)) if float(value).is_integer() else repr(float(value))}
    return re.compile("|".join(rf"(?<![0-9A-Za-z]){re.escape(f)}(?![0-9A-Za-z])" for f in sorted(forms, key=len, reverse=True)))


def file_text(path: Path) -> str:
    """What a file holds, as text: every cell of a Parquet file (whose pages may be compressed), else its bytes."""
    if path.suffix == ".parquet":
        table = pq.read_table(path).to_pandas()
        return table.astype(str).to_csv(index=False) + " ".join(map(str, table.columns))
    return path.read_bytes().decode("utf-8", "replace")


def found_in_clear(paths: list[Path], pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """{file: clear values found in it} over ``paths`` (every file under directories)."""
    found: dict[str, list[str]] = {}
    for root in paths:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            hits = sorted(set(pattern.findall(file_text(path))))
            if hits:
                found[str(path)] = hits
    return found


def personal_columns_are_pseudonyms(frame: pd.DataFrame, names: list[str]) -> bool:
    return all(frame[n].dropna().map(lambda v: isinstance(v, str) and v.startswith("hmac-sha256:")).all() for n in names if n in frame)
