"""Gate policy defaults as a block, so a team sets its promotion bar once and every deployment uses it."""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl

from nluflow.evaluation.gates import GatePolicy

_DEFAULT = GatePolicy()


class GatePolicyBlock(Block):
    """Promotion gates: absolute floors, the margin over the active model, and regression guards.

    Example:
        Load the team's gates and use them in a retrain:
        ```python
        from blocks.gates import GatePolicyBlock

        gates_block = GatePolicyBlock.load("BLOCK_NAME")
        policy = gates_block.get_policy()
        print(policy.min_macro_f1)
        ```
    """

    _block_type_name: ClassVar[str] = "nluflow Gate Policy"
    _block_type_slug: ClassVar[str] = "nluflow-gate-policy"
    _description: ClassVar[str] = "When a retrained NLU model may replace the active one."
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl("https://github.com/nluflow/nluflow#gates")

    min_macro_f1: float = Field(
        default=_DEFAULT.min_macro_f1,
        ge=0.0,
        le=1.0,
        title="Minimum macro F1",
        description="The candidate's intent macro F1 must reach this.",
    )
    min_precision: float = Field(
        default=_DEFAULT.min_precision,
        ge=0.0,
        le=1.0,
        title="Minimum precision",
        description="The candidate's intent macro precision must reach this.",
    )
    primary_metric: Literal["macro_f1", "accuracy"] = Field(
        default=_DEFAULT.primary_metric,
        title="Primary metric",
        description="The metric on which the candidate must beat the active model.",
    )
    min_delta: float = Field(
        default=_DEFAULT.min_delta,
        ge=0.0,
        le=1.0,
        title="Minimum improvement",
        description="The candidate must beat the active model on the primary metric by more than this.",
    )
    tolerance: float = Field(
        default=_DEFAULT.tolerance,
        ge=0.0,
        le=1.0,
        title="Regression tolerance",
        description="Other headline metrics may drop by at most this much.",
    )
    require_significance: bool = Field(
        default=_DEFAULT.require_significance,
        title="Require significance",
        description=(
            "Require the lower bound of the paired bootstrap confidence interval of the delta above zero."
        ),
    )
    max_intent_f1_drop: float = Field(
        default=_DEFAULT.max_intent_f1_drop,
        ge=0.0,
        le=1.0,
        title="Maximum per-intent F1 drop",
        description="No intent with enough support may lose more F1 than this.",
    )
    min_intent_support: int = Field(
        default=_DEFAULT.min_intent_support,
        ge=1,
        title="Minimum intent support",
        description="Test examples an intent needs before the per-intent guard applies to it.",
    )

    def get_policy(self) -> GatePolicy:
        """The gate policy as the plain model that ``nluflow.evaluation.gates.decide`` takes."""
        fields = self.model_dump(include=set(GatePolicyBlock.model_fields) - set(Block.model_fields))
        return GatePolicy.model_validate({**_DEFAULT.model_dump(), **fields})
