"""Prefect's standard block test suite over every nluflow block, and each block's docstring example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import blocks
from nluflow.evaluation.gates import GatePolicy
from nluflow.store import ModelStore

ALL_BLOCKS = [getattr(blocks, name) for name in blocks.__all__]


@pytest.mark.parametrize("block", ALL_BLOCKS, indirect=True)
class TestAllBlocks(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return request.param  # type: ignore[no-any-return]

    def test_has_a_valid_image(self, block: type[Block]) -> None:  # type: ignore[override]
        pytest.skip("logos are fetched over the network; tests stay on 127.0.0.1")


def _example_code(block: type[Block]) -> str:
    """The fenced python code of the block's docstring example (what the Prefect UI shows)."""
    text = block.get_code_example()
    assert text is not None
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text
    # Saved block names allow lowercase letters, digits and dashes only.
    return match.group(1).replace('"BLOCK_NAME"', '"block-name"')


def test_every_block_is_exported() -> None:
    found = {
        name
        for path in Path(blocks.__file__).parent.glob("*.py")
        for name in re.findall(r"^class (\w+)\(Block\)", path.read_text(), re.M)
    }
    assert found == {cls.__name__ for cls in ALL_BLOCKS}


def test_local_model_store_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blocks.store import LocalModelStore

    ModelStore.local(tmp_path / "store", create=True)
    LocalModelStore(path=str(tmp_path / "store")).save("block-name", overwrite=True)
    exec(_example_code(LocalModelStore), {})
    assert capsys.readouterr().out.strip() == "[]"


def test_gate_policy_example_runs_and_builds_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    from blocks.gates import GatePolicyBlock

    GatePolicyBlock(policy=GatePolicy(min_macro_f1=0.9, min_delta=0.01)).save("block-name", overwrite=True)
    exec(_example_code(GatePolicyBlock), {})
    assert capsys.readouterr().out.strip() == "0.9"
    policy = GatePolicyBlock.load("block-name").get_policy()
    assert isinstance(policy, GatePolicy)
    assert (policy.min_macro_f1, policy.min_delta) == (0.9, 0.01)


# ------------------------------------------------------------------------------- the gate policy's fields

# What a GatePolicyBlock document held before the block held a GatePolicy: the eight fields at the top level.
LEGACY_GATES = {
    "min_macro_f1": 0.9,
    "min_precision": 0.75,
    "primary_metric": "accuracy",
    "min_delta": 0.01,
    "tolerance": 0.02,
    "require_significance": True,
    "max_intent_f1_drop": 0.2,
    "min_intent_support": 5,
}


def test_the_gate_policy_block_declares_no_field_of_its_own() -> None:
    from blocks.gates import GatePolicyBlock

    own = set(GatePolicyBlock.model_fields) - set(Block.model_fields)
    assert own == {"policy"} and GatePolicyBlock.model_fields["policy"].annotation is GatePolicy
    assert GatePolicyBlock().get_policy() == GatePolicy()
    # The core's limits apply as they are: min_delta may be negative (it was ge=0 in the block's copy).
    assert GatePolicyBlock(policy={"min_delta": -0.05}).get_policy().min_delta == -0.05


def test_legacy_flat_fields_are_nested_into_the_policy() -> None:
    from pydantic import ValidationError

    from blocks.gates import GatePolicyBlock

    assert GatePolicyBlock.model_validate(LEGACY_GATES).get_policy() == GatePolicy(**LEGACY_GATES)
    assert GatePolicyBlock(min_macro_f1=0.9).get_policy() == GatePolicy(min_macro_f1=0.9)
    # Flat and nested together: merged when they name different fields; 'policy' wins when both name one
    # (what a legacy document holds once saved again: Prefect merges the new data into the old).
    mixed = GatePolicyBlock.model_validate({"min_delta": 0.02, "policy": {"tolerance": 0.05}})
    assert mixed.get_policy() == GatePolicy(min_delta=0.02, tolerance=0.05)
    both = GatePolicyBlock.model_validate({"min_delta": 0.02, "policy": {"min_delta": 0.03}})
    assert both.get_policy() == GatePolicy(min_delta=0.03)
    # The core's limits apply to a legacy value too.
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        GatePolicyBlock.model_validate({**LEGACY_GATES, "min_macro_f1": 1.5})


def test_a_document_saved_with_the_legacy_flat_fields_loads_into_the_policy() -> None:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate, BlockSchemaCreate

    from blocks.gates import GatePolicyBlock

    GatePolicyBlock.register_type_and_schema()
    assert GatePolicyBlock._block_type_id is not None
    name = f"legacy-gates-{uuid.uuid4().hex[:8]}"
    # The document refers to the block's old schema (eight top-level fields), as one saved before did.
    legacy_schema = {
        "title": "GatePolicyBlock",
        "type": "object",
        "properties": {key: {"title": key} for key in LEGACY_GATES},
        "block_type_slug": "nluflow-gate-policy",
        "secret_fields": [],
        "block_schema_references": {},
    }
    with get_client(sync_client=True) as client:
        schema = client.create_block_schema(
            BlockSchemaCreate(fields=legacy_schema, block_type_id=GatePolicyBlock._block_type_id)
        )
        assert schema.id != GatePolicyBlock._block_schema_id
        client.create_block_document(
            BlockDocumentCreate(
                name=name,
                data=dict(LEGACY_GATES),
                block_schema_id=schema.id,
                block_type_id=GatePolicyBlock._block_type_id,
            )
        )
    loaded = GatePolicyBlock.load(name)
    assert loaded.get_policy() == GatePolicy(**LEGACY_GATES)
    # Saved again (Prefect merges the new data into the stored one), the document holds the whole policy
    # under 'policy', which wins over the stale top-level fields; a change made then is what loads.
    changed = GatePolicyBlock(policy=loaded.get_policy().model_copy(update={"min_delta": -0.01}))
    changed.save(name, overwrite=True)
    with get_client(sync_client=True) as client:
        stored = client.read_block_document_by_name(name, "nluflow-gate-policy")
    assert stored.data["policy"] == changed.get_policy().model_dump(mode="json")
    assert GatePolicyBlock.load(name).get_policy() == GatePolicy(**{**LEGACY_GATES, "min_delta": -0.01})
