"""Block documents from blocks.yaml and the environment (``nluflow blocks create``), against the session's
Prefect test harness. Each test uses block names of its own (uuid suffix): the harness is shared."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any, get_args

import pytest
from prefect.blocks.core import Block
from prefect.utilities.dispatch import get_registry_for_type
from prefect_aws.credentials import AwsCredentials
from prefect_aws.s3 import S3Bucket
from pydantic import SecretStr

from blocks.blocks_file import block_class, parse_blocks_file
from blocks.gates import GatePolicyBlock
from blocks.notify import WebhookNotification
from blocks.provision import create_blocks
from blocks.rasa import RasaBackendBlock
from blocks.s3_store import S3ModelStore
from nluflow.errors import ConfigError, NluflowError
from nluflow.evaluation.gates import GatePolicy
from nluflow.store import ModelStore
from nluflow.store.s3 import S3FileSystem

RASA_TOKEN = "rasa-token-7f3e9c1d-do-not-print"
S3_SECRET = "s3-secret-0b5a2e44-do-not-print"
SLACK_URL = "https://hooks.slack.example/services/T000/B000/slack-url-secret-91c4"
SECRETS = (RASA_TOKEN, S3_SECRET, SLACK_URL)
REPO = Path(__file__).resolve().parents[2]
WHOLE_TEMPLATE = re.compile(r"\{\{\s*\$[A-Za-z_][A-Za-z0-9_]*\s*\}\}")


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _exists(ref: str) -> bool:
    try:
        Block.load(ref)
    except ValueError:  # Prefect's answer for an unknown block document
        return False
    return True


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "blocks.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if needle in line)


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret value leaked into: {text}"


FULL_FILE = """\
blocks:
  - type: nluflow-s3-model-store
    name: store-{s}
    when: T_S3_BUCKET
    fields:
      prefix: "{{{{ $T_S3_PREFIX }}}}"
      s3_bucket:
        type: s3-bucket
        name: bucket-{s}
        fields:
          bucket_name: "{{{{ $T_S3_BUCKET }}}}"
          bucket_folder: "{{{{ $T_S3_FOLDER_UNSET }}}}"
          credentials:
            type: aws-credentials
            name: creds-{s}
            fields:
              aws_access_key_id: "{{{{ $T_S3_KEY_ID }}}}"
              aws_secret_access_key: "{{{{ $T_S3_SECRET }}}}"
              region_name: "{{{{ $T_S3_REGION }}}}"
              aws_client_parameters:
                endpoint_url: "{{{{ $T_S3_ENDPOINT }}}}"
  - type: nluflow-rasa-backend
    name: rasa-{s}
    when: T_RASA_URL
    fields:
      url: "{{{{ $T_RASA_URL }}}}"
      token: "{{{{ $T_RASA_TOKEN }}}}"
      jwt: "{{{{ $T_RASA_JWT_UNSET }}}}"
      evaluation_url: "http://{{{{ $T_RASA_EVAL_HOST }}}}:5006"
      pipeline: "{{{{ $T_RASA_PIPELINE }}}}"
      train_timeout_seconds: "{{{{ $T_RASA_TIMEOUT }}}}"
  - type: nluflow-cognigy-backend
    name: cognigy-{s}
    when: T_COGNIGY_PROJECT_UNSET
    fields:
      project_id: "{{{{ $T_COGNIGY_PROJECT_UNSET }}}}"
      flow_id: "{{{{ $T_COGNIGY_FLOW_UNSET }}}}"
  - type: nluflow-gate-policy
    name: gates-{s}
    fields:
      policy:
        min_macro_f1: "{{{{ $T_GATES_MIN_F1 }}}}"
        require_significance: "{{{{ $T_GATES_SIGNIFICANCE }}}}"
        min_delta: "{{{{ $T_GATES_MIN_DELTA_UNSET }}}}"
  - type: nluflow-webhook-notification
    name: slack-{s}
    when: T_SLACK_URL
    fields:
      url: "{{{{ $T_SLACK_URL }}}}"
      kind: slack
      only_promotions: true
