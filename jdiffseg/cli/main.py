"""The `jdiffseg` command: one subcommand per stage of a study.

    jdiffseg train    --config=configs/ensemdiff.py:dataset=isic2016 --workdir=runs/ens
    jdiffseg evaluate --workdir=runs/ens
    jdiffseg analyze  --workdir=runs/ens --mask_only_workdir=runs/ens_e3
    jdiffseg predict  --workdir=runs/ens --input=my_images/ --output=my_masks/
    jdiffseg import   --checkpoint=emasavedmodel.pt --config=configs/ensemdiff.py --workdir=runs/a
    jdiffseg sweep    --config=configs/sweeps/paper.py --launcher=print
    jdiffseg data     build synthetic --variant=nuclei
    jdiffseg demo

Config-driven subcommands take `--config=FILE[:ARG]` and `--config.a.b=v` overrides
(ml_collections, locked: an unknown key fails and names itself).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from absl import app, flags, logging

from jdiffseg.runtime import cpu_defaults

SUBCOMMANDS: dict[str, str] = {
    "train": "train a model (any architecture x dataset x mode) in a workdir; resumes if present",
    "evaluate": "ensemble-sample a trained run on its test split; metrics, calibration, figures",
    "predict": "masks, probabilities and uncertainty of a trained run for new images",
    "import": "an authors' PyTorch checkpoint as a run that evaluate/analyze/predict use",
    "report": "gather evaluated workdirs (or a sweep directory) into the results table",
    "analyze": "per-timestep recovery of the mask with and without the image (the fingerprint)",
    "sweep": "expand a sweep config into runs and launch them (local, slurm or print)",
    "export-replica": "write replica k of a population run as an ordinary run directory",
    "data": "build or show a dataset (synthetic, isic2016, monuseg, her2, folder)",
    "demo": "the study in miniature on the embedded synthetic data",
}

# Subcommand name -> "module:function" taking the argv that follows the subcommand.
_ENTRY_POINTS: dict[str, str] = {
    "train": "jdiffseg.cli.train:main",
    "evaluate": "jdiffseg.cli.evaluate:main",
    "predict": "jdiffseg.cli.predict:main",
    "import": "jdiffseg.cli.import_checkpoint:main",
    "report": "jdiffseg.cli.report:main",
    "analyze": "jdiffseg.cli.analyze:main",
    "sweep": "jdiffseg.cli.sweep:main",
    "export-replica": "jdiffseg.cli.export_replica:main",
    "data": "jdiffseg.cli.data:main",
    "demo": "jdiffseg.cli.demo:main",
}


def usage() -> str:
    """The top-level help text: one line per subcommand."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: jdiffseg SUBCOMMAND [flags]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`jdiffseg SUBCOMMAND --help` lists a subcommand's flags."]
    return "\n".join(lines)


def _resolve(name: str) -> Callable[[list[str]], int] | None:
    module_name, _, attr = _ENTRY_POINTS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return None
    return getattr(module, attr, None)


def dispatch(argv: list[str]) -> int:
    """Runs the subcommand named by `argv[0]`; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"jdiffseg: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    entry = _resolve(name)
    if entry is None:
        print(f"jdiffseg {name}: not available in this version of jdiffseg", file=sys.stderr)
        return 2
    return int(entry(rest) or 0)


def run() -> None:
    """Console-script entry point: an absl app whose flags each subcommand parses itself."""

    def parse_global(argv: list[str]) -> list[str]:
        flags.FLAGS(argv[:1])  # absl's own flags at defaults; subcommands parse the rest
        logging.set_verbosity(logging.WARNING)  # keep library INFO chatter off the console
        return argv

    cpu_defaults.apply()
    app.run(lambda argv: sys.exit(dispatch(argv[1:])), flags_parser=parse_global)


if __name__ == "__main__":
    run()
