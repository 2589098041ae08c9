"""The local model's hyperparameters (``TrainingConfig.local``): plain values, no estimator code.

The single place their defaults and limits are declared: the estimators' ``__init__`` defaults
(``IntentClassifier``, ``CRFEntityExtractor``, ``SentenceEmbedder``) are read from here, and
``intent_params`` / ``entity_params`` name which option sets which estimator parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# IntentClassifier parameter -> option (the same names).
INTENT_OPTIONS = (
    "word_ngram_max",
    "char_ngram_min",
    "char_ngram_max",
    "word_pair_window",
    "C",
    "calibration_folds",
    "embeddings",
    "embedding_model",
    "embedding_weight",
)
# CRFEntityExtractor parameter -> option.
ENTITY_OPTIONS = {
    "c1": "crf_c1",
    "c2": "crf_c2",
    "max_iterations": "crf_max_iterations",
    "use_intents": "crf_intent_features",
    "features": "crf_features",
    "gazetteer": "crf_gazetteer",
}


class LocalModelOptions(BaseModel):
    """Hyperparameters of the local intent + entity model (the local backend's specific options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_ngram_max: int = Field(default=2, ge=1, le=4, description="Largest word n-gram for TF-IDF.")
    char_ngram_min: int = Field(default=2, ge=1, le=6, description="Smallest char_wb n-gram.")
    char_ngram_max: int = Field(default=5, ge=1, le=8, description="Largest char_wb n-gram.")
    word_pair_window: int = Field(
        default=20, ge=0, le=64, description="Pair words up to this far apart as features; 0 or 1: off."
    )
    C: float = Field(
        default=1.0,
        gt=0.0,
        le=1e4,
        description="Inverse regularisation of the intent classifier (LinearSVC).",
    )
    calibration_folds: int = Field(
        default=3, ge=0, le=10, description="Folds to fit the probability temperature; 0 or 1: off."
    )
    crf_c1: float = Field(default=0.05, ge=0.0, le=10.0, description="L1 penalty of the entity CRF.")
    crf_c2: float = Field(default=0.01, ge=0.0, le=10.0, description="L2 penalty of the entity CRF.")
    crf_max_iterations: int = Field(default=50, ge=10, le=2000, description="L-BFGS iterations of the CRF.")
    crf_intent_features: bool = Field(default=True, description="Give the entity CRF the (predicted) intent.")
    crf_features: Literal["basic", "rich"] = Field(
        default="rich", description="CRF token features; 'rich' adds 2/4-letter affixes and word bigrams."
    )
    crf_gazetteer: bool = Field(
        default=True, description="Gazetteer features from the entity values annotated in the training data."
    )
    embeddings: bool = Field(
        default=False,
        description="Join a sentence embedding with the TF-IDF intent features (needs nluflow[embeddings]).",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        min_length=1,
        description="Bundled embedding model name or local sentence-transformers folder; never downloaded.",
    )
    embedding_weight: float = Field(
        default=2.0, gt=0.0, le=100.0, description="Weight of the embedding block against the TF-IDF blocks."
    )

    def intent_params(self) -> dict[str, Any]:
        """The ``IntentClassifier`` parameters these options set."""
        return {name: getattr(self, name) for name in INTENT_OPTIONS}

    def entity_params(self) -> dict[str, Any]:
        """The ``CRFEntityExtractor`` parameters these options set (``crf_c1`` is its ``c1``, ...)."""
        return {param: getattr(self, option) for param, option in ENTITY_OPTIONS.items()}

    @model_validator(mode="after")
    def _ngram_order(self) -> LocalModelOptions:
        if self.char_ngram_min > self.char_ngram_max:
            raise ValueError("char_ngram_min must not exceed char_ngram_max")
        return self
