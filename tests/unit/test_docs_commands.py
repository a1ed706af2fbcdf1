"""Every command the README and the docs show is run by a test (issue 13). The table maps each
command, as tests/docs_support.py reads it from a fenced sh/bash/shell/console block of README.md,
docs/*.md, bench/README.md or bench/RESULTS.md, to the node id of the test that runs it: most
run each page's commands from the page itself (tests/docs/test_docs_walkthrough.py); the
`make` targets too long for the suite (`make test` is the suite) are dry-run here and checked for
what they run. A new command in the docs fails this test until it is mapped; a mapped command
gone from the docs fails it too; and every node id must be one pytest collects."""

from __future__ import annotations

import subprocess
import sys

import pytest
from docs_support import REPO, WALKTHROUGH, all_commands

COLLECT_TIMEOUT_SECONDS = 300

OPENSSL_REGION = "tests/integration/test_openssl_region.py::test_a_region_made_with_openssl_joins_the_federation_from_its_own_config"

COMMANDS: dict[str, str] = {
    "tongban registry import-ca --pki pki --region 500000 root.pem --intermediate intermediate.pem": "tests/unit/gateway/test_registry_import_cli.py::test_import_then_publish",
    "tongban registry import-cert --pki pki --owner 500000 --usage seal seal.pem --key seal.key": "tests/unit/gateway/test_registry_import_cli.py::test_import_then_publish",
    "tongban registry import-crl --pki pki --region 500000 crl.pem": "tests/unit/gateway/test_registry_import_cli.py::test_import_then_publish",
    "tongban registry publish --pki pki --out published --unsigned": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "tongban registry sign published/registry-1.jws --pki pki --key pki/authority/national.key": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "tongban registry sign published/registry-1.jws --pki pki --key pki/authority/province-1.key": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "tongban registry rotate-root --root pki/authority/root.json --remove-key=KEYID --add-key province-3.pub.pem=440000-security-team": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "tongban registry sign-root pki/authority/root-2.json --previous pki/authority/root.json --key pki/authority/national.key": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "tongban registry sign-root pki/authority/root-2.json --previous pki/authority/root.json --key pki/authority/province-1.key": "tests/unit/gateway/test_registry_ceremony_cli.py::test_three_parties_sign_in_turn_then_a_lost_key_is_rotated_out",
    "make demo": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[demo]",
    "make test": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[test]",
    ".venv/bin/tongban pki init --out out/demo/pki --regions 330000,510000,500000": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/tongban registry publish --pki out/demo/pki --out out/demo/published": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/tongban provider serve --region 510000 --listen 127.0.0.1:9510 &": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/tongban gateway serve --config conf/demo/gateway-510000.toml &": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/tongban provider serve --region 500000 --listen 127.0.0.1:9500 &": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/tongban gateway serve --config conf/demo/gateway-500000.toml &": "tests/docs/test_docs_walkthrough.py::test_readme_three_regions_by_hand",
    ".venv/bin/python bench/query_path.py": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    ".venv/bin/python bench/verify.py": "tests/integration/test_bench_runs.py::test_bench_verify_runs",
    "tongban verify licence.pdf.jws --payload licence.pdf --snapshot out/published/current.jws --pki out/pki": "tests/unit/gateway/test_credentials_cli.py::test_detached_json_report_carries_the_payload",
    "tongban verify ses-v4-signed.ofd --ca ofdrw-root.pem --json": "tests/unit/gateway/test_verify_documents_cli.py::test_the_ofdrw_ofd_reports_each_signature",
    "tongban verify seal-v4.esl --ca ofdrw-root.pem": "tests/unit/gateway/test_verify_documents_cli.py::test_the_ofdrw_seal_by_itself",
    "tongban verify SignedValue.dat --payload Signature.xml --ca ofdrw-root.pem": "tests/unit/gateway/test_verify_documents_cli.py::test_the_ses_signature_with_its_payload",
    "tongban seal licence.json --key seal.key --cert seal-chain.pem --ocsp seal.ocsp.der --out licence.json.jws": "tests/unit/signer/test_jades_lt.py::test_tongban_seal_embeds_at_sealing_time",
    "tongban verify licence.json.jws --snapshot published/current.jws --authority root.json": "tests/unit/signer/test_jades_lt.py::test_tongban_verify_offline_with_a_snapshot",
    ".venv/bin/python bench/verify.py --json out/bench-verify.json": "tests/integration/test_bench_runs.py::test_bench_verify_runs",
    ".venv/bin/python bench/audit.py": "tests/integration/test_bench_runs.py::test_bench_audit_runs",
    ".venv/bin/python bench/targets.py": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    ".venv/bin/python bench/targets.py --quick": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    ".venv/bin/python bench/targets.py --keep DIR --json DIR/targets.json": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    ".venv/bin/python bench/witnessing.py": "tests/integration/test_bench_runs.py::test_bench_witnessing_runs",
    ".venv/bin/python bench/redis_trips.py": "tests/integration/test_bench_runs.py::test_bench_redis_trips_runs",
    ".venv/bin/python bench/redis_trips.py --requests 1000 --rounds 3": "tests/integration/test_bench_runs.py::test_bench_redis_trips_runs",
    ".venv/bin/python bench/redis_trips.py --checks replay,quota": "tests/integration/test_bench_runs.py::test_bench_redis_trips_runs",
    ".venv/bin/python bench/redis_trips.py --checks quota,cache": "tests/integration/test_bench_runs.py::test_bench_redis_trips_runs",
    '.venv/bin/python bench/query_path.py --seconds 4 --warmup 1.5 --workers "" --no-one-process --json out/bench-gateway.json': "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    "tongban audit checkpoint --gateway localhost:7330 --pki out/pki --agency zj.data --out kept.checkpoint": "tests/integration/test_oversight_service.py::test_the_cli_asks_for_a_checkpoint_and_is_told_when_to_ask_again",
    "tongban tracker trail --gateway localhost:7330 --pki out/pki --agency zj.data --subject-id 330106195705031281": "tests/integration/test_tracker.py::test_the_cli_shows_a_trail_and_a_refusal",
    "make lint": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[lint]",
    "make proto": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[proto]",
    "make proto-check": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[proto-check]",
    "make pytest": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[pytest]",
    "make lock": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[lock]",
    "make soak": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[soak]",
    "make faults": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[faults]",
    "make fuzz": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[fuzz]",
    ".venv/bin/python bench/soak.py --versions 20000 --seconds 3600 --json out/soak.json": "tests/integration/test_bench_runs.py::test_bench_soak_runs",
    "make check-lowest": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[check-lowest]",
    "tongban audit verify --sqlite audit-330000.db --pki out/pki --region 330000 --save-checkpoint kept.checkpoint": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit verify --sqlite audit-330000.db --pki out/pki --region 330000 --checkpoint kept.checkpoint --save-checkpoint kept.checkpoint": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit query --sqlite audit-330000.db --subject-id 110105194912310021 --pseudonym-key-file /run/secrets/audit-pseudonym": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit proof --sqlite audit-330000.db --pki out/pki --region 330000 --index 41": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit show-request --sqlite audit-330000.db --request-id req-0001 --pseudonym-key-file /run/secrets/audit-pseudonym --snapshot out/published/current.jws --pki out/pki": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    'tongban audit prune --sqlite audit-330000.db --pki out/pki --region 330000 --older-than 365d --operator "数据局 运维" --reason "retention ticket 42"': "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit prune ... --yes": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban token issue --pki /tmp/g/pki --agency sc.hrss --operator 张三 --lifetime 120s": "tests/docs/test_docs_walkthrough.py::test_docs_integrating_md_commands",
    "tongban verify answer.jws --snapshot current.jws --authority root.json --expect seal --region 330000": "tests/docs/test_docs_walkthrough.py::test_docs_integrating_md_commands",
    "tongban keys expiring --pki PKI --within 30d": "tests/docs/test_docs_walkthrough.py::test_docs_monitoring_md_key_commands",
    "tongban keys rotate --pki PKI --owner OWNER --usage USAGE": "tests/docs/test_docs_walkthrough.py::test_docs_monitoring_md_key_commands",
    "tongban registry publish --pki PKI --out PUBLISHED": "tests/docs/test_docs_walkthrough.py::test_docs_monitoring_md_key_commands",
    "tongban registry show PUBLISHED/current.jws --pki PKI": "tests/docs/test_docs_walkthrough.py::test_docs_monitoring_md_key_commands",
    "tongban audit verify --sqlite audit.db --pki PKI --region REGION": "tests/docs/test_docs_walkthrough.py::test_docs_monitoring_md_audit_verify",
    "make promtool": "tests/unit/test_docs_commands.py::test_make_targets_run_what_the_docs_say[promtool]",
    "promtool check rules conf/prometheus/alerts.yml": "tests/unit/test_monitoring_config.py::test_promtool_check_rules",
    "promtool test rules conf/prometheus/alerts_test.yml": "tests/unit/test_monitoring_config.py::test_promtool_test_rules",
    ".venv/bin/python -m pytest -q tests/unit/test_monitoring_config.py": "tests/unit/test_monitoring_config.py",
    "tongban keys rotate --pki pki --owner 330000 --usage seal": "tests/docs/test_docs_walkthrough.py::test_docs_operators_md_key_commands",
    "tongban registry publish --pki pki --out published": "tests/docs/test_docs_walkthrough.py::test_docs_operators_md_key_commands",
    "tongban keys revoke KID --pki pki --reason keyCompromise": "tests/docs/test_docs_walkthrough.py::test_docs_operators_md_key_commands",
    "tongban keys expiring --pki pki --within 30d": "tests/docs/test_docs_walkthrough.py::test_docs_operators_md_key_commands",
    "tongban registry show published/current.jws --pki pki": "tests/docs/test_docs_walkthrough.py::test_docs_operators_md_key_commands",
    "tongban audit verify --postgres-env TONGBAN_AUDIT_DSN --audit-cert audit-330000.pem --region 330000": "tests/unit/gateway/test_audit_cli.py::test_verify_and_query_a_postgres_log",
    "tongban audit query --sqlite audit-510000.db --subject-id 330106195705031281 --pseudonym-key-file /tmp/g/pki/audit-pseudonym.secret --limit 3": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit verify --sqlite audit-510000.db --pki /tmp/g/pki --region 510000 --save-checkpoint kept-510000.checkpoint": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit verify --sqlite audit-510000.db --pki /tmp/g/pki --region 510000 --checkpoint kept-510000.checkpoint --save-checkpoint kept-510000.checkpoint": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban registry show current.jws --authority root.json --json > registry.json": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    'python3 - <<\'EOF\'\nimport base64, json, ssl\nkey = next(k for k in json.load(open("registry.json"))["keys"]\n           if k["usage"] == "audit" and k["owner"] == "510000" and k["state"] == "active")\nopen("audit-510000.pem", "w").write(ssl.DER_cert_to_PEM_cert(base64.b64decode(key["certificate"])))\nEOF': "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit verify --sqlite audit-510000.db --audit-cert audit-510000.pem --region 510000": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit proof --sqlite audit-510000.db --pki /tmp/g/pki --region 510000 --index 0 --size 14": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit proof --sqlite audit-510000.db --pki /tmp/g/pki --region 510000 --consistency 14 --to 21": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit evidence --sqlite audit-510000.db --region 510000 --snapshot current.jws --authority root.json --request-id REQUEST_ID --out evidence.json": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban audit check-evidence evidence.json --snapshot current.jws --authority root.json --pseudonym-key-file /run/secrets/audit-pseudonym": "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "openssl x509 -inform DER -in audit-certificate.der -noout -pubkey > audit.pub.pem": "tests/unit/gateway/test_evidence.py::test_an_outsider_verifies_every_part_with_standard_tools",
    "openssl pkeyutl -verify -pubin -inkey audit.pub.pem -rawin -in checkpoint-text.txt -sigfile checkpoint.sig": "tests/unit/gateway/test_evidence.py::test_an_outsider_verifies_every_part_with_standard_tools",
    "openssl ts -verify -token_in -in token.der -data checkpoint-note.txt -CAfile tsa-root.pem -untrusted tsa-chain.pem": "tests/unit/gateway/test_evidence.py::test_an_outsider_verifies_every_part_with_standard_tools",
    'tongban audit prune --sqlite audit-510000.db --pki PKI --region 510000 --older-than 365d --operator "四川省数据局 运维" --reason "retention ticket 42"': "tests/docs/test_docs_walkthrough.py::test_docs_audit_and_oversight_commands",
    "tongban pki init --out out/pki --regions 330000,510000,500000": "tests/docs/test_docs_walkthrough.py::test_docs_registry_md_commands",
    "tongban registry build --pki out/pki --out out/draft.json": "tests/docs/test_docs_walkthrough.py::test_docs_registry_md_commands",
    "tongban registry publish --pki out/pki --out out/published": "tests/docs/test_docs_walkthrough.py::test_docs_registry_md_commands",
    "tongban registry show out/published/current.jws --pki out/pki": "tests/docs/test_docs_walkthrough.py::test_docs_registry_md_commands",
    "tongban keys rotate --pki out/pki --owner 330000 --usage seal": "tests/docs/test_docs_walkthrough.py::test_docs_registry_md_commands",
    ".venv/bin/tongban pki init --out /tmp/g/pki --regions 330000,510000,500000": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    ".venv/bin/tongban registry publish --pki /tmp/g/pki --out /tmp/g/published": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    ".venv/bin/tongban gateway serve --pki /tmp/g/pki --region 330000 --snapshot /tmp/g/published/current.jws --listen 127.0.0.1:7330 &": "tests/integration/test_gateway_serve.py::test_cli_gateway_serves_registry_health_and_reflection_then_stops_on_sigint",
    "tongban keys rotate --pki PKI --owner 330000 --usage seal": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    "tongban keys revoke --pki PKI --reason superseded G0AnDLbcsJA1XTDpIUJg6-_NV8M2vyztubZ-tl9THjI": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    "kill -HUP <pid of tongban gateway serve>": "tests/integration/test_sighup_reload.py::test_sighup_takes_a_rotated_tls_certificate_and_seal_key",
    "tongban keys revoke --pki PKI --reason REASON [--at TIME] KID": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    "tongban keys revoke --pki PKI --reason keyCompromise [--at SINCE] OLD_KID": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    "tongban keys generate --pki PKI --owner 330000 --usage seal": "tests/docs/test_docs_walkthrough.py::test_docs_security_md_commands",
    "grep -o '`tests/[^`]*::[^`]*`' docs/threats.md | tr -d '`' | sort -u | tr '\\n' '\\0' | xargs -0 .venv/bin/python -m pytest -p no:cacheprovider --no-cov -q": "tests/security/test_catalogue.py::test_every_node_id_in_the_catalogue_exists",
    ".venv/bin/python bench/verify.py --seconds 5 --json out/bench-verify.json": "tests/integration/test_bench_runs.py::test_bench_verify_runs",
    ".venv/bin/python bench/query_path.py --json out/bench-gateway.json --profile out/bench-profile": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    ".venv/bin/python bench/query_path.py --concurrency 1 --channels 1 --seconds 4 --warmup 1": "tests/integration/test_bench_runs.py::test_bench_targets_runs",
    'softhsm2-util --init-token --free --label tongban-330000 --pin "$TONGBAN_HSM_PIN" --so-pin "$TONGBAN_HSM_SO_PIN"': "tests/integration/test_pkcs11.py::test_the_operators_guide_commands_run",
    "tongban keys rotate --pki pki --owner 330000 --usage seal --pkcs11 'pkcs11:token=tongban-330000;object=seal-2027?module-path=/usr/lib/softhsm/libsofthsm2.so&x-pin-env=TONGBAN_HSM_PIN'": "tests/integration/test_pkcs11.py::test_the_operators_guide_commands_run",
    "tongban keys authority --pkcs11 'pkcs11:token=tongban-330000;object=registry-authority?module-path=/usr/lib/softhsm/libsofthsm2.so&x-pin-env=TONGBAN_HSM_PIN' --out authority-hsm.pub.pem": "tests/integration/test_pkcs11.py::test_the_operators_guide_commands_run",
    "tongban registry publish --pki pki --out published-hsm --root authority-hsm.pub.pem --authority-key 'pkcs11:token=tongban-330000;object=registry-authority?module-path=/usr/lib/softhsm/libsofthsm2.so&x-pin-env=TONGBAN_HSM_PIN'": "tests/integration/test_pkcs11.py::test_the_operators_guide_commands_run",
    "mkdir -p cq/ca/issued cq/secrets handover": OPENSSL_REGION,
    "cat > cq/openssl.cnf <<'EOF'\nARC = 2.25.258057498534154897492412682915841839440\n[ca]\ndefault_ca = issuing\n[issuing]\ndir = cq/ca\ndatabase = $dir/index.txt\nserial = $dir/serial\ncrlnumber = $dir/crlnumber\nnew_certs_dir = $dir/issued\ncertificate = $dir/intermediate.pem\nprivate_key = $dir/intermediate.key\ndefault_md = sha256\ndefault_days = 365\ndefault_crl_days = 7\npolicy = any_name\nunique_subject = no\nutf8 = yes\nstring_mask = utf8only\n[any_name]\ncountryName = optional\norganizationName = supplied\ncommonName = supplied\n[req]\ndistinguished_name = dn\nutf8 = yes\nstring_mask = utf8only\n[dn]\n[root]\nbasicConstraints = critical,CA:TRUE,pathlen:1\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n[issuing_ca]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n[gateway_tls]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth,clientAuth\ncertificatePolicies = $ARC.1.3\nsubjectAltName = DNS:localhost,URI:urn:tongban:gateway:500000\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\ncrlDistributionPoints = URI:http://pki.cq.example/issuing.crl\n[seal]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,nonRepudiation\nextendedKeyUsage = 1.3.6.1.5.5.7.3.36\ncertificatePolicies = 0.4.0.194112.1.1,$ARC.1.1\n1.3.6.1.5.5.7.1.3 = ASN1:SEQUENCE:qc_statements\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\ncrlDistributionPoints = URI:http://pki.cq.example/issuing.crl\n[qc_statements]\nqc_type = SEQUENCE:qc_type\n[qc_type]\nid = OID:0.4.0.1862.1.6\ntypes = SEQUENCE:qc_types\n[qc_types]\neseal = OID:0.4.0.1862.1.6.2\n[audit]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = $ARC.3.2\ncertificatePolicies = $ARC.1.6\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\ncrlDistributionPoints = URI:http://pki.cq.example/issuing.crl\nEOF": OPENSSL_REGION,
    "touch cq/ca/index.txt && echo 1000 > cq/ca/serial && echo 01 > cq/ca/crlnumber": OPENSSL_REGION,
    "openssl rand -hex 32 > cq/secrets/ca-passphrase": OPENSSL_REGION,
    'openssl req -x509 -config cq/openssl.cnf -extensions root -newkey ec -pkeyopt ec_paramgen_curve:P-256 -passout file:cq/secrets/ca-passphrase -keyout cq/ca/root.key -subj "/C=CN/O=重庆市/CN=重庆市 Root CA" -days 3650 -out cq/ca/root.pem': OPENSSL_REGION,
    'openssl req -new -config cq/openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:P-256 -passout file:cq/secrets/ca-passphrase -keyout cq/ca/intermediate.key -subj "/C=CN/O=重庆市/CN=重庆市 Issuing CA" -out cq/ca/intermediate.csr': OPENSSL_REGION,
    "openssl x509 -req -in cq/ca/intermediate.csr -CA cq/ca/root.pem -CAkey cq/ca/root.key -passin file:cq/secrets/ca-passphrase -CAcreateserial -days 1825 -sha256 -extfile cq/openssl.cnf -extensions issuing_ca -out cq/ca/intermediate.pem": OPENSSL_REGION,
    "openssl rand -hex 32 > cq/secrets/key-passphrase": OPENSSL_REGION,
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-256-cbc -pass file:cq/secrets/key-passphrase -out cq/tls.key": OPENSSL_REGION,
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-256-cbc -pass file:cq/secrets/key-passphrase -out cq/seal.key": OPENSSL_REGION,
    "openssl genpkey -algorithm ed25519 -aes-256-cbc -pass file:cq/secrets/key-passphrase -out cq/audit.key": OPENSSL_REGION,
    'openssl req -new -config cq/openssl.cnf -key cq/tls.key -passin file:cq/secrets/key-passphrase -subj "/C=CN/O=重庆市/CN=gateway 500000" -out cq/tls.csr': OPENSSL_REGION,
    'openssl req -new -config cq/openssl.cnf -key cq/seal.key -passin file:cq/secrets/key-passphrase -subj "/C=CN/O=重庆市/CN=重庆市电子印章" -out cq/seal.csr': OPENSSL_REGION,
    'openssl req -new -config cq/openssl.cnf -key cq/audit.key -passin file:cq/secrets/key-passphrase -subj "/C=CN/O=重庆市/CN=audit 500000" -out cq/audit.csr': OPENSSL_REGION,
    "openssl ca -batch -notext -config cq/openssl.cnf -passin file:cq/secrets/ca-passphrase -extensions gateway_tls -in cq/tls.csr -out cq/tls.pem": OPENSSL_REGION,
    "openssl ca -batch -notext -config cq/openssl.cnf -passin file:cq/secrets/ca-passphrase -extensions seal -in cq/seal.csr -out cq/seal.pem": OPENSSL_REGION,
    "openssl ca -batch -notext -config cq/openssl.cnf -passin file:cq/secrets/ca-passphrase -extensions audit -in cq/audit.csr -out cq/audit.pem": OPENSSL_REGION,
    "for usage in tls seal audit; do cat cq/$usage.pem cq/ca/intermediate.pem > cq/$usage-chain.pem; done": OPENSSL_REGION,
    "openssl ca -config cq/openssl.cnf -passin file:cq/secrets/ca-passphrase -gencrl -out cq/ca/crl.pem": OPENSSL_REGION,
    "openssl rand -hex 32 > cq/secrets/pseudonym.key": OPENSSL_REGION,
    "openssl rand -hex 32 > cq/secrets/cache.key": OPENSSL_REGION,
    "cp cq/ca/root.pem cq/ca/intermediate.pem cq/ca/crl.pem cq/tls-chain.pem cq/seal-chain.pem cq/audit-chain.pem handover/": OPENSSL_REGION,
    "tongban pki init --out pki --regions 330000,510000": OPENSSL_REGION,
    "tongban registry import-ca --pki pki --region 500000 --name 重庆市 handover/root.pem --intermediate handover/intermediate.pem": OPENSSL_REGION,
    "tongban registry import-cert --pki pki --owner 500000 --usage tls handover/tls-chain.pem --key-held-by-owner": OPENSSL_REGION,
    "tongban registry import-cert --pki pki --owner 500000 --usage seal handover/seal-chain.pem --key-held-by-owner": OPENSSL_REGION,
    "tongban registry import-cert --pki pki --owner 500000 --usage audit handover/audit-chain.pem --key-held-by-owner": OPENSSL_REGION,
    "tongban registry import-crl --pki pki --region 500000 handover/crl.pem": OPENSSL_REGION,
    "mkdir -p cq/registry && cp pki/authority/root.json published/current.jws cq/registry/": OPENSSL_REGION,
    'cat > cq/gateway.toml <<\'EOF\'\n[gateway]\nregion = "500000"\nlisten = "127.0.0.1:7500"\nmetrics_listen = "127.0.0.1:8500"\n\n[tls]\ncertificate = "tls-chain.pem"\nprivate_key = "tls.key"\npassphrase_file = "secrets/key-passphrase"\n\n[registry]\ntrusted_root = "registry/root.json"\nsnapshot_file = "registry/current.jws"\n\n[[seal.keys]]\ncertificate = "seal-chain.pem"\nprivate_key = "seal.key"\n\n[audit]\nstore = "sqlite"\npath = "audit-500000.db"\nkey = "audit.key"\npseudonym_key_file = "secrets/pseudonym.key"\n\n[exchange]\nprovider = "127.0.0.1:9500"\ncache_key_file = "secrets/cache.key"\nEOF': OPENSSL_REGION,
    "tongban provider serve --region 500000 --listen 127.0.0.1:9500 &": OPENSSL_REGION,
    "tongban gateway serve --config cq/gateway.toml &": OPENSSL_REGION,
    "tongban gateway serve --pki pki --region 510000 --snapshot published/current.jws --listen 127.0.0.1:7510 --peer 500000=localhost:7500 &": OPENSSL_REGION,
    "tongban token issue --pki pki --agency sc.hrss --operator 张三 > token.txt": OPENSSL_REGION,
    'python examples/client.py --gateway localhost:7510 --cert pki/agencies/sc.hrss/keys/tls-*.pem --key pki/agencies/sc.hrss/keys/tls-*.key --ca pki/regions/510000/ca/root.pem --token "$(cat token.txt)" --provider-region 500000 --dataset market.business_licence --purpose LICENCE-VERIFY --subject 91500107635950050U --case-id CASE-2026-0001': OPENSSL_REGION,
    'echo \'{"licence": "渝-2026-0042"}\' > notice.json': OPENSSL_REGION,
    "tongban seal notice.json --key cq/seal.key --cert cq/seal-chain.pem --passphrase-file cq/secrets/key-passphrase --out notice.jws": OPENSSL_REGION,
    "tongban verify notice.jws --snapshot published/current.jws --authority pki/authority/root.json --expect seal --region 500000": OPENSSL_REGION,
    "openssl ca -config cq/openssl.cnf -passin file:cq/secrets/ca-passphrase -revoke cq/seal.pem -crl_reason keyCompromise": OPENSSL_REGION,
    "cp cq/ca/crl.pem handover/": OPENSSL_REGION,
    "cp published/current.jws cq/registry/": OPENSSL_REGION,
    "tongban seal notice.json --key cq/seal.key --cert cq/seal-chain.pem --passphrase-file cq/secrets/key-passphrase --out late.jws": OPENSSL_REGION,
    "tongban verify late.jws --snapshot published/current.jws --authority pki/authority/root.json --expect seal --region 500000": OPENSSL_REGION,
}


