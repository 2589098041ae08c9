"""Training data: schema, loaders, validation and splits."""

from nluflow.data.loaders import (
    SUPPORTED_SUFFIXES,
    data_files_sha256,
    load_csv,
    load_file,
    load_json,
    load_jsonl,
    load_must_pass,
    load_paths,
    load_rasa_yaml,
)
from nluflow.data.schema import Dataset, Entity, Example, Origin
from nluflow.data.splits import stratified_split
from nluflow.data.validation import (
    RULES,
    Finding,
    Severity,
    ValidationPolicy,
    ValidationReport,
    normalize_text,
    validate,
)

__all__ = [
    "RULES",
    "SUPPORTED_SUFFIXES",
    "Dataset",
    "Entity",
    "Example",
    "Finding",
    "Origin",
    "Severity",
    "ValidationPolicy",
    "ValidationReport",
    "data_files_sha256",
    "load_csv",
    "load_file",
    "load_json",
    "load_jsonl",
    "load_must_pass",
    "load_paths",
    "load_rasa_yaml",
    "normalize_text",
    "stratified_split",
    "validate",
]