"""

FULL_ENV = {
    "T_S3_BUCKET": "nluflow-models",
    "T_S3_PREFIX": "team/nlu",
    "T_S3_KEY_ID": "AKIATESTKEYID0000",
    "T_S3_SECRET": S3_SECRET,
    "T_S3_REGION": "eu-west-1",
    "T_S3_ENDPOINT": "http://127.0.0.1:9000",
    "T_S3_FOLDER_UNSET": "",  # set but empty counts as unset
    "T_RASA_URL": "http://rasa.internal:5005",
    "T_RASA_TOKEN": RASA_TOKEN,
    "T_RASA_EVAL_HOST": "rasa-eval.internal",
    "T_RASA_PIPELINE": '[{"name": "WhitespaceTokenizer"}, {"name": "DIETClassifier", "epochs": 50}]',
    "T_RASA_TIMEOUT": "900",
    "T_GATES_MIN_F1": "0.9",
    "T_GATES_SIGNIFICANCE": "true",
    "T_SLACK_URL": SLACK_URL,
}


def test_creates_every_document_from_the_environment_and_loads_it_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _suffix()
    path = _write(tmp_path, FULL_FILE.format(s=s))
    with caplog.at_level(logging.INFO):
        report = create_blocks(path, FULL_ENV)

    # Nested blocks first, under their own names, then their parent; the entry without its variable skipped.
    assert [(o.ref, o.action) for o in report.outcomes] == [
        (f"aws-credentials/creds-{s}", "created"),
        (f"s3-bucket/bucket-{s}", "created"),
        (f"nluflow-s3-model-store/store-{s}", "created"),
        (f"nluflow-rasa-backend/rasa-{s}", "created"),
        (f"nluflow-cognigy-backend/cognigy-{s}", "skipped"),
        (f"nluflow-gate-policy/gates-{s}", "created"),
        (f"nluflow-webhook-notification/slack-{s}", "created"),
    ]
    skipped = report.outcomes[4]
    assert skipped.reason == "T_COGNIGY_PROJECT_UNSET is not set"
    assert not _exists(f"nluflow-cognigy-backend/cognigy-{s}")

    rasa = RasaBackendBlock.load(f"rasa-{s}")
    assert rasa.url == "http://rasa.internal:5005"
    assert isinstance(rasa.token, SecretStr) and rasa.token.get_secret_value() == RASA_TOKEN
    assert rasa.jwt is None  # unset variable: the field was left out, the default applies
    assert rasa.evaluation_url == "http://rasa-eval.internal:5006"
    assert rasa.pipeline == [{"name": "WhitespaceTokenizer"}, {"name": "DIETClassifier", "epochs": 50}]
    assert rasa.train_timeout_seconds == 900.0

    gates = GatePolicyBlock.load(f"gates-{s}").get_policy()
    assert (gates.min_macro_f1, gates.require_significance) == (0.9, True)
    assert gates.min_delta == GatePolicy.model_fields["min_delta"].default

    slack = WebhookNotification.load(f"slack-{s}")
    assert isinstance(slack.url, SecretStr) and slack.url.get_secret_value() == SLACK_URL
    assert (slack.kind, slack.only_promotions) == ("slack", True)

    # The nested documents are loadable by their own names, and the store refers to them.
    creds = AwsCredentials.load(f"creds-{s}")
    assert creds.aws_access_key_id == "AKIATESTKEYID0000" and creds.region_name == "eu-west-1"
    assert isinstance(creds.aws_secret_access_key, SecretStr)
    assert creds.aws_secret_access_key.get_secret_value() == S3_SECRET
    assert creds.aws_client_parameters.endpoint_url == "http://127.0.0.1:9000"
    bucket = S3Bucket.load(f"bucket-{s}")
    assert (bucket.bucket_name, bucket.bucket_folder) == ("nluflow-models", "")
    assert isinstance(bucket.credentials, AwsCredentials)
    assert bucket.credentials._block_document_name == f"creds-{s}"
    store_block = S3ModelStore.load(f"store-{s}")
    assert store_block.prefix == "team/nlu"
    assert store_block.s3_bucket._block_document_name == f"bucket-{s}"
    store = store_block.get_store()  # builds a boto3 client; no request is made
    assert isinstance(store, ModelStore) and isinstance(store.fs, S3FileSystem)
    assert (store.fs.bucket, store.fs.prefix) == ("nluflow-models", "team/nlu")
    assert store.fs.client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert store.fs.client.meta.region_name == "eu-west-1"

    # The report shows which fields were given; secrets only as "set".
    text = "\n".join([*report.lines(), report.summary()])
    assert f"nluflow-rasa-backend/rasa-{s}: created [" in text and "token=set" in text
    assert "url=set" in text and "aws_secret_access_key=set" in text
    assert "skipped (T_COGNIGY_PROJECT_UNSET is not set)" in text
    assert report.summary() == f"{path}: 6 created, 1 skipped"
    _assert_no_secret(text, caplog.text, repr(report))
    assert f"nluflow-gate-policy/gates-{s}: created" in caplog.text


def _bad_file(s: str) -> str:
    return f"""\
