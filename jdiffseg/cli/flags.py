"""Flag parsing shared by the subcommands: absl flags, the `--config` file flag, and a run's
own config.json as a flag whose `--config.a.b=v` overrides are typed by that file."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from jdiffseg.config import schema
from jdiffseg.runtime import run_dir


def parse_flags(fv: flags.FlagValues, prog: str, argv: list[str]) -> None:
    """Parses a subcommand's own flags; `--help` prints them, a bad flag exits 2 with why."""
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(f"usage: jdiffseg {prog} [flags]\n\n{fv.get_help()}")
        sys.exit(0)
    try:
        extra = fv([f"jdiffseg {prog}", *argv])
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        # ml_collections reports an unknown `--config.x` key as KeyError/AttributeError.
        cause: object = e
        while isinstance(cause, BaseException) and cause.args:
            cause = cause.args[0]
        message = str(cause).replace("\n", "; ")
        print(f"jdiffseg {prog}: bad flag or config key: {message}", file=sys.stderr)
        sys.exit(2)
    if len(extra) > 1:
        print(f"jdiffseg {prog}: unexpected arguments {extra[1:]}", file=sys.stderr)
        sys.exit(2)


def define_config_flag(fv: flags.FlagValues, argv: list[str]) -> flags.FlagHolder:
    """The `--config=FILE[:ARG]` flag (locked config) every config-driven subcommand takes.

    `argv` must be the arguments that will be parsed: ml_collections reads the
    `--config.a.b=v` overrides from it when the flag is defined.
    """
    return config_flags.DEFINE_config_file(
        "config",
        None,
        "config file, e.g. configs/ensemdiff.py:dataset=isic2016",
        flag_values=fv,
        lock_config=True,
        sys_argv=["jdiffseg", *argv],
    )


def flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=v` or `--name v` in argv, before the flags are parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def define_run_flags(
    fv: flags.FlagValues,
    argv: Sequence[str],
    command: str,
    config_help: str = "the run's config.json; override keys with --config.eval.KEY=VALUE",
    workdir_help: str = "a trained run's directory",
) -> flags.FlagHolder | None:
    """`--workdir` and `--config`: the config.json of the run `--workdir` in `argv` names
    (locked), whose keys `--config.a.b=v` override. A run whose config cannot be read, or an
    unknown key, prints `jdiffseg COMMAND: ...` saying why and returns None (exit status 2)."""
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
    workdir = flag_value(argv, "workdir")
    try:
        base = run_dir.read_config(workdir) if workdir else schema.base_config()
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"jdiffseg {command}: {err}", file=sys.stderr)
        return None
    try:
        return config_flags.DEFINE_config_dict(
            "config", base, config_help, flag_values=fv, lock_config=True,
            sys_argv=["jdiffseg", *argv],
        )
    except (AttributeError, KeyError) as err:
        print(f"jdiffseg {command}: bad config key: {err}", file=sys.stderr)
        return None


def config_overrides(fv: flags.FlagValues) -> dict:
    """The `--config.a.b=v` values given on the command line, as dotted keys."""
    return dict(config_flags.get_override_values(fv["config"]))


def parse_positional(fv: flags.FlagValues, prog: str, argv: list[str], usage: str) -> list[str]:
    """Parses flags and returns the positional arguments; `--help` prints `usage` and exits 0,
    a bad flag exits 2 with why (for subcommands that take positional arguments)."""
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(usage)
        sys.exit(0)
    try:
        return fv([f"jdiffseg {prog}", *argv])[1:]
    except flags.Error as e:
        print(f"jdiffseg {prog}: bad flag: {e}", file=sys.stderr)
        sys.exit(2)


def define_replica_flag(fv: flags.FlagValues) -> flags.FlagHolder:
    """`--replica=k`: one replica of a population run (`train.population` > 1)."""
    return flags.DEFINE_integer(
        "replica", None, "one replica of a population run (default: all of them)",
        lower_bound=0, flag_values=fv,
    )
