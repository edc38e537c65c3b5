"""The runner's S3 client: SigV4 against AWS's published examples, encoding, error bodies."""

from __future__ import annotations

import pytest

from citus_backup.runner.s3api import (
    EMPTY_SHA256,
    Credentials,
    S3ResponseError,
    S3UnexpectedResponse,
    _error_from,
    authorization,
    canonical_query,
    quote_path,
)

# The example credentials of AWS's "Signature Calculations for the Authorization
# Header" page (sig-v4-header-based-auth), and its fixed request time.
EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
EXAMPLE_DATE = "20130524T000000Z"
EXAMPLE_HOST = "examplebucket.s3.amazonaws.com"


def test_get_object_example_signature() -> None:
    """AWS's "GET Object" example: the first 10 bytes of test.txt."""
    header = authorization(
        method="GET",
        path="/test.txt",
        query="",
        headers={
            "host": EXAMPLE_HOST,
            "range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": EXAMPLE_DATE,
        },
        payload_hash=EMPTY_SHA256,
        credentials=EXAMPLE,
        region="us-east-1",
        amz_date=EXAMPLE_DATE,
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_list_objects_example_signature() -> None:
    """AWS's "GET Bucket (List Objects)" example: max-keys=2, prefix=J."""
    header = authorization(
        method="GET",
        path="/",
        query=canonical_query({"prefix": "J", "max-keys": "2"}),
        headers={
            "host": EXAMPLE_HOST,
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": EXAMPLE_DATE,
        },
        payload_hash=EMPTY_SHA256,
        credentials=EXAMPLE,
        region="us-east-1",
        amz_date=EXAMPLE_DATE,
    )
    assert header.endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


def test_paths_and_queries_are_encoded_as_sigv4_wants() -> None:
    assert quote_path("/b/p/daily/x/my%20db.dump") == "/b/p/daily/x/my%2520db.dump"
    assert quote_path("/b/a b/ü~-_.+") == "/b/a%20b/%C3%BC~-_.%2B"
    assert canonical_query({"uploads": ""}) == "uploads="
    assert (
        canonical_query({"uploadId": "a/b+c", "partNumber": "2"})
        == "partNumber=2&uploadId=a%2Fb%2Bc"
    )


def test_s3_xml_errors_carry_code_status_and_region() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed'
        b"</Code><Message>wrong region</Message><Region>eu-west-1</Region></Error>"
    )
    error = _error_from(400, body, {}, "k")
    assert isinstance(error, S3ResponseError)
    assert (error.code, error.message, error.status, error.region) == (
        "AuthorizationHeaderMalformed",
        "wrong region",
        400,
        "eu-west-1",
    )


@pytest.mark.parametrize(
    ("status", "headers", "key", "code"),
    [
        (404, {}, "k", "NoSuchKey"),
        (404, {}, None, "NoSuchBucket"),
        (403, {}, "k", "AccessDenied"),
        (404, {"x-minio-error-code": "NoSuchBucket"}, "k", "NoSuchBucket"),
    ],
)
def test_bodiless_answers_get_a_code_from_the_status(
    status: int, headers: dict[str, str], key: str | None, code: str
) -> None:
    error = _error_from(status, b"", headers, key)
    assert isinstance(error, S3ResponseError)
    assert error.code == code


def test_other_answers_are_unexpected() -> None:
    error = _error_from(502, b"<html><body>Bad Gateway</body></html>", {}, "k")
    assert isinstance(error, S3UnexpectedResponse)
    assert "HTTP 502" in str(error)
    assert "Bad Gateway" in str(error)
