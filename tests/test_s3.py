"""Input from and output to S3, against moto's S3 server on 127.0.0.1 (as s3fs tests do).

The job reaches the bucket through exactly the code a user's S3 takes: s3fs built from the
storage config, handed to Ray Data for reading and writing.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import S3_CREDENTIALS as CREDENTIALS
from conftest import job_config

from alpagasus_ray.data.io import filesystem
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.report import regenerate

BUCKET = "alpagasus-test"


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    client.create_bucket(Bucket=BUCKET)
    rows = synthetic_examples(20, seed=4)
    body = "".join(json.dumps(r) + "\n" for r in rows[:10]) + "{not json\n"
    client.put_object(Bucket=BUCKET, Key="in/shard-0.jsonl", Body=body.encode())
    client.put_object(
        Bucket=BUCKET,
        Key="in/shard-1.jsonl",
        Body="".join(json.dumps(r) + "\n" for r in rows[10:]).encode(),
    )
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    client.put_object(
        Bucket=BUCKET, Key="parquet/part-0.parquet", Body=sink.getvalue().to_pybytes()
    )
    return client


def test_jsonl_in_and_partitioned_parquet_out_on_s3(ray_session, stand_in, s3_endpoint, bucket):
    cfg = job_config(
        f"s3://{BUCKET}/in/",
        f"s3://{BUCKET}/out/run",
        stand_in,
        storage__endpoint_url=s3_endpoint,
        **CREDENTIALS,
    )
    manifest = run_filter(cfg)
    assert manifest.rows_read == 21 == sum(manifest.counts.values())
    assert manifest.counts["quarantined"] == 1

    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix="out/run/")["Contents"]]
    assert "out/run/manifest.json" in keys and "out/run/report.md" in keys
    assert any(k.startswith("out/run/data/decision=quarantined/") for k in keys)
    on_s3 = json.loads(bucket.get_object(Bucket=BUCKET, Key="out/run/manifest.json")["Body"].read())
    assert on_s3["counts"] == manifest.counts
    assert "testing-secret" not in json.dumps(on_s3)

    fs, root = filesystem(f"s3://{BUCKET}/out/run", cfg.storage)
    report = regenerate(f"s3://{BUCKET}/out/run", cfg.storage)
    assert report["rows"] == 21 and fs.exists(f"{root}/score_histogram.png")


def test_parquet_from_s3(ray_session, stand_in, s3_endpoint, bucket):
    cfg = job_config(
        f"s3://{BUCKET}/parquet/",
        f"s3://{BUCKET}/out/parquet",
        stand_in,
        storage__endpoint_url=s3_endpoint,
        **CREDENTIALS,
    )
    manifest = run_filter(cfg)
    assert manifest.rows_read == 20 == sum(manifest.counts.values())
    assert manifest.counts["quarantined"] == 0