def test_every_command_in_the_docs_is_mapped_to_a_test() -> None:
    shown = {c.text: c.where for c in all_commands()}
    unmapped = {text: where for text, where in shown.items() if text not in COMMANDS}
    assert not unmapped, "commands in the docs that no test runs:\n" + "\n".join(
        f"{where}: {text}" for text, where in unmapped.items()
    )
    stale = set(COMMANDS) - set(shown)
    assert not stale, f"mapped commands no longer in the docs: {sorted(stale)}"


def test_every_mapped_node_id_exists() -> None:
    nodes = set(COMMANDS.values())
    files = sorted({node.split("::", 1)[0] for node in nodes})
    assert all((REPO / f).is_file() for f in files), files
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COLLECT_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = {line.strip() for line in result.stdout.splitlines() if "::" in line}
    missing = [
        node
        for node in nodes
        if "::" in node and node not in found and not any(f.startswith(node + "[") for f in found)
    ]
    assert not missing, missing


def test_the_walkthrough_runs_what_it_is_mapped_to() -> None:
    """A command mapped to a test of test_docs_walkthrough.py is one that test takes from its
    page (not one it skips), and each of those tests takes at least one."""
    prefix = "tests/docs/test_docs_walkthrough.py::"
    for text, node in COMMANDS.items():
        if node.startswith(prefix):
            name = node.removeprefix(prefix)
            assert name in WALKTHROUGH, node
            assert text in WALKTHROUGH[name].commands(), f"{name} does not run {text!r}"
    for name, selection in WALKTHROUGH.items():
        assert selection.commands(), f"{name} runs no command"


