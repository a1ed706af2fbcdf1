"""Materials verified on arrival (`gateway.cases._materials`): a JWS attached or detached, a
credential sealed by a region of the type the matter names, and each refusal."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from case_support import CQ, SC, Clock, documents, sealed
from flow_support import NOW, load_registry
from support import Federation, make_federation

from gateway._wiring import load_seal_keys
from gateway.cases import MaterialInput, MaterialVerifier, material_digest
from gateway.demo.config import config_for_dev_pki
from gateway.errors import Refusal
from gateway.sealing import RegionSealer
from registry import Registry


@pytest.fixture
def verifier(registry: Registry) -> MaterialVerifier:
    return MaterialVerifier(
        documents(registry, Clock(NOW)), SC, max_material_bytes=8000, max_call_bytes=12000
    )


def reason(call: object) -> tuple[str, dict[str, str]]:
    with pytest.raises(Refusal) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason, caught.value.metadata


async def test_an_attached_and_a_detached_jws_verify(
    fed: Federation, registry: Registry, verifier: MaterialVerifier
) -> None:
    attached = await sealed(fed, registry, CQ, {"a": 1}, material_id="form")
    ref = verifier.verify(attached, now=NOW)
    assert (ref.material_id, ref.format, ref.signer_region, ref.verified_by_region) == (
        "form",
        "jades",
        CQ,
        SC,
    )
    assert ref.sha256 == material_digest(attached.content, b"")
    assert ref.size == len(attached.content)
    assert ref.verified_at == NOW
    assert ref.signer
    detached = await sealed(fed, registry, SC, b"signed bytes", detached=True, material_id="d")
    ref = verifier.verify(detached, now=NOW)
    assert ref.size == len(detached.content) + len(b"signed bytes")
    assert ref.sha256 == material_digest(detached.content, b"signed bytes")
    # the detached JWS with other bytes: its seal does not cover them
    other = MaterialInput("d", detached.content, b"other bytes")
    assert reason(lambda: verifier.verify(other, now=NOW)) == (
        "MATERIAL_INVALID",
        {"material": "d"},
    )


async def test_a_credential_must_be_of_the_type_the_matter_names_when_it_says_one(
    fed: Federation, registry: Registry, verifier: MaterialVerifier
) -> None:
    card = await sealed(fed, registry, CQ, {"credential_type": "id_card"}, material_id="c")
    assert verifier.verify(card, now=NOW, credential_type="id_card").format == "jades"
    assert verifier.verify(card, now=NOW, credential_type="").format == "jades"
    plain = await sealed(fed, registry, CQ, {"name": "x"}, material_id="c")
    assert verifier.verify(plain, now=NOW, credential_type="id_card").signer_region == CQ
    assert reason(lambda: verifier.verify(card, now=NOW, credential_type="business_licence"))[
        0
    ] == ("MATERIAL_INVALID")


async def test_a_material_is_refused_unrecognised_too_large_or_out_of_its_time(
    fed: Federation, registry: Registry, verifier: MaterialVerifier
) -> None:
    assert reason(lambda: verifier.verify(MaterialInput("x", b"hello"), now=NOW)) == (
        "MATERIAL_INVALID",
        {"material": "x"},
    )
    big = MaterialInput("big", b"x" * 8001)
    assert reason(lambda: verifier.verify(big, now=NOW)) == (
        "MATERIAL_TOO_LARGE",
        {"material": "big"},
    )
    parts = [MaterialInput("a", b"x" * 6400), MaterialInput("b", b"x" * 6400)]
    assert reason(lambda: verifier.check_sizes(parts)) == (
        "MATERIAL_TOO_LARGE",
        {"material": "b"},
    )
    verifier.check_sizes(parts[:1])
    old = await sealed(fed, registry, CQ, {"a": 1}, material_id="old")
    # validated before its seal was made (the seal's time is in the future then)
    assert reason(lambda: verifier.verify(old, now=NOW, validation_time=NOW - timedelta(days=400)))[
        0
    ] == ("MATERIAL_INVALID")
    with pytest.raises(ValueError, match="max_material_bytes"):
        MaterialVerifier(verifier.documents, SC, max_material_bytes=10, max_call_bytes=5)


# -- GB/T 38540 and OFD: a region that seals with SM2 -------------------------------------------
SM2_REGION = "330000"
RECORD = json.dumps({"credential_type": "business_licence", "uscc": "91330000MA00000000"}).encode()


@pytest.fixture(scope="module")
def sm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, RegionSealer]:
    fed = make_federation(
        tmp_path_factory.mktemp("sm2"), now=NOW - timedelta(hours=1), seal_algorithm="SM2"
    )
    fed.publish(now=NOW - timedelta(minutes=30))
    registry = load_registry(fed)
    config = config_for_dev_pki(
        fed.pki, SM2_REGION, listen="127.0.0.1:0", snapshot_file=fed.current
    )
    return registry, RegionSealer(SM2_REGION, dict(load_seal_keys(config)))


async def test_a_gbt38540_signature_and_an_ofd_e_licence_verify(
    sm2: tuple[Registry, RegionSealer],
) -> None:
    registry, sealer = sm2
    verifier = MaterialVerifier(documents(registry, Clock(NOW)), SC)
    made = await sealer.seal(registry, RECORD, content_type="application/json", now=NOW)
    ses = MaterialInput("form", made.ses_signature, RECORD)
    ref = verifier.verify(ses, now=NOW)
    assert (ref.format, ref.signer_region) == ("gbt38540", SM2_REGION)
    tampered = MaterialInput("form", made.ses_signature, RECORD + b" ")
    assert reason(lambda: verifier.verify(tampered, now=NOW))[0] == "MATERIAL_INVALID"
    licence = await sealer.seal_licence(
        registry, RECORD, credential_type="business_licence", now=NOW
    )
    assert licence is not None
    ofd = MaterialInput("current-licence", licence[1])
    ref = verifier.verify(ofd, now=NOW, credential_type="business_licence")
    assert (ref.format, ref.signer_region) == ("ofd", SM2_REGION)
    # the record the e-licence carries names another credential than the matter asks for
    assert reason(lambda: verifier.verify(ofd, now=NOW, credential_type="id_card")) == (
        "MATERIAL_INVALID",
        {"material": "current-licence"},
    )


def test_a_refusal_shows_a_material_id_only_when_it_is_plain_text() -> None:
    from gateway.audit import is_digest_form
    from gateway.cases._materials import material_label

    assert material_label("filing-form") == "filing-form"
    assert material_label("") == ""
    for hostile in ("m" * 100_000, "11010519491231002X", "a\x00b", "\u202eexe"):
        shown = material_label(hostile)
        assert is_digest_form(shown)
        assert len(shown) < 128