blocks:
  - type: nluflow-gate-policy
    name: gates-{s}
    fields:
      policy:
        min_macro_f1: "{{{{ $T_GATES_MIN_F1 }}}}"
  - type: nluflow-rasa-backend
    name: rasa-{s}
    fields:
      url: http://rasa.internal:5005
      token: "{{{{ $T_RASA_TOKEN }}}}"
  - type: nluflow-neuralspace-backend
    name: neuralspace-{s}
    when: T_NS_PROJECT
    fields:
      project_id: "{{{{ $T_NS_PROJECT }}}}"
      token: "{{{{ $T_NS_TOKEN_UNSET }}}}"
"""


def test_a_missing_required_variable_names_file_line_and_variable_and_nothing_is_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = _suffix()
    path = _write(tmp_path, _bad_file(s))
    env = {"T_GATES_MIN_F1": "0.9", "T_RASA_TOKEN": RASA_TOKEN, "T_NS_PROJECT": "p-1"}
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        create_blocks(path, env)
    message = str(info.value)
    line = _line_of(path, "T_NS_TOKEN_UNSET")
    assert message == (
        f"{path}:{line}: block 'neuralspace-{s}' (nluflow-neuralspace-backend), field 'token': required, but "
        "T_NS_TOKEN_UNSET is not set; set T_NS_TOKEN_UNSET; nothing was saved"
    )
    assert info.value.exit_code == 2
    # The valid blocks before the bad one were validated, never saved.
    for ref in (f"nluflow-gate-policy/gates-{s}", f"nluflow-rasa-backend/rasa-{s}"):
        assert not _exists(ref), ref
    _assert_no_secret(message, caplog.text)


def test_invalid_values_are_all_reported_with_their_lines_without_secret_values(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(
        tmp_path,
        f"""\
blocks:
  - type: nluflow-rasa-backend
    name: rasa-{s}
    fields:
      url: "http://{{{{ $T_RASA_HOST_UNSET }}}}:5005"
      token: "{{{{ $T_RASA_TOKEN }}}}"
      train_timeout_seconds: "{{{{ $T_RASA_TIMEOUT }}}}"
      pipeline: "{{{{ $T_RASA_PIPELINE }}}}"
  - type: nluflow-webhook-notification
    name: slack-{s}
    fields:
      url: "{{{{ $T_SLACK_URL }}}}"
      kind: "{{{{ $T_SLACK_KIND }}}}"
  - type: nluflow-gate-policy
    name: gates-{s}
    fields:
      policy:
        min_macro_f1: "{{{{ $T_GATES_MIN_F1 }}}}"
""",
    )
    env = {
        "T_RASA_TOKEN": RASA_TOKEN,
        "T_RASA_TIMEOUT": "-5",
        "T_RASA_PIPELINE": "[{not json",
        "T_SLACK_URL": SLACK_URL,
        "T_SLACK_KIND": "teams",
        "T_GATES_MIN_F1": "1.5",
    }
    with pytest.raises(ConfigError) as info:
        create_blocks(path, env)
    lines = str(info.value).splitlines()
    assert lines[-1] == "4 problems; nothing was saved"
    expected = {
        "T_RASA_HOST_UNSET }}:5005": "field 'url': template {{ $T_RASA_HOST_UNSET }} inside",
        "T_RASA_PIPELINE": "field 'pipeline': not valid JSON",
        "T_SLACK_KIND": "field 'kind': expected 'json' or 'slack'; check T_SLACK_KIND",
        "T_GATES_MIN_F1": (
            "field 'policy.min_macro_f1': expected less than or equal to 1; check T_GATES_MIN_F1"
        ),
    }
    for needle, fragment in expected.items():
        prefix = f"{path}:{_line_of(path, needle)}: "
        assert any(line.startswith(prefix) and fragment in line for line in lines[:-1]), (fragment, lines)
    # The pipeline problem hides the timeout check of the same block (validation waits for the file's
    # problems); no value of any variable is echoed.
    _assert_no_secret(str(info.value))
    assert "teams" not in str(info.value) and "not json" not in str(info.value)
    for ref in (f"nluflow-rasa-backend/rasa-{s}", f"nluflow-webhook-notification/slack-{s}"):
        assert not _exists(ref)


def test_a_value_refused_by_the_block_class_is_reported_without_the_value(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(
        tmp_path,
        f"""\
