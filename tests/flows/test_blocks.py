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

    GatePolicyBlock(min_macro_f1=0.9, min_delta=0.01).save("block-name", overwrite=True)
    exec(_example_code(GatePolicyBlock), {})
    assert capsys.readouterr().out.strip() == "0.9"
    policy = GatePolicyBlock.load("block-name").get_policy()
    assert isinstance(policy, GatePolicy)
    assert (policy.min_macro_f1, policy.min_delta) == (0.9, 0.01)
