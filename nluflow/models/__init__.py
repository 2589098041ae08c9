"""Local estimators: the intent classifier, the entity CRF, and the NLU model that combines them.

The optional sentence-embedding featurizer (``SentenceEmbedder``) needs the ``embeddings`` extra only when
it is used: importing this package never imports torch or sentence-transformers.
"""

from nluflow.models.embeddings import EmbeddingCache, SentenceEmbedder, embeddings_available
from nluflow.models.entities import CRFEntityExtractor, span_scores
from nluflow.models.intent import IntentClassifier, TemperatureScaledSVC, WordPairs
from nluflow.models.nlu import NLUModel, cross_validate_intents
from nluflow.models.tokenize import Token, tokenize

__all__ = [
    "CRFEntityExtractor",
    "EmbeddingCache",
    "IntentClassifier",
    "NLUModel",
    "SentenceEmbedder",
    "TemperatureScaledSVC",
    "Token",
    "WordPairs",
    "cross_validate_intents",
    "embeddings_available",
    "span_scores",
    "tokenize",
]