blocks:
  - type: nluflow-rasa-backend
    name: rasa-{s}
    fields:
      url: http://rasa.internal:5005
      token: "{{{{ $T_RASA_TOKEN }}}}"
      train_timeout_seconds: "{{{{ $T_RASA_TIMEOUT }}}}"
""",
    )
    with pytest.raises(ConfigError) as info:
        create_blocks(path, {"T_RASA_TOKEN": RASA_TOKEN, "T_RASA_TIMEOUT": RASA_TOKEN})
    message = str(info.value)
    assert f"{path}:7: block 'rasa-{s}' (nluflow-rasa-backend), field 'train_timeout_seconds'" in message
    assert "check T_RASA_TIMEOUT" in message and message.endswith("nothing was saved")
    _assert_no_secret(message)


def test_an_existing_document_is_kept_without_overwrite_and_replaced_with_it(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(
        tmp_path,
        f"""\
blocks:
  - type: nluflow-s3-model-store
    name: store-{s}
    fields:
      prefix: "{{{{ $T_PREFIX }}}}"
      s3_bucket:
        type: s3-bucket
        name: bucket-{s}
        fields:
          bucket_name: "{{{{ $T_BUCKET }}}}"
  - type: nluflow-rasa-backend
    name: rasa-{s}
    fields:
      url: "{{{{ $T_RASA_URL }}}}"
      token: "{{{{ $T_RASA_TOKEN }}}}"
