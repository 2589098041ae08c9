"""Local estimators: the intent classifier, the entity CRF, and the NLU model that combines them."""

from nluflow.models.entities import CRFEntityExtractor, span_scores
from nluflow.models.intent import IntentClassifier, TemperatureScaledSVC, WordPairs
from nluflow.models.nlu import NLUModel, cross_validate_intents
from nluflow.models.tokenize import Token, tokenize

__all__ = [
    "CRFEntityExtractor",
    "IntentClassifier",
    "NLUModel",
    "TemperatureScaledSVC",
    "Token",
    "WordPairs",
    "cross_validate_intents",
    "span_scores",
    "tokenize",
]
