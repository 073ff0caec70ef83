#!/usr/bin/env python
"""ConceptPrism benchmarks, one entry point:

    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py stage1 [options]

Subcommands are modules of this folder listed in SUBCOMMANDS; each provides HELP,
add_arguments(parser) and main(args) -> exit code. See bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
PACKAGE = "comfyui_conceptprism"

# subcommand -> module of bench/
SUBCOMMANDS = {"stage1": "stage1", "stage2": "stage2", "gpu": "gpu", "precision": "precision", "previews": "previews"}


def register_package() -> None:
    """Import this repository as the package ComfyUI would load it as, through tests/hostenv.py (the
    one module that finds the host and registers the pack). The bench folder itself is taken off
    sys.path so that its module names cannot shadow the host's; tests/ is appended (shadows nothing)."""
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != BENCH]
    sys.path.append(str(ROOT / "tests"))
    import hostenv
    hostenv.register_package()


def main(argv: list[str] | None = None) -> int:
    register_package()
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"{PACKAGE}.bench.{module_name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
