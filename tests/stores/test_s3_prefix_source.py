"""An S3 prefix where batches accumulate, as a data source (moto's S3 server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nluflow.data.loaders import load_paths
from nluflow.errors import SourceError
from nluflow.sources.folder import S3PrefixSource

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .conftest import MotoS3

DEMO = Path(__file__).resolve().parents[2] / "examples" / "snips-demo"


def put(client: S3Client, bucket: str, key: str, path: Path) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def test_every_batch_under_the_prefix_is_read_and_new_ones_are_picked_up(
    s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    put(s3_client, s3_bucket, "inbox/bot/b1.jsonl", DEMO / "batch-1.jsonl")
    put(s3_client, s3_bucket, "inbox/bot/.hidden.jsonl", DEMO / "batch-3-mislabelled.jsonl")
    put(s3_client, s3_bucket, "inbox/bot-2/other.jsonl", DEMO / "batch-3-mislabelled.jsonl")  # not below
    put(s3_client, s3_bucket, "inbox/bot/notes.txt", DEMO / "README.md")
    source = S3PrefixSource(s3_client, s3_bucket, "inbox/bot", reference="nluflow-folder-source/inbox")

    first = source.pull(tmp_path)
    assert first.provenance.files == 1 and first.provenance.kind == "s3"
    assert first.provenance.description == f"s3://{s3_bucket}/inbox/bot/"
    assert len(load_paths(first.paths)) == 140

    put(s3_client, s3_bucket, "inbox/bot/2026/b2.jsonl", DEMO / "batch-2.jsonl")
    second = source.pull(tmp_path)
    assert second.paths == first.paths and second.provenance.files == 2
    assert second.provenance.sha256 != first.provenance.sha256
    assert len(load_paths(second.paths)) == 840

    s3_client.delete_object(Bucket=s3_bucket, Key="inbox/bot/b1.jsonl")
    third = source.pull(tmp_path)
    assert third.provenance.files == 1
    assert len(load_paths(third.paths)) == 700  # the mirror holds exactly what the prefix holds

    again = source.pull(tmp_path)
    assert again.provenance.sha256 == third.provenance.sha256  # nothing changed: the same content hash


def test_a_missing_bucket_names_the_prefix_and_says_what_happens(s3_client: S3Client, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        S3PrefixSource(s3_client, "no-such-bucket-here", "inbox").pull(tmp_path)

    message = str(info.value)
    assert "s3://no-such-bucket-here/inbox/" in message and "NoSuchBucket" in message
    assert "nothing was pulled and nothing was trained" in message


def test_the_folder_source_block_builds_an_s3_prefix_source(
    moto_s3: MotoS3, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials
    from prefect_aws.s3 import S3Bucket

    from blocks.sources import FolderSource

    put(s3_client, s3_bucket, "team/inbox/b1.jsonl", DEMO / "batch-1.jsonl")
    credentials = AwsCredentials(
        aws_access_key_id=moto_s3.access_key_id,
        aws_secret_access_key=moto_s3.secret_access_key,
        region_name=moto_s3.region,
        aws_client_parameters={"endpoint_url": moto_s3.endpoint_url},
    )
    block = FolderSource(
        s3_bucket=S3Bucket(bucket_name=s3_bucket, bucket_folder="team", credentials=credentials),
        prefix="inbox",
    )

    pulled = block.get_source(reference="nluflow-folder-source/x").pull(tmp_path)

    assert pulled.provenance.description == f"s3://{s3_bucket}/team/inbox/"
    assert pulled.provenance.reference == "nluflow-folder-source/x"
    assert moto_s3.secret_access_key not in pulled.model_dump_json()
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        FolderSource(path=str(tmp_path), s3_bucket=block.s3_bucket)
