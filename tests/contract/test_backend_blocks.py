"""The four backend blocks: ``get_client()`` and the docstring examples (standard suite: test_blocks.py)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.blocks.core import Block

from blocks.cognigy import CognigyBackendBlock
from blocks.neuralspace import NeuralSpaceBackendBlock
from blocks.provision import create_blocks
from blocks.rasa import RasaBackendBlock
from blocks.service import TrainingServiceBlock
from nluflow.backends.base import JobState, TrainingBackend
from nluflow.backends.cognigy import CognigyBackend
from nluflow.backends.neuralspace import NeuralSpaceBackend
from nluflow.backends.rasa import RasaBackend
from nluflow.backends.service import TrainingServiceBackend

BLOCKS: list[type[Block]] = [
    RasaBackendBlock,
    CognigyBackendBlock,
    NeuralSpaceBackendBlock,
    TrainingServiceBlock,
]

SECRET = "block-S3CRET-61d0"
REPO = Path(__file__).resolve().parents[2]


def configured(block: type[Block]) -> Block:
    values: dict[type[Block], dict[str, Any]] = {
        RasaBackendBlock: {"url": "http://rasa.test:5005", "token": SECRET},
        CognigyBackendBlock: {
            "project_id": "p" * 24,
            "flow_id": "f" * 24,
            "api_key": SECRET,
            "endpoint_id": "e",
        },
        NeuralSpaceBackendBlock: {"token": SECRET, "project_id": "proj"},
        TrainingServiceBlock: {"url": "http://svc.test", "client_id": "nluflow", "client_secret": SECRET},
    }
    return block(**values[block])


# Prefect's standard block suite runs once, over every exported block (these four included), in
# tests/flows/test_blocks.py.


@pytest.mark.parametrize(
    ("block", "client"),
    [
        (RasaBackendBlock, RasaBackend),
        (CognigyBackendBlock, CognigyBackend),
        (NeuralSpaceBackendBlock, NeuralSpaceBackend),
        (TrainingServiceBlock, TrainingServiceBackend),
    ],
)
def test_get_client_builds_a_fresh_plain_client(block: type[Block], client: type[Any]) -> None:
    instance = configured(block)
    built = instance.get_client()  # type: ignore[attr-defined]
    assert isinstance(built, client) and isinstance(built, TrainingBackend)
    assert built is not instance.get_client()  # type: ignore[attr-defined]  # no caching
    for text in (repr(instance), str(instance), repr(built), instance.model_dump_json()):
        assert SECRET not in text
    secret_fields = [n for n, f in block.model_fields.items() if "SecretStr" in str(f.annotation)]
    assert secret_fields, "secrets are SecretStr"


def test_every_neuralspace_and_service_path_is_configurable() -> None:
    ns = NeuralSpaceBackendBlock(
        token=SECRET, project_id="p", parse_path="/v2/parse", models_path="/m?p={project_id}"
    )
    client = ns.get_client()
    assert (client.paths.parse, client.paths.models) == ("/v2/parse", "/m?p={project_id}")
    assert {f"{k}_path" for k in client.paths.model_dump()} <= set(NeuralSpaceBackendBlock.model_fields)
    svc = TrainingServiceBlock(
        url="http://svc.test",
        client_id="c",
        client_secret=SECRET,
        job_path="/v9/runs/{job_id}",
        status_field="state",
        status_map={"DONE": "succeeded"},
    )
    built = svc.get_client()
    assert built.paths.job == "/v9/runs/{job_id}" and built.fields.status == "state"
    assert built.fields.states == {"DONE": JobState.SUCCEEDED}
    names = {f"{k}_path" for k in built.paths.model_dump()} | {
        f"{k}_field" for k in built.fields.model_dump()
    }
    assert names - {"states_field"} <= set(TrainingServiceBlock.model_fields)


def _example_code(block: type[Block]) -> str:
    text = block.get_code_example()
    assert text is not None
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS)
def test_docstring_example_runs(
    block: type[Block], prefect_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Block document names allow lowercase letters, digits and dashes only, so "BLOCK_NAME" is swapped out.
    name = f"example-{block.get_block_type_slug()}"
    block.register_type_and_schema()
    configured(block).save(name, overwrite=True)
    exec(_example_code(block).replace('"BLOCK_NAME"', f'"{name}"'), {})
    loaded: Any = block.load(name)
    assert capsys.readouterr().out.strip() == loaded.get_client().name


def test_blocks_yaml_sets_the_rasa_models_folders_and_timeouts(prefect_api: str, tmp_path: Path) -> None:
    """The repo's blocks.yaml entry for Rasa, created from environment variables (numbers arrive as text),
    gives a client with that models folder, its mount here, and both timeouts."""
    entries = yaml.safe_load((REPO / "blocks.yaml").read_text(encoding="utf-8"))["blocks"]
    [rasa] = [e for e in entries if e["type"] == "nluflow-rasa-backend"]
    name = f"rasa-yaml-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "blocks.yaml"
    path.write_text(yaml.safe_dump({"blocks": [{**rasa, "name": name}]}), encoding="utf-8")
    env = {
        "NLUFLOW_RASA_URL": "http://rasa.test:5005",
        "NLUFLOW_RASA_TOKEN": SECRET,
        "NLUFLOW_RASA_MODELS_DIR": "/app/models",
        "NLUFLOW_RASA_SERVER_MODELS_FOLDER": str(tmp_path / "mnt-models"),
        "NLUFLOW_RASA_TRAIN_TIMEOUT_SECONDS": "900",
        "NLUFLOW_RASA_IDLE_WAIT_SECONDS": "1800.5",
    }
    report = create_blocks(path, env)
    assert [o.action for o in report.outcomes] == ["created"]
    block = RasaBackendBlock.load(name)
    assert isinstance(block, RasaBackendBlock)
    assert block.models_dir == "/app/models" and block.server_models_folder == str(tmp_path / "mnt-models")
    assert block.train_timeout_seconds == 900.0 and block.idle_wait_seconds == 1800.5
    client = block.get_client(workdir=str(tmp_path / "work"))
    assert client.models_dir == "/app/models" and client.server_models_folder == str(tmp_path / "mnt-models")
    assert client.train_timeout == 900.0 and client.idle_wait == 1800.5
