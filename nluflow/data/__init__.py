"""Training data: schema, loaders, validation and splits."""

from nluflow.data.schema import Dataset, Entity, Example, Origin

__all__ = ["Dataset", "Entity", "Example", "Origin"]
