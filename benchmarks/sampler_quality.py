"""Accuracy against cost of every sampler on one trained diffusion run: DDPM over the full chain,
DDIM-50/20/10 with η ∈ {0, 1} and DPM-Solver++ 2M/3M at 20/10/5 steps.

    python benchmarks/sampler_quality.py --workdir=runs/ens --num_examples=32
    python benchmarks/sampler_quality.py --workdir=runs/ens --dpm_spacings=logsnr,time_uniform \
        --settings=ddpm,ddim-10-0,dpmpp_2m-10 --json=quality.json

Each setting samples `--ensemble_size` members for each of the first `--num_examples` test
images of the run's best checkpoint (EMA parameters), through the predictor `jdiffseg evaluate`
uses, with the same keys for every setting: DDIM with η = 0 and DPM-Solver++ start from the
same noise. Reported per setting: network evaluations per image (members × steps), seconds
per image (compilation excluded), Dice and IoU of the mean-fused mask, ECE (top-label, all
pixels) of the members' mean, and the generalised energy distance D²_GED (1 − IoU) between its
members and the full-chain DDPM members (the reference, so the first setting must be 'ddpm').
Prints a table, names the cheapest setting within 0.01 Dice of full-chain DDPM and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdiffseg.data import pipeline
from jdiffseg.diffusion import dpm_solver
from jdiffseg.evaluation import evaluate, scores
from jdiffseg.models import build_model
from jdiffseg.runtime import cpu_defaults, run_dir, sharding, variables
from jdiffseg.scoring import metrics, predictors, raters

DDIM_SETTINGS = tuple(f"ddim-{n}-{eta}" for n in (50, 20, 10) for eta in (0, 1))
DPM_SETTINGS = tuple(f"{s}-{n}" for s in dpm_solver.SOLVERS for n in (20, 10, 5))
SETTINGS = ("ddpm", *DDIM_SETTINGS, *DPM_SETTINGS)
DICE_MARGIN = 0.01


def parse_setting(name: str, spacing: str) -> tuple[str, predictors.SamplingOptions]:
    """('label', options less the ensemble size and clipping) of 'ddpm', 'ddim-STEPS-ETA' or
    'dpmpp_2m|dpmpp_3m-STEPS' (at `spacing`)."""
    sampler, *rest = name.split("-")
    try:
        if sampler == "ddpm" and not rest:
            return "DDPM", predictors.SamplingOptions(sampler="ddpm", sampling_steps=0)
        if sampler == "ddim" and len(rest) == 2:
            steps, eta = int(rest[0]), float(rest[1])
            label = f"DDIM-{steps} η={eta:g}"
            return label, predictors.SamplingOptions(sampler="ddim", sampling_steps=steps, eta=eta)
        if sampler in dpm_solver.SOLVERS and len(rest) == 1:
            steps = int(rest[0])
            label = f"DPM-Solver++({sampler[-2:].upper()})-{steps} {spacing}"
            return label, predictors.SamplingOptions(
                sampler=sampler, sampling_steps=steps, dpm_spacing=spacing
            )
    except ValueError as e:
        raise ValueError(f"--settings: cannot read {name!r}: {e}") from e
    raise ValueError(
        f"--settings: {name!r} is not 'ddpm', 'ddim-STEPS-ETA' or '<dpmpp_2m|dpmpp_3m>-STEPS'"
    )


def evaluate_setting(
    config: Any,
    model: Any,
    params: Any,
    batches: Sequence[dict[str, Any]],
    mesh: Any,
    options: predictors.SamplingOptions,
    reference: Sequence[np.ndarray] | None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Metrics of one setting over `batches` and its members per batch (host arrays)."""
    predict = predictors.make_predictor(config, model, options, mesh=mesh)
    key = jax.random.key(int(config.seed))
    first = batches[0]["arrays"]["image"]
    compiled = predict.lower(params, first, key).compile()
    acc = metrics.init(int(config.eval.num_bins))
    dice, iou, ged, members_out, seconds = [], [], [], [], 0.0
    for i, batch in enumerate(batches):
        arrays, valid = batch["arrays"], batch["valid"]
        tick = time.perf_counter()
        out = compiled(params, arrays["image"], jax.random.fold_in(key, i))
        jax.block_until_ready(out["members"])
        seconds += time.perf_counter() - tick
        scored = scores.score_batch(
            out["members"],
            arrays["mask"],
            method="mean",
            threshold=0.5,
            num_bins=int(config.eval.num_bins),
        )
        acc = metrics.update(acc, scored["mean"], arrays["mask"], 0.5, arrays["valid"])
        members = np.asarray(sharding.fetch(out["members"]))
        per = sharding.fetch(scored["per_image"])
        dice.append(np.asarray(per["dice"])[valid])
        iou.append(np.asarray(per["iou"])[valid])
        if reference is not None:
            distance = raters.generalized_energy_distance(members, reference[i])
            ged.append(np.asarray(distance)[valid])
        members_out.append(members)
    count = sum(len(d) for d in dice)
    steps = options.sampling_steps or int(config.diffusion.num_timesteps)
    dataset = {k: float(v) for k, v in metrics.compute(sharding.fetch(acc)).items()}
    row = {
        "sampler": options.sampler,
        "steps": steps,
        "eta": options.eta if options.sampler == "ddim" else None,
        "dpm_spacing": options.dpm_spacing if options.sampler in dpm_solver.SOLVERS else None,
        "nfe_per_image": steps * options.ensemble_size,
        "seconds_per_image": seconds / count,
        "dice": float(np.mean(np.concatenate(dice))),
        "iou": float(np.mean(np.concatenate(iou))),
        "ece_top_label": dataset["ece_top_label"],
        "ece_foreground": dataset["ece_foreground"],
        "ged": float(np.mean(np.concatenate(ged))) if ged else None,
        "num_images": count,
    }
    return row, members_out


