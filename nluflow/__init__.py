"""nluflow: safe, audited retrains of NLU models. This package never imports Prefect."""

__version__ = "0.1.0"
