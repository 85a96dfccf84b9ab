"""The checked-in generated code is exactly what `make proto` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tooling import REPO

PROTO = REPO / "proto"


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "liftshift" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO), f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos], check=True, cwd=PROTO)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated
    stale = [str(rel) for rel in generated if (PROTO / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated code differs from `make proto` output, run `make proto`: {stale}"
    checked_in = {p.relative_to(PROTO) for p in (PROTO / "liftshift" / "v1").glob("*_pb2*.py*")}
    assert checked_in == set(generated), "checked-in generated files do not match the .proto files"
