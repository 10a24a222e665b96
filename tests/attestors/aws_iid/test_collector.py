"""The AWS collector: IMDSv2 and the instance nonce file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chit.attestors.base import CollectionFailed, PlatformAbsent
from chit.attestors.aws_iid.collector import AwsIidCollector, instance_nonce
from chit.attestors.aws_iid.envelope import parse_subject_token
from tests.conftest import AwsRegions
from tests.factories import (
    AWS_IID_TYPE,
    ImdsStandIn,
    closed_port_url,
    instance_document,
)
from tests.attestors.aws_iid.conftest import verifier, verify


# --- the collector (client side): IMDSv2 and the instance nonce --------------------------------


COLLECTED_INSTANCE = "i-0123456789abcdef0"


@pytest.fixture
def imds(aws_regions: AwsRegions) -> Iterator[ImdsStandIn]:
    document = instance_document(COLLECTED_INSTANCE)
    stand_in = ImdsStandIn(document, aws_regions.us_east_1.signature(document), aws_regions.us_east_1_rsa2048.rsa2048(document))
    yield stand_in
    stand_in.stop()


def test_the_imds_stand_in_is_as_strict_as_imdsv2(imds: ImdsStandIn) -> None:
    document = imds.url + "/latest/dynamic/instance-identity/document"
    assert httpx.get(document).status_code == 401
    assert httpx.get(document, headers={"X-aws-ec2-metadata-token": "forged"}).status_code == 401
    assert httpx.put(imds.url + "/latest/api/token").status_code == 400
    forwarded = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.put(imds.url + "/latest/api/token", headers=forwarded).status_code == 403


@pytest.mark.parametrize("form", ["signature", "rsa2048"])
def test_collector_speaks_imdsv2_and_sends_what_the_verifier_reads(imds: ImdsStandIn, aws_regions: AwsRegions, tmp_path: Path, form: str) -> None:
    subject = AwsIidCollector(tmp_path / "nonce", imds.url, form).collect()  # type: ignore[arg-type]
    assert subject.token_type == AWS_IID_TYPE
    evidence = parse_subject_token(subject.value)
    assert evidence.document == imds.bodies["document"].encode() and evidence.form == form  # the bytes IMDS served
    assert evidence.nonce == (tmp_path / "nonce").read_text().strip()
    attestation = verify(verifier(certificates_dir=aws_regions.directory), subject.value)
    assert attestation.facts["instance_id"] == COLLECTED_INSTANCE
    # One session token, then both GETs with it: exactly IMDSv2.
    put, *gets = imds.requests
    assert (put.method, put.path) == ("PUT", "/latest/api/token")
    assert 1 <= int(put.headers["x-aws-ec2-metadata-token-ttl-seconds"]) <= 21600
    identity = "/latest/dynamic/instance-identity/"
    assert [(g.method, g.path) for g in gets] == [("GET", identity + "document"), ("GET", identity + form)]
    assert {g.headers["x-aws-ec2-metadata-token"] for g in gets} == set(imds.sessions)


def test_the_nonce_is_created_once_owner_only_and_reused(imds: ImdsStandIn, tmp_path: Path) -> None:
    nonce_file = tmp_path / "chit" / "aws-iid-nonce"
    collector = AwsIidCollector(nonce_file, imds.url)
    first = parse_subject_token(collector.collect().value).nonce
    assert nonce_file.stat().st_mode & 0o777 == 0o600
    assert nonce_file.parent.stat().st_mode & 0o777 == 0o700
    assert parse_subject_token(collector.collect().value).nonce == first
    assert parse_subject_token(AwsIidCollector(nonce_file, imds.url).collect().value).nonce == first
    assert sorted(p.name for p in nonce_file.parent.iterdir()) == ["aws-iid-nonce"]  # no temporary file left


def test_an_operators_nonce_file_is_used_as_it_is(imds: ImdsStandIn, tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonce"
    nonce_file.write_text("operator-chosen-nonce-0123456789\n")
    nonce_file.chmod(0o600)
    assert parse_subject_token(AwsIidCollector(nonce_file, imds.url).collect().value).nonce == "operator-chosen-nonce-0123456789"


def test_racing_collectors_create_one_nonce(tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonce"
    start = threading.Barrier(8)
    found: list[str] = []

    def create() -> None:
        start.wait()
        found.append(instance_nonce(nonce_file))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert nonce_file.read_text().strip() == found[0]


def unsafe_nonce_files(directory: Path) -> dict[str, Path]:
    good = "a-perfectly-fine-nonce-0123456789"
    files = {}
    for name, mode, content in (("group-readable", 0o640, good), ("world-readable", 0o604, good), ("too short", 0o600, "short"),
                                ("with a space", 0o600, "a nonce with spaces in it"), ("too long", 0o600, "x" * 129)):
        files[name] = directory / name.replace(" ", "-")
        files[name].write_text(content)
        files[name].chmod(mode)
    files["symlink"] = directory / "link"
    files["symlink"].symlink_to(files["too short"])
    files["directory"] = directory / "a-directory"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("case", ["group-readable", "world-readable", "too short", "with a space", "too long", "symlink", "directory"])
def test_an_unsafe_or_malformed_nonce_file_is_refused(tmp_path: Path, case: str) -> None:
    path = unsafe_nonce_files(tmp_path)[case]
    with pytest.raises(CollectionFailed, match="nonce file") as raised:
        instance_nonce(path)
    assert "a-perfectly-fine-nonce" not in str(raised.value)


def test_off_ec2_the_platform_is_absent_and_no_nonce_is_made(tmp_path: Path) -> None:
    with pytest.raises(PlatformAbsent, match="no EC2 instance metadata service"):
        AwsIidCollector(tmp_path / "nonce", closed_port_url()).collect()
    assert not (tmp_path / "nonce").exists()


def test_imds_without_the_signature_fails_the_collection(imds: ImdsStandIn, tmp_path: Path) -> None:
    imds.bodies["signature"] = None
    with pytest.raises(CollectionFailed, match="IMDS refused /latest/dynamic/instance-identity/signature: HTTP 404"):
        AwsIidCollector(tmp_path / "nonce", imds.url).collect()