def test_the_commands_are_read_as_a_reader_types_them() -> None:
    texts = [c.text for c in all_commands()]
    assert "make demo" in texts
    assert not [t for t in texts if "#" in t.split("\n")[0] and "'" not in t]  # comments off
    # continuation lines joined; a here-document kept whole with its command
    assert any(
        t.startswith("tongban audit verify --sqlite audit-510000.db --pki /tmp/g/pki")
        for t in texts
    )
    (heredoc,) = [t for t in texts if t.startswith("python3 - <<'EOF'")]
    assert heredoc.endswith("\nEOF")
    assert "audit-510000.pem" in heredoc


# make targets: what each runs (a dry run, `make -n`) ------------------------------------------
MAKE_TARGETS = {
    "demo": ["tongban demo --dir out/demo"],
    "test": [
        "ruff check .",
        "mypy --strict gateway signer registry",
        "proto/build.py --check",
        "-m pytest --cov",
        "-m coverage report",
    ],
    "lint": [
        ".venv/bin/ruff format --check .",
        ".venv/bin/ruff check .",
        ".venv/bin/mypy --strict gateway signer registry",
    ],
    "proto": [".venv/bin/python proto/build.py"],
    "proto-check": [".venv/bin/python proto/build.py --check"],
    "pytest": [
        ".venv/bin/python -m pytest --cov --cov-branch",
        "tests/integration;",
        "COVERAGE_FILE=out/coverage/security/.coverage",
        "tests/security;",
        "--ignore=tests/integration --ignore=tests/security",
        "-m coverage report",
    ],
    "promtool": ["apt-get install -y -qq --no-install-recommends prometheus"],
    "lock": [
        "pip compile",
        "--generate-hashes",
        "requirements/lock.txt",
        "requirements/lowest.txt",
    ],
    "soak": ["bench/soak.py --versions"],
    "faults": ["TONGBAN_FAULTS_LONG=1", "-m pytest", "tests/faults"],
    "fuzz": ["TONGBAN_FUZZ_EXAMPLES=10000", "-m pytest", "tests/fuzz -m fuzz"],
    "check-lowest": ["--require-hashes requirements/lowest.txt", "-m pytest"],
}


@pytest.mark.parametrize("target", sorted(MAKE_TARGETS))
def test_make_targets_run_what_the_docs_say(target: str) -> None:
    done = subprocess.run(
        ["make", "-n", "-s", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for fragment in MAKE_TARGETS[target]:
        assert fragment in done.stdout, f"make {target} no longer runs {fragment!r}"
