"""`tongban registry sign`, `rotate-root`, `sign-root`: the offline signing ceremonies.

A snapshot prepared by one party (`registry publish --unsigned`, or signed by fewer keys than
the threshold) travels to each other holder, who adds one signature with `registry sign`; once
the threshold is met, the snapshot becomes the folder's `current.jws`. A new root is made with
`rotate-root` and signed with `sign-root` by a threshold of the old root's keys and of its own.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from rich.console import Console

from gateway.cli._arguments import parse_duration, parse_key
from gateway.cli._common import (
    Failure,
    Subparsers,
    passphrase,
    passphrase_options,
    read_input,
    usage,
    utc_now,
)
from registry import (
    Root,
    SnapshotVerifier,
    add_signature,
    install_if_complete,
    load_authority_public_key,
    load_trusted_root,
    next_root,
    pki_trusted_root_path,
    read_root,
    sign_root,
)
from registry._files import write_atomically
from signer import KeyReference, open_signing_key

__all__ = ["register_ceremony", "trusted_root_of"]

MAX_INPUT_BYTES = 16 * 1024 * 1024  # a snapshot or root read from the command line


def trusted_root_of(args: argparse.Namespace) -> Root:
    """The root named by `--root FILE` (root.json or one key's PEM) or `--pki DIR`."""
    if args.root is None and args.pki is None:
        usage(args, "give --root root.json (or --pki DIR) to know which keys may sign")
    return load_trusted_root(args.root or pki_trusted_root_path(args.pki))


def _authority_key(
    reference: KeyReference, args: argparse.Namespace
) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    key = open_signing_key(reference, passphrase(args))
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise Failure(f"{reference}: an authority key is Ed25519 or ECDSA P-256")
    return key


def cmd_registry_sign(args: argparse.Namespace, out: Console) -> int:
    root = trusted_root_of(args)
    text = read_input(args.snapshot, "snapshot", MAX_INPUT_BYTES).decode("ascii", "replace")
    key = _authority_key(args.key, args)
    verifier = SnapshotVerifier(root)
    newest, _ = verifier.tally(text)  # the root it must be signed under: the chain's newest
    signed = add_signature(text, key, newest)
    write_atomically(args.snapshot, signed.encode() + b"\n")
    tally = install_if_complete(args.snapshot, root)
    out.print(
        f"Signed {args.snapshot}: {len(tally.valid)} of {newest.threshold} needed signatures "
        f"({len(newest.keys)} keys in root version {newest.version})."
    )
    if tally.met:
        out.print("The threshold is met: the snapshot is ready for gateways (current.jws).")
    return 0


def cmd_registry_rotate_root(args: argparse.Namespace, out: Console) -> int:
    current = read_root(args.root)
    added = []
    for entry in args.add_key:
        path, _, holder = entry.partition("=")
        if not holder:
            usage(args, f"--add-key {entry}: give PUB.pem=HOLDER (who holds the key)")
        added.append((load_authority_public_key(Path(path)), holder))
    made = next_root(
        current.root,
        add=added,
        remove=args.remove_key,
        threshold=args.threshold,
        now=utc_now(),
        lifetime=args.lifetime or timedelta(days=365),
    )
    out_path = args.out or args.root.parent / f"root-{made.root.version}.json"
    if out_path.exists():
        raise Failure(f"{out_path} exists: refusing to overwrite a root")
    write_atomically(out_path, made.to_bytes())
    out.print(
        f"Root version {made.root.version} written to {out_path}, unsigned: "
        f"{len(made.root.keys)} keys, threshold {made.root.threshold}. It needs "
        f"{current.root.threshold} signatures of root version {current.root.version}'s keys and "
        f"{made.root.threshold} of its own (`tongban registry sign-root`)."
    )
    return 0


def cmd_registry_sign_root(args: argparse.Namespace, out: Console) -> int:
    signed = read_root(args.root_file)
    previous = read_root(args.previous).root if args.previous else None
    key = _authority_key(args.key, args)
    result = sign_root(signed, key, previous=previous)
    write_atomically(args.root_file, result.to_bytes())
    own = sum(1 for s in result.signatures if result.root.key(s.keyid))
    line = f"Signed {args.root_file}: {own} of its own {result.root.threshold} needed"
    if previous is not None:
        old = sum(1 for s in result.signatures if previous.key(s.keyid))
        line += f", {old} of root version {previous.version}'s {previous.threshold} needed"
    out.print(line + ".")
    return 0


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        type=parse_key,
        required=True,
        metavar="KEY",
        help="this holder's authority key: a key file or a pkcs11: URI",
    )
    passphrase_options(parser)


def register_ceremony(reg_verbs: Subparsers) -> None:
    sign = reg_verbs.add_parser(
        "sign",
        help="add one authority key's signature to a snapshot",
        description="Add this holder's signature to a snapshot prepared by another (offline "
        "signing ceremony), in place. Refused: a key the root does not name, a key that has "
        "signed already, a file that is not a snapshot. When the root's threshold is met, a "
        "registry-<version>.jws becomes its folder's current.jws.",
    )
    sign.add_argument("snapshot", type=Path, help="the snapshot, e.g. published/registry-7.jws")
    trust = sign.add_mutually_exclusive_group()
    trust.add_argument("--root", type=Path, help="the trusted root (root.json)")
    trust.add_argument("--pki", type=Path, help="a PKI folder, to use its authority/root.json")
    _key_options(sign)
    sign.set_defaults(handler=cmd_registry_sign, usage_error=sign.error)

    rotate = reg_verbs.add_parser(
        "rotate-root",
        help="make the next trusted root (unsigned)",
        description="Make root version N+1 from root N: add keys, remove keys, change the "
        "threshold. It is accepted by gateways only once signed by a threshold of root N's keys "
        "and of its own (`tongban registry sign-root`).",
    )
    rotate.add_argument("--root", type=Path, required=True, help="the current root document")
    rotate.add_argument(
        "--add-key",
        action="append",
        default=[],
        metavar="PUB.pem=HOLDER",
        help="a public key to add and who holds it (repeatable)",
    )
    rotate.add_argument(
        "--remove-key",
        action="append",
        default=[],
        metavar="KEYID",
        help="a keyid to remove (write --remove-key=KEYID: a keyid may start with '-')",
    )
    rotate.add_argument("--threshold", type=int, help="signatures needed (default: unchanged)")
    rotate.add_argument("--lifetime", type=parse_duration, help="how long it is valid (365d)")
    rotate.add_argument(
        "--out", type=Path, help="where to write it (default: root-<N+1>.json beside --root)"
    )
    rotate.set_defaults(handler=cmd_registry_rotate_root, usage_error=rotate.error)

    sign_root_parser = reg_verbs.add_parser(
        "sign-root",
        help="add one authority key's signature to a new root",
        description="Sign a root made by rotate-root, in place, with a key of the new root or of "
        "the previous one (--previous).",
    )
    sign_root_parser.add_argument("root_file", type=Path, metavar="ROOT", help="root-<N>.json")
    sign_root_parser.add_argument(
        "--previous", type=Path, help="root version N-1, whose keys may sign it too"
    )
    _key_options(sign_root_parser)
    sign_root_parser.set_defaults(
        handler=cmd_registry_sign_root, usage_error=sign_root_parser.error
    )
