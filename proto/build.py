"""Generate the Python modules and type stubs of the tongban.v1 gRPC API.

Run from anywhere (paths are relative to this file):

    python proto/build.py           # regenerate proto/tongban/v1/*_pb2*.py[i] in place
    python proto/build.py --check   # exit 1 if the committed generated files drift

Generation runs grpc_tools.protoc (pinned grpcio-tools) with the mypy-protobuf plugins (pinned
mypy-protobuf) found next to the running interpreter, so the output is byte for byte
reproducible. google/rpc/status.proto comes from the installed googleapis-common-protos, the
package that also provides the google.rpc.status_pb2 module the generated code imports.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "tongban" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[str]:
    """The package's .proto files, relative to PROTO_ROOT, in a stable order."""
    return sorted(path.relative_to(PROTO_ROOT).as_posix() for path in PACKAGE_DIR.glob("*.proto"))


def include_paths() -> list[Path]:
    """protoc -I paths: our protos, protobuf's well-known types, googleapis-common-protos."""
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    # The root that holds google/rpc/status_pb2.py (googleapis-common-protos) also holds
    # google/rpc/status.proto, so the generated import and the .proto come from one package.
    status = importlib.util.find_spec("google.rpc.status_pb2")
    if status is None or status.origin is None:
        raise SystemExit("proto: googleapis-common-protos is not installed")
    googleapis = Path(status.origin).resolve().parents[2]
    if not (googleapis / "google" / "rpc" / "status.proto").is_file():
        raise SystemExit(f"proto: google/rpc/status.proto not found under {googleapis}")
    return [PROTO_ROOT, well_known, googleapis]


def plugin(name: str) -> Path:
    """A protoc plugin executable installed beside the running interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"proto: {name} not found; install the dev extras (mypy-protobuf)")
    return Path(found)


def run_protoc(extra_args: list[str]) -> None:
    """Run protoc over every .proto file with the include paths and extra_args."""
    args = ["grpc_tools.protoc", *(f"-I{path}" for path in include_paths()), *extra_args]
    if protoc.main([*args, *proto_files()]) != 0:
        raise SystemExit("proto: protoc failed")


def generate(out_dir: Path) -> None:
    """Write the generated modules and stubs under out_dir (mirroring PROTO_ROOT's layout)."""
    run_protoc(
        [
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
            f"--mypy_out=quiet:{out_dir}",
            f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out=quiet:{out_dir}",
        ]
    )


def generated_files(package_dir: Path) -> dict[str, bytes]:
    """Generated file name -> content, for the generated files present in package_dir."""
    return {
        path.name: path.read_bytes()
        for path in sorted(package_dir.iterdir())
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    options = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tongban-proto-") as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp) / "tongban" / "v1")
    current = generated_files(PACKAGE_DIR)
    count = len(proto_files())

    if options.check:
        drift = sorted(
            name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name)
        )
        for name in drift:
            state = (
                "missing" if name not in current else "stale" if name not in fresh else "differs"
            )
            print(f"proto: {(PACKAGE_DIR / name).relative_to(PROTO_ROOT.parent)} {state}")
        if drift:
            print("proto: generated code drifts; run: python proto/build.py", file=sys.stderr)
            return 1
        print(f"proto: generated code matches {count} .proto files")
        return 0

    for name in sorted(current.keys() - fresh.keys()):
        (PACKAGE_DIR / name).unlink()
    for name, content in sorted(fresh.items()):
        if current.get(name) != content:
            (PACKAGE_DIR / name).write_bytes(content)
    print(f"proto: generated code for {count} .proto files in {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