""",
    )
    first = {
        "T_PREFIX": "v1",
        "T_BUCKET": "bucket-one",
        "T_RASA_URL": "http://one:5005",
        "T_RASA_TOKEN": "one1",
    }
    second = {
        "T_PREFIX": "v2",
        "T_BUCKET": "bucket-two",
        "T_RASA_URL": "http://two:5005",
        "T_RASA_TOKEN": "two2",
    }
    assert {o.action for o in create_blocks(path, first).outcomes} == {"created"}

    kept = create_blocks(path, second)
    assert [o.action for o in kept.outcomes] == ["kept", "kept", "kept"]
    assert f"nluflow-rasa-backend/rasa-{s}: exists (kept)" in kept.lines()[2]
    rasa = RasaBackendBlock.load(f"rasa-{s}")
    assert rasa.url == "http://one:5005" and rasa.token is not None
    assert rasa.token.get_secret_value() == "one1"
    assert S3ModelStore.load(f"store-{s}").prefix == "v1"

    dry = create_blocks(path, second, overwrite=True, dry_run=True)
    assert [o.action for o in dry.outcomes] == ["updated", "updated", "updated"]
    assert dry.lines()[2].startswith(f"nluflow-rasa-backend/rasa-{s}: would update")
    assert dry.summary().endswith("(dry run: nothing was saved)")
    assert RasaBackendBlock.load(f"rasa-{s}").url == "http://one:5005"

    updated = create_blocks(path, second, overwrite=True)
    assert [o.action for o in updated.outcomes] == ["updated", "updated", "updated"]
    rasa = RasaBackendBlock.load(f"rasa-{s}")
    assert rasa.url == "http://two:5005" and rasa.token is not None
    assert rasa.token.get_secret_value() == "two2"
    store_block = S3ModelStore.load(f"store-{s}")
    assert (store_block.prefix, store_block.s3_bucket.bucket_name) == ("v2", "bucket-two")
    assert S3Bucket.load(f"bucket-{s}").bucket_name == "bucket-two"


def test_a_dry_run_validates_and_saves_nothing(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(tmp_path, FULL_FILE.format(s=s))
    report = create_blocks(path, FULL_ENV, dry_run=True)
    assert report.dry_run and report.count("created") == 6
    assert report.summary() == f"{path}: 6 to create, 1 skipped (dry run: nothing was saved)"
    assert f"nluflow-rasa-backend/rasa-{s}: would create [" in "\n".join(report.lines())
    for outcome in report.outcomes:
        assert not _exists(outcome.ref), outcome.ref


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        (
            "    name: Rasa_Prod\n    fields: {url: x}",
            "name 'Rasa_Prod': a block document name has lowercase",
        ),
        (
            "    name: rasa\n    fields: {url: x, tokn: y}",
            "unknown field 'tokn'; fields of nluflow-rasa-backend",
        ),
        (
            "    name: rasa\n    fields: {url: x, token: hunter2-literal}",
            "field 'token' is a secret and holds a literal value",
        ),
        ("    name: rasa\n    fields: {url: '{{ prefect.variables.x }}'}", "is not an environment template"),
    ],
)
def test_the_file_is_checked_before_the_environment(tmp_path: Path, entry: str, fragment: str) -> None:
    path = _write(tmp_path, f"blocks:\n  - type: nluflow-rasa-backend\n{entry}\n")
    with pytest.raises(ConfigError) as info:
        create_blocks(path, {})
    assert str(info.value).startswith(f"{path}:") and fragment in str(info.value), str(info.value)
    assert "hunter2-literal" not in str(info.value)


def test_an_unknown_block_type_lists_the_known_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "blocks:\n  - type: nluflow-rasa\n    name: rasa\n")
    with pytest.raises(
        ConfigError, match=r"blocks.yaml:2: .*unknown block type 'nluflow-rasa'.*nluflow-rasa-backend"
    ):
        parse_blocks_file(path)


def _gates_file(s: str, fields: str) -> str:
    return f"blocks:\n  - type: nluflow-gate-policy\n    name: gates-{s}\n    fields:\n{fields}"


def test_the_gate_policy_takes_every_core_field_with_the_core_limits(tmp_path: Path) -> None:
    s = _suffix()
    # The three fields the block could not set before, and a negative min_delta (the core allows -1..1).
    path = _write(
        tmp_path,
        _gates_file(
            s,
            "      policy:\n"
            '        min_delta: "{{ $T_DELTA }}"\n'
            '        bootstrap_resamples: "{{ $T_RESAMPLES }}"\n'
            '        bootstrap_confidence: "{{ $T_CONFIDENCE }}"\n'
            '        min_entity_f1: "{{ $T_ENTITY_F1 }}"\n',
        ),
    )
    env = {"T_DELTA": "-0.02", "T_RESAMPLES": "2000", "T_CONFIDENCE": "0.9", "T_ENTITY_F1": "0.6"}
    create_blocks(path, env)
    policy = GatePolicyBlock.load(f"gates-{s}").get_policy()
    assert policy == GatePolicy(
        min_delta=-0.02, bootstrap_resamples=2000, bootstrap_confidence=0.9, min_entity_f1=0.6
    )
    # A value the core refuses is reported on its own line, naming its variable.
    with pytest.raises(ConfigError) as info:
        create_blocks(path, {**env, "T_RESAMPLES": "10"}, overwrite=True, dry_run=True)
    assert str(info.value) == (
        f"{path}:{_line_of(path, 'T_RESAMPLES')}: block 'gates-{s}' (nluflow-gate-policy), field "
        "'policy.bootstrap_resamples': expected greater than or equal to 100; check T_RESAMPLES; "
        "nothing was saved"
    )


def test_a_blocks_file_with_the_legacy_flat_gate_fields_still_creates_the_policy(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(
        tmp_path,
        _gates_file(
            s,
            '      min_macro_f1: "{{ $T_GATES_MIN_F1 }}"\n'
            '      require_significance: "{{ $T_GATES_SIGNIFICANCE }}"\n'
            '      min_delta: "{{ $T_GATES_MIN_DELTA_UNSET }}"\n',
        ),
    )
    report = create_blocks(path, {"T_GATES_MIN_F1": "0.9", "T_GATES_SIGNIFICANCE": "true"})
    assert [(o.ref, o.action) for o in report.outcomes] == [(f"nluflow-gate-policy/gates-{s}", "created")]
    assert GatePolicyBlock.load(f"gates-{s}").get_policy() == GatePolicy(
        min_macro_f1=0.9, require_significance=True
    )
    # A bad legacy value is reported on its own line, under the field's new name.
    with pytest.raises(ConfigError) as info:
        create_blocks(path, {"T_GATES_MIN_F1": "1.5"}, dry_run=True)
    assert str(info.value).startswith(
        f"{path}:{_line_of(path, 'T_GATES_MIN_F1')}: block 'gates-{s}' (nluflow-gate-policy), field "
        "'policy.min_macro_f1': expected less than or equal to 1; check T_GATES_MIN_F1"
    )


def test_a_gate_field_given_flat_and_under_policy_is_refused_before_anything_is_saved(tmp_path: Path) -> None:
    s = _suffix()
    path = _write(
        tmp_path,
        _gates_file(
            s, "      policy:\n        min_delta: 0.01\n      min_delta: 0.02\n      tolerance: 0.5\n"
        ),
    )
    with pytest.raises(ConfigError) as info:
        create_blocks(path, {})
    assert str(info.value) == (
        f"{path}:7: block 'gates-{s}' (nluflow-gate-policy): field 'min_delta' is given twice, at the top "
        "level and under 'policy'; nothing was saved"
    )
    assert not _exists(f"nluflow-gate-policy/gates-{s}")


# -------------------------------------------------------------------------------- the repo's blocks.yaml


def _is_secret_annotation(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret_annotation(arg) for arg in get_args(annotation))


def test_the_repo_blocks_file_parses_names_registered_types_and_holds_only_templated_secrets() -> None:
    specs = parse_blocks_file(REPO / "blocks.yaml")
    registry = get_registry_for_type(Block) or {}
    every = [item for spec in specs for item in spec.walk()]
    assert {item.slug for item in every} >= {
        "nluflow-s3-model-store", "s3-bucket", "aws-credentials", "nluflow-rasa-backend",
        "nluflow-cognigy-backend", "nluflow-neuralspace-backend", "nluflow-training-service",
        "nluflow-gate-policy", "nluflow-webhook-notification", "nluflow-label-studio-source",
        "nluflow-folder-source",
    }  # fmt: skip
    secret_count = 0
    for item in every:
        assert item.slug in registry and block_class(item.slug) is registry[item.slug]
        for name, field in item.fields.items():
            annotation = item.block_class.model_fields[name].annotation
            if _is_secret_annotation(annotation) or name in ("aws_access_key_id", "aws_session_token"):
                secret_count += 1
                assert isinstance(field.value, str) and WHOLE_TEMPLATE.fullmatch(field.value), (
                    f"blocks.yaml:{field.line}: {item.ref} field {name!r} must be a '{{{{ $VAR }}}}' template"
                )
    assert secret_count >= 10
    # No URL in the file but templates: every http(s) value is built from a variable.
    text = (REPO / "blocks.yaml").read_text(encoding="utf-8")
    values = [
        line.split(":", 1)[1]
        for line in text.splitlines()
        if ":" in line and not line.lstrip().startswith("#")
    ]
    assert not any(re.search(r"https?://", value) for value in values)


def test_the_repo_blocks_file_refuses_a_pasted_secret(tmp_path: Path) -> None:
    text = (REPO / "blocks.yaml").read_text(encoding="utf-8")
    pasted = text.replace('"{{ $NLUFLOW_RASA_TOKEN }}"', "pasted-secret-value-1234")
    assert pasted != text
    path = _write(tmp_path, pasted)
    with pytest.raises(ConfigError, match="field 'token' is a secret and holds a literal value") as info:
        parse_blocks_file(path)
    assert "pasted-secret-value-1234" not in str(info.value)


def test_the_repo_blocks_file_validates_with_every_variable_set() -> None:
    env = {
        **{var: f"value-{var.lower()}" for var in _variables(REPO / "blocks.yaml")},
        "NLUFLOW_S3_PREFIX": "nlu",
        "NLUFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "NLUFLOW_RASA_PIPELINE": '[{"name": "WhitespaceTokenizer"}]',
        "NLUFLOW_RASA_TRAIN_TIMEOUT_SECONDS": "900",
        "NLUFLOW_RASA_IDLE_WAIT_SECONDS": "1800",
        "NLUFLOW_COGNIGY_LOCALE": "de-DE",
        "NLUFLOW_SERVICE_GPU_TIER": "t4",
        "NLUFLOW_GATES_MIN_MACRO_F1": "0.8",
        "NLUFLOW_GATES_MIN_PRECISION": "0.8",
        "NLUFLOW_GATES_MIN_ENTITY_F1": "0.5",
        "NLUFLOW_GATES_BOOTSTRAP_RESAMPLES": "2000",
        "NLUFLOW_GATES_BOOTSTRAP_CONFIDENCE": "0.9",
        "NLUFLOW_GATES_PRIMARY_METRIC": "accuracy",
        "NLUFLOW_GATES_MIN_DELTA": "-0.01",
        "NLUFLOW_GATES_TOLERANCE": "0.02",
        "NLUFLOW_GATES_REQUIRE_SIGNIFICANCE": "false",
        "NLUFLOW_GATES_MAX_INTENT_F1_DROP": "0.1",
        "NLUFLOW_GATES_MIN_INTENT_SUPPORT": "5",
        "NLUFLOW_REGISTRY_ONLY_PROMOTIONS": "false",
        "NLUFLOW_LABEL_STUDIO_PROJECT_ID": "1",
        "NLUFLOW_LABEL_STUDIO_TOKEN_KIND": "legacy",
    }
    report = create_blocks(REPO / "blocks.yaml", env, dry_run=True)
    assert report.count("skipped") == 0 and len(report.outcomes) == 12
    # The repo file's names are fixed; a dry run saves nothing, so the shared harness is left as it was.
    nothing = create_blocks(REPO / "blocks.yaml", {}, dry_run=True)
    assert {o.name for o in nothing.outcomes if o.action != "skipped"} == {"gates"}


def _variables(path: Path) -> set[str]:
    return set(re.findall(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------------- the CLI


def test_cli_create_reports_per_block_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli_blocks import blocks_app

    s = _suffix()
    good = _write(tmp_path, FULL_FILE.format(s=s))
    runner = CliRunner()
    out = runner.invoke(blocks_app, ["create", "--file", str(good)], env=FULL_ENV)
    assert out.exit_code == 0, out.output
    assert f"nluflow-rasa-backend/rasa-{s}: created" in out.output
    assert f"nluflow-cognigy-backend/cognigy-{s}: skipped (T_COGNIGY_PROJECT_UNSET is not set)" in out.output
    assert f"{good}: 6 created, 1 skipped" in out.output
    assert RasaBackendBlock.load(f"rasa-{s}").token == SecretStr(RASA_TOKEN)
    _assert_no_secret(out.output)

    again = runner.invoke(blocks_app, ["create", "--file", str(good)], env=FULL_ENV)
    assert again.exit_code == 0 and f"{good}: 6 kept, 1 skipped" in again.output, again.output

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = _write(bad_dir, _bad_file(s + "b"))
    env = {"T_GATES_MIN_F1": "0.9", "T_RASA_TOKEN": RASA_TOKEN, "T_NS_PROJECT": "p-1"}
    failed = runner.invoke(blocks_app, ["create", "--file", str(bad)], env=env)
    assert failed.exit_code == 2, failed.output
    assert "error:" in failed.output and "set T_NS_TOKEN_UNSET; nothing was saved" in failed.output
    assert f"{bad}:{_line_of(bad, 'T_NS_TOKEN_UNSET')}:" in failed.output.replace("\n", "")
    assert not _exists(f"nluflow-gate-policy/gates-{s}b")
    _assert_no_secret(failed.output)

    missing = runner.invoke(blocks_app, ["create", "--file", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read the blocks file" in missing.output


def test_cli_register_registers_the_block_types() -> None:
    from typer.testing import CliRunner

    from flows.cli_blocks import blocks_app

    out = CliRunner().invoke(blocks_app, ["register"])
    assert out.exit_code == 0, out.output
    assert "nluflow-s3-model-store" in out.output and "aws-credentials" in out.output


def test_a_prefect_api_failure_names_what_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _suffix()
    path = _write(tmp_path, FULL_FILE.format(s=s))
    calls: list[str] = []
    original = RasaBackendBlock.save

    def failing_save(self: Block, name: str | None = None, overwrite: bool = False, **kw: Any) -> Any:
        calls.append(str(name))
        if isinstance(self, RasaBackendBlock):
            raise RuntimeError(f"boom with {RASA_TOKEN}")
        return original(self, name, overwrite=overwrite)

    monkeypatch.setattr(Block, "save", failing_save)
    with pytest.raises(NluflowError) as info:
        create_blocks(path, FULL_ENV)
    message = str(info.value)
    assert f"saved before the failure: aws-credentials/creds-{s}, s3-bucket/bucket-{s}, " in message
    assert f"not saved: nluflow-rasa-backend/rasa-{s}, nluflow-gate-policy/gates-{s}" in message
    assert info.value.exit_code == 1
    _assert_no_secret(message)
