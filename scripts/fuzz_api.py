"""schemathesis against the served OpenAPI document, with and without the token.

Starts `drivetrain serve` on a free local port (127.0.0.1) with a small fitted policy and a token, runs
`schemathesis run` on its `/openapi.json` twice (with `Authorization: Bearer <token>` and without), and
fails unless both find no server error, no undocumented status, no schema or content-type violation.

    python scripts/fuzz_api.py [--examples 100]     # `make schemathesis`
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from soak import SPEC, build_policy  # noqa: E402 (bench/ joins the path above)

from drivetrain.serve import ServiceProcess  # noqa: E402

TOKEN = "fuzz-token-0123456789"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if schemathesis is None:
        print("schemathesis must be installed (the `test` extra), got none on the path", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy = build_policy(work / "policy")
        service = ServiceProcess.start(SPEC, policy, work / "run", "--compact-every", "2", token=TOKEN, deadline_s=180.0)
        failed = []
        try:
            for label, headers in (("with the token", ["-H", f"Authorization: Bearer {TOKEN}"]), ("without the token", [])):
                print(f"--- schemathesis {label}", flush=True)
                run = subprocess.run([schemathesis, "run", f"{service.url}/openapi.json", "--checks", CHECKS, "-n", str(args.examples),
                                      "--seed", str(args.seed), "--generation-deterministic", "--no-color", *headers],
                                     env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, check=False)
                if run.returncode:
                    failed.append(label)
            if service.process.poll() is not None:
                failed.append(f"the service exited with code {service.process.returncode}")
        finally:
            service.stop(signal.SIGTERM)
        errors = [line for line in service.stderr.read_text().splitlines() if "Traceback" in line or "internal error" in line]
        if errors:
            failed.append(f"{len(errors)} tracebacks on the service's stderr")
    print("schemathesis: " + ("FAILED " + "; ".join(failed) if failed else "0 server errors, 0 undocumented statuses, 0 schema violations, "
                              "with and without the token"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
