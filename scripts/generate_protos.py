"""Generate the Python gRPC stubs (with type stubs) for every ``proto/*.proto``.

Run from anywhere: ``python scripts/generate_protos.py``. With ``--check`` it
generates into a temporary folder and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    sources = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    produced: list[Path] = []
    for src in sources:
        rel = src.relative_to(ROOT)
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"-I{include}",
                f"--python_out={out_root}",
                f"--pyi_out={out_root}",
                f"--grpc_python_out={out_root}",
                str(rel),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {rel}")
        produced += [out_root / "proto" / (src.stem + s) for s in SUFFIXES]
    return produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            target = PROTO_DIR / path.name
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(target.name)
            else:
                shutil.copyfile(path, target)
        if stale:
            print("stale generated stubs (run scripts/generate_protos.py):", ", ".join(stale))
            return 1
    print(f"{len(produced)} stub files {'up to date' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
