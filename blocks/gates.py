"""Gate policy defaults as a block, so a team sets its promotion bar once and every deployment uses it."""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, model_validator

from nluflow.evaluation.gates import GatePolicy

# The block's fields before it held a GatePolicy: documents saved then keep their values at the top level.
LEGACY_FLAT_FIELDS: frozenset[str] = frozenset(GatePolicy.model_fields)


class GatePolicyBlock(Block):
    """Promotion gates: absolute floors, the margin over the active model, and regression guards.

    The block holds one ``GatePolicy`` (``nluflow.evaluation.gates``): every field, default and constraint is
    the core's, declared once. Documents saved before (the policy's fields at the top level) still load.

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
    # Read by ``blocks.blocks_file``: a blocks file may still write these at the top level of the entry.
    _legacy_flat_fields: ClassVar[dict[str, str]] = dict.fromkeys(sorted(LEGACY_FLAT_FIELDS), "policy")

    policy: GatePolicy = Field(
        default_factory=GatePolicy,
        title="Gate policy",
        description="The promotion gates; fields left out keep nluflow's defaults.",
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_legacy_fields(cls, data: Any) -> Any:
        """Move a legacy document's top-level policy fields (``min_macro_f1``, ...) into ``policy``."""
        if not isinstance(data, dict) or not LEGACY_FLAT_FIELDS.intersection(data):
            return data
        flat = {key: value for key, value in data.items() if key in LEGACY_FLAT_FIELDS}
        rest = {key: value for key, value in data.items() if key not in LEGACY_FLAT_FIELDS}
        nested = rest.get("policy") or {}
        if isinstance(nested, GatePolicy):
            nested = nested.model_dump(exclude_unset=True)
        if not isinstance(nested, dict):
            return data  # let validation name the bad 'policy' value
        # 'policy' wins: Prefect merges a document's data when it is saved again (``overwrite=True``), so a
        # legacy document saved after this change keeps its stale top-level fields beside the new 'policy'.
        return {**rest, "policy": {**flat, **nested}}

    def get_policy(self) -> GatePolicy:
        """The gate policy as the plain model that ``nluflow.evaluation.gates.decide`` takes."""
        return self.policy
