"""The `mbz` command: one verb per user-facing job, each in a module of this package.

Every verb module exposes `register(subparsers)`; it imports what its job needs
inside the command function, so `mbz --help` and the format verbs work with the
core dependencies alone.  Errors a user can cause end in one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, verbs it registers), in the order `mbz --help` lists them
VERB_MODULES = (
    ("files", "pack unpack inspect verify"),
    ("evaluate", "eval"),
    ("bench", "bench"),
    ("data", "data"),
    ("training", "train finetune soup reduce"),
    ("analysis", "sensitivity mixed-precision prune-channels activations"),
    ("compress", "compress"),
    ("sweep", "sweep"),
    ("report", "report"),
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'mbz VERB: error: ... (see mbz VERB --help)', exit 2; options are taken
    only as spelled in full (`--ex` is not read as `--exact`: a typo never runs another option)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for error(): what this parser was handed
        return super().parse_known_args(args, namespace)

    def _unknown_options(self) -> list:
        """Options in this parser's arguments that it does not know (negative numbers are values)."""
        out = []
        for tok in getattr(self, "_given", []):
            known = tok.split("=", 1)[0] in self._option_string_actions
            if tok.startswith("-") and tok not in ("-", "--") and not known:
                try:
                    float(tok)
                except ValueError:
                    out.append(tok)
        return out

    def error(self, message):
        blame = message.startswith(("the following arguments are required", "unrecognized arguments"))
        unknown = self._unknown_options() if blame else []
        if unknown:  # a mistyped option is the cause, not the argument it left missing or the value it took
            import difflib
            near = difflib.get_close_matches(unknown[0].split("=", 1)[0],
                                             [o for o in self._option_string_actions if o.startswith("--")], n=1, cutoff=0.75)
            message = f"unrecognized arguments: {' '.join(unknown)}" + (f" (did you mean {near[0]}?)" if near else "")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="mbz", description="Store, audit and evaluate compressed neural networks: .mbz files that load "
                "back bit-exact with every byte accounted, and the pipeline (train, prune, QAT, soup, sweep, report) "
                "that makes them. `mbz VERB --help` explains each verb.")
    from .. import __version__
    ap.add_argument("--version", action="version", version=f"mbz {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="VERB", parser_class=Parser)
    for mod, _ in VERB_MODULES:
        importlib.import_module(f"{__name__}.{mod}").register(sub)
    return ap


def _verb_parser(ap: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)parser the parsed command line chose, e.g. the one of `mbz sweep run`."""
    p = ap
    while True:
        subs = [x for x in p._actions if isinstance(x, argparse._SubParsersAction)]
        name = getattr(a, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return p
        p = subs[0].choices[name]


def main(argv=None) -> int:
    from ..errors import MbzError, MismatchError
    ap = build_parser()
    a, extra = ap.parse_known_args(argv)
    if extra:  # blame the verb that was given them, and point to its --help
        _verb_parser(ap, a).error(f"unrecognized arguments: {' '.join(extra)}")
    a.argv = list(sys.argv[1:] if argv is None else argv)  # what the command was, for the records it writes
    prog = f"mbz {a.cmd}"
    import warnings
    shown = warnings.showwarning
    # a warning (mbz's own, numpy's, torch's) is one line on stderr, like the errors
    warnings.showwarning = lambda message, *_a, **_k: print(f"{prog}: warning: {message}", file=sys.stderr)
    try:
        return _run(a, prog)
    finally:
        warnings.showwarning = shown


def _run(a, prog: str) -> int:
    from ..errors import MbzError, MismatchError
    try:
        return a.fn(a) or 0
    except MismatchError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except MbzError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mbz inspect F | head`: the reader stopped reading, which is not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as e:  # missing / unreadable file, a directory, a full disk ...
        what = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {what}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing half-written is left; resumable jobs continue when run again)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
