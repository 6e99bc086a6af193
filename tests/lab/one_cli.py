"""The OpenNebula commands of the lab's operator, against the lab's cloud process.

    onetemplate update ID FILE --append
    oneflow-template create FILE | instantiate ID        (answers typed on stdin, one per line)
    oneflow list | show ID | scale ID ROLE CARDINALITY
    onevm show ID | updateconf ID FILE --append | reboot ID | poweroff ID | resume ID

Installed by the lab as small scripts named like the real commands (``DIR/bin``), so the guide's
walkthrough runs as typed. As with the real CLIs the zone is the front-end the environment points
at: ``ONE_XMLRPC`` (onevm, onetemplate) or ``ONEFLOW_URL`` (oneflow, oneflow-template), whose host
is ``one-a``, ``one-b`` or ``one-c``. Only what the walkthrough and the drills use is modelled; the
prompts and the error texts of ``oneflow-template`` are the OneFlow double's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.lab.cloud import DEFAULT_DIR, CloudError, request


def _zone(var: str) -> str:
    url = os.environ.get(var, "")
    host = urlsplit(url).hostname or ""
    if not host.startswith("one-") or len(host) != 5:
        raise SystemExit(f"{var}={url!r}: not a front-end of the lab (http://one-a|one-b|one-c:PORT)")
    return host[-1].upper()


def _fail(msg: str, status: int = 255) -> int:
    print(msg, file=sys.stderr)
    return status


def _show_service(doc: dict[str, Any]) -> None:
    print(f"SERVICE {doc['id']} INFORMATION")
    print(f"{'ID':<16}: {doc['id']}\n{'NAME':<16}: {doc['name']}\n{'STATE':<16}: {doc['state']}\n")
    for role in doc["roles"]:
        print(f"ROLE {role['name']}\n{'ROLE STATE':<16}: {role['state']}\n{'CARDINALITY':<16}: {role['cardinality']}")
        for node in role["nodes"]:
            print(f"  VM {node['vmid']:<6} {node['name']}")
        print()
    if doc["log"]:
        print("LOG MESSAGES\n" + "\n".join(doc["log"]))


def main(argv: list[str]) -> int:
    state_dir = Path(os.environ.get("FCLAB_DIR", str(DEFAULT_DIR)))
    if not argv:
        return _fail("usage: one_cli COMMAND ARGS")
    cmd, args = argv[0], argv[1:]
    append = any(a in ("--append", "-a") for a in args)
    args = [a for a in args if a not in ("--append", "-a")]
    try:
        if cmd == "onetemplate" and len(args) == 3 and args[0] == "update":
            request(state_dir, "onetemplate-update", zone=_zone("ONE_XMLRPC"), id=int(args[1]),
                    text=Path(args[2]).read_text(), append=append)
            return 0
        if cmd == "oneflow-template" and len(args) >= 2 and args[0] in ("create", "instantiate"):
            answers = sys.stdin.read().split("\n") if args[0] == "instantiate" and len(args) == 2 else []
            if answers and answers[-1] == "":
                answers.pop()
            first_file = 1 if args[0] == "create" else 2  # create FILE | instantiate ID [FILE]
            paths = [str(Path(a).resolve()) if i >= first_file else a for i, a in enumerate(args)]
            out = request(state_dir, "oneflow-template", zone=_zone("ONEFLOW_URL"),
                          argv=["oneflow-template", *paths], answers=answers)
            sys.stdout.write(out["output"])
            return int(out["status"])
        if cmd == "oneflow" and args[:1] == ["list"]:
            for doc in request(state_dir, "oneflow-list", zone=_zone("ONEFLOW_URL")):
                print(f"{doc['id']:>4} {doc['name']:<28} {doc['state']}")
            return 0
        if cmd == "oneflow" and len(args) == 2 and args[0] == "show":
            _show_service(request(state_dir, "oneflow-show", zone=_zone("ONEFLOW_URL"), id=int(args[1])))
            return 0
        if cmd == "oneflow" and len(args) == 4 and args[0] == "scale":
            request(state_dir, "oneflow-scale", zone=_zone("ONEFLOW_URL"), id=int(args[1]), role=args[2],
                    cardinality=int(args[3]))
            return 0
        if cmd == "onevm" and len(args) == 2 and args[0] == "show":
            doc = request(state_dir, "onevm-show", zone=_zone("ONE_XMLRPC"), id=int(args[1]))
            print(f"VIRTUAL MACHINE {doc['vmid']} INFORMATION\n{'NAME':<16}: {doc['name']}\n"
                  f"{'STATE':<16}: {'ACTIVE' if doc['powered'] else 'POWEROFF'}\n\nUSER TEMPLATE")
            for k, v in sorted(doc["user_template"].items()):
                print(f'{k}="{v}"')
            return 0
        if cmd == "onevm" and len(args) == 3 and args[0] == "updateconf":
            request(state_dir, "onevm-updateconf", zone=_zone("ONE_XMLRPC"), id=int(args[1]),
                    text=Path(args[2]).read_text(), append=append)
            return 0
        if cmd == "onevm" and len(args) == 2 and args[0] in ("reboot", "poweroff", "resume"):
            request(state_dir, f"onevm-{args[0]}", zone=_zone("ONE_XMLRPC"), id=int(args[1]))
            return 0
    except CloudError as exc:
        return _fail(f"[{cmd}] {exc}")
    except (OSError, ValueError) as exc:
        return _fail(f"{cmd}: {exc}")
    return _fail(f"{cmd} {' '.join(argv[1:])}: not modelled by the lab (see tests/lab/one_cli.py)")


def install_shims(state_dir: Path) -> Path:
    """DIR/bin/{onetemplate,oneflow-template,oneflow,onevm}: this module under the real names."""
    bindir = state_dir / "bin"
    bindir.mkdir(mode=0o700, parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    for name in ("onetemplate", "oneflow-template", "oneflow", "onevm"):
        shim = bindir / name
        shim.write_text(f'#!/bin/sh\nFCLAB_DIR={json.dumps(str(state_dir))} PYTHONPATH={json.dumps(str(repo))} '
                        f'exec {json.dumps(sys.executable)} -m tests.lab.one_cli {name} "$@"\n')
        shim.chmod(0o700)
    return bindir


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