def cheapest_within(rows: Sequence[dict[str, Any]], margin: float = DICE_MARGIN) -> dict[str, Any]:
    """The row with the fewest network evaluations (then the fastest) whose Dice is at least the
    first (reference) row's minus `margin`."""
    floor = rows[0]["dice"] - margin
    return min(
        (r for r in rows if r["dice"] >= floor),
        key=lambda r: (r["nfe_per_image"], r["seconds_per_image"]),
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| setting | NFE / image | s / image | Dice | IoU | ECE | GED vs DDPM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ged = "(reference)" if r["ged"] is None else f"{r['ged']:.3f}"
        lines.append(
            f"| {r['setting']} | {r['nfe_per_image']} | {r['seconds_per_image']:.3f} | "
            f"{r['dice']:.3f} | {r['iou']:.3f} | {r['ece_top_label']:.3f} | {ged} |"
        )
    return "\n".join(lines)


def load_batches(config: Any, mesh: Any) -> list[dict[str, Any]]:
    """The test batches of `config.eval.num_examples` images, on the devices, with validity."""
    per_process = sharding.check_batch_size(
        int(config.data.eval_batch_size), mesh, "config.data.eval_batch_size"
    )
    batches, _ = evaluate.test_batches(config, per_process)
    return [
        {"arrays": pipeline.to_global(b, mesh), "valid": np.asarray(b["valid"], bool)}
        for b in batches
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a trained diffusion run")
    p.add_argument("--num_examples", type=int, default=32, help="test images (-1: all)")
    p.add_argument("--ensemble_size", type=int, default=5)
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma-separated; 'ddpm' (the reference) first",
    )
    p.add_argument(
        "--dpm_spacings",
        default="logsnr",
        help=f"comma-separated DPM-Solver++ spacings of {dpm_solver.SPACINGS}",
    )
    p.add_argument("--json", default="", help="default: WORKDIR/sampler_quality.json")
    p.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = p.parse_args(argv)
    print(cpu_defaults.configure(args.plain_xla))

    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    if not names or names[0] != "ddpm":
        raise SystemExit("--settings must start with 'ddpm', the reference of GED and Dice")
    spacings = [s.strip() for s in args.dpm_spacings.split(",") if s.strip()]
    plan = []
    for name in names:
        for spacing in spacings if name.split("-")[0] in dpm_solver.SOLVERS else spacings[:1]:
            plan.append(parse_setting(name, spacing))
    config = run_dir.read_config(args.workdir, {"eval.num_examples": args.num_examples})
    if config.model.mode not in ("diffusion", "mask_only"):
        raise SystemExit(f"{args.workdir} is a {config.model.mode!r} run, not a diffusion one")
    mesh = sharding.make_mesh()
    batches = load_batches(config, mesh)
    image_shape = tuple(batches[0]["arrays"]["image"].shape[1:])
    model = build_model(config.model, image_channels=image_shape[-1])
    params, meta = variables.restore(
        args.workdir, config, model, image_shape,
        which=config.eval.checkpoint, use_ema=bool(config.eval.use_ema),
    )
    params = jax.device_put(params, sharding.replicated(mesh))
    clip = bool(config.diffusion.clip_x0)

    rows, reference = [], None
    for label, options in plan:
        options = dataclasses.replace(options, ensemble_size=args.ensemble_size, clip_x0=clip)
        row, members = evaluate_setting(config, model, params, batches, mesh, options, reference)
        reference = members if reference is None else reference
        rows.append({"setting": label, **row})
        print(
            f"{label:32s} {row['nfe_per_image']:6d} NFE/image {row['seconds_per_image']:8.3f} "
            f"s/image  Dice {row['dice']:.3f}",
            flush=True,
        )
    best = cheapest_within(rows)
    print(
        f"\n{jax.devices()[0].device_kind}, {args.workdir} (checkpoint step "
        f"{meta.get('step')}), {rows[0]['num_images']} test images x {args.ensemble_size} "
        f"members\n{format_table(rows)}\n\ncheapest within {DICE_MARGIN} Dice of full-chain "
        f"DDPM: {best['setting']} ({best['nfe_per_image']} NFE/image)"
    )
    result = {
        "workdir": str(args.workdir),
        "checkpoint_step": meta.get("step"),
        "ensemble_size": args.ensemble_size,
        "device": jax.devices()[0].device_kind,
        "cheapest_within_0.01_dice": best["setting"],
        "rows": rows,
    }
    path = Path(args.json) if args.json else Path(args.workdir) / "sampler_quality.json"
    path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
