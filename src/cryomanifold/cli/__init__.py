"""Command-line interface: ``cryomanifold <command> [options]``.

Each subcommand lives in its own module with a ``main(argv) -> int`` that can be
called in-process (tests do); this module only dispatches, importing the
subcommand's module lazily so that ``cryomanifold --help`` is fast. Every
subcommand runs inside the one error path of :mod:`cryomanifold.cli._errors`:
expected errors print one line and exit 1, Ctrl-C exits 130, a bug exits 70 with
its traceback in a log file.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("cryomanifold.cli.run", "classify a particle stack (.star, .cs or .mrcs)"),
    "recluster": ("cryomanifold.cli.recluster", "another number of classes on a run's map"),
    "simulate": ("cryomanifold.cli.simulate", "simulate particles from atomic models"),
    "demo": ("cryomanifold.cli.demo", "simulate a small dataset and classify it"),
    "export": ("cryomanifold.cli.export", "write a selection of a run as .star / .cs"),
    "project": ("cryomanifold.cli.project", "place new particles into an existing run's map"),
    "atlas": ("cryomanifold.cli.atlas", "write a run's atlas.html, or an atlas of several runs"),
    "relion-external": ("cryomanifold.cli.relion_external", "run as a RELION External job"),
}


def _usage() -> str:
    lines = ["usage: cryomanifold <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'cryomanifold <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryomanifold`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from cryomanifold import __version__

        print(f"cryomanifold {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"cryomanifold: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cryomanifold.cli._errors import out_folder_arg, run_command

    def body() -> int:
        module = importlib.import_module(COMMANDS[name][0])
        result: int = module.main(args[1:])
        return result

    return run_command(name, body, out_dir=out_folder_arg(args[1:]), argv=args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
