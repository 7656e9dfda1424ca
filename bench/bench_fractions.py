"""How well a fraction-conditioned mask DDPM hits target class fractions (issue 14).

Protocol: take `--mask-run` (a mask run trained with model.fraction_conditioning=true) or train
one (`--config`, default grains-mask-64, on `--data`, with --set overrides). The training range
of class c is the 5 %..95 % quantile range of c's fraction over 512 random training crops (the
run's own crops, inside its label budget: `generate.fractions.training_fractions`). Targets per
class: 3 evenly spaced values inside the range and 2 beyond it (20 % below the low end, unless
it is 0, and 20 % above the high end, capped at 1); the other classes share the remainder in proportion to their
training mean. Each target: `--n` masks (default 64) with the same seeds for every target, drawn
with classifier-free guidance `--guidance` (eps_null + w (eps_cond - eps_null)); the
unconditional masks of the same seeds (null condition) are the reference.
Reported per target: the mean absolute error of achieved vs target fraction per class (at model
resolution), and mask statistics (components per mask, mean component size per class) beside
the unconditional ones. Goal: the steered class's error within 2 percentage points inside the
range. `--quick`: a toy run (tiny grains, tiny model, a few steps) whose numbers mean nothing.

  OMP_NUM_THREADS=1 python bench/bench_fractions.py --data data/grains-full \
      --json bench/results/bench_fractions.json --markdown bench/results/bench_fractions.md
  python bench/bench_fractions.py --mask-run runs/mask-frac --data data/grains-full ...
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

GOAL = 0.02  # mean absolute error of the steered class inside the training range


def train_run(args) -> Path:
    """A fraction-conditioned mask run on args.data (trained into args.work / "mask-run")."""
    from pairforge.config import load_config
    from pairforge.train.loop import train

    overrides = [
        f"data.path={args.data}", "task=mask", "model.fraction_conditioning=true",
        *([f"optim.max_steps={args.steps}"] if args.steps else []), *args.set,
    ]  # fmt: skip
    return train(load_config(args.config, overrides), args.work / "mask-run", progress=False)


def targets_per_class(pool: np.ndarray, names) -> list[dict]:
    """[{class, value, inside, vector (K,)}]: 3 values inside the 5-95 % range, 1-2 beyond."""
    from pairforge.generate.fractions import resolve_fixed

    mean = pool.mean(0)
    targets = []
    for c, name in enumerate(names):
        low, high = np.quantile(pool[:, c], [0.05, 0.95])
        values = [(float(v), True) for v in np.linspace(low, high, 3)]
        # 20 % beyond each end; a range starting at 0 has nothing below it.
        beyond = ([low * 0.8] if low > 0 else []) + [min(1.0, high * 1.2)]
        values += [(float(v), False) for v in beyond]
        for value, inside in values:
            vector = resolve_fixed({c: value}, names, mean, f"{name}={value}")
            targets.append({"class": name, "value": value, "inside": inside, "vector": vector})
    return targets


def mask_statistics(masks: np.ndarray, names) -> dict:
    """Per class: components per mask and mean component size (px)."""
    from pairforge.eval.mask_stats import connected_components

    counts, sizes = connected_components(masks, len(names))
    return {
        name: {
            "components_per_mask": float(counts[:, c].mean()),
            "mean_size_px": float(sizes[c].mean()) if len(sizes[c]) else 0.0,
        }
        for c, name in enumerate(names)
    }


def draw(run, seeds, target, args, settings) -> np.ndarray:
    """(N, H, W) masks for one target vector (None: unconditional), in batches."""
    import torch

    from pairforge.core.unconditional import draw_unconditional
    from pairforge.generate.fractions import draw_with_fractions

    out = []
    for start in range(0, len(seeds), args.batch_size):
        chunk = seeds[start : start + args.batch_size]
        if target is None:
            drawn = draw_unconditional(run, chunk, settings)
        else:
            goal = torch.as_tensor(np.tile(target, (len(chunk), 1)), dtype=torch.float32)
            drawn = draw_with_fractions(run, chunk, goal, args.guidance, settings)
        out.append(drawn.masks.cpu().numpy())
    return np.concatenate(out)


class MaskFID:
    """Inception FID of mask sets (class colors) against `real` (N, H, W) masks."""

    def __init__(self, real: np.ndarray, colors):
        from pairforge.eval.distances import feature_stats
        from pairforge.eval.inception import InceptionFeatureExtractor

        self.extractor, self.colors = InceptionFeatureExtractor(), colors
        self.real = feature_stats(self.features(real), keep_features=True)

    def features(self, masks: np.ndarray) -> np.ndarray:
        from pairforge.eval.inception import extract_features
        from pairforge.eval.rgb import mask_to_rgb

        return extract_features(self.extractor, mask_to_rgb(masks, self.colors), batch_size=32)

    def __call__(self, masks: np.ndarray) -> float:
        from pairforge.eval.distances import feature_stats, frechet_distance_of_stats

        fake = feature_stats(self.features(masks), keep_features=True)
        return float(frechet_distance_of_stats(self.real, fake))


def measure(run, args) -> dict:
    """The bench's rows and summary for a loaded fraction-conditioned run."""
    from pairforge.core.unconditional import SamplingSettings
    from pairforge.generate.fractions import achieved_fractions, training_fractions

    names = tuple(c.name for c in run.spec.classes)
    pool = training_fractions(run)
    settings = SamplingSettings(sampler=args.sampler, steps=args.sample_steps, device=args.device)
    seeds = list(range(args.seed, args.seed + args.n))
    reference = draw(run, seeds, None, args, settings)
    fid = None
    if args.fid:
        from pairforge.generate.fractions import training_masks

        count = 16 if args.quick else 512
        fid = MaskFID(training_masks(run, count, seed=1)[0].numpy(), run.spec.class_colors)
    rows = []
    for target in targets_per_class(pool, names):
        masks = draw(run, seeds, target["vector"], args, settings)
        got = achieved_fractions(masks, len(names))
        error = np.abs(got - target["vector"]).mean(0)
        rows.append({
            "class": target["class"], "target": target["value"], "inside": target["inside"],
            "target_vector": dict(zip(names, map(float, target["vector"]), strict=True)),
            "achieved_mean": dict(zip(names, map(float, got.mean(0)), strict=True)),
            "mean_abs_error": dict(zip(names, map(float, error), strict=True)),
            "steered_error": float(error[names.index(target["class"])]),
            "mask_stats": mask_statistics(masks, names),
            "mask_fid": None if fid is None else fid(masks),
        })  # fmt: skip
    summary = {}
    for name in names:
        inside = [r["steered_error"] for r in rows if r["class"] == name and r["inside"]]
        beyond = [r["steered_error"] for r in rows if r["class"] == name and not r["inside"]]
        summary[name] = {
            "training_range": [
                float(q) for q in np.quantile(pool[:, names.index(name)], [0.05, 0.95])
            ],
            "inside_mae": float(np.mean(inside)),
            "beyond_mae": float(np.mean(beyond)),
            "goal_met": bool(np.mean(inside) <= GOAL),
        }
    unconditional = achieved_fractions(reference, len(names)).mean(0)
    return {
        "rows": rows,
        "summary": summary,
        "unconditional": {
            "achieved_mean": dict(zip(names, map(float, unconditional), strict=True)),
            "mask_stats": mask_statistics(reference, names),
            "mask_fid": None if fid is None else fid(reference),
        },
        "train_mean": dict(zip(names, map(float, pool.mean(0)), strict=True)),
    }


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Target class fractions: achieved vs target",
        "",
        f"Run {s['mask_run']}, {s['n']} masks per target, guidance w = {s['guidance']}, "
        f"{s['sampler']} {s['sample_steps']} steps"
        f"{' (quick: numbers mean nothing)' if s['quick'] else ''}. Error = mean |achieved - "
        f"target| of the steered class; goal <= {GOAL:.2f} inside the training range.",
        "",
        "| class | training range (5-95 %) | MAE inside | MAE beyond (+-20 %) | goal |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["summary"].items():
        low, high = row["training_range"]
        lines.append(
            f"| {name} | {low:.3f}-{high:.3f} | {row['inside_mae']:.4f} | "
            f"{row['beyond_mae']:.4f} | {'met' if row['goal_met'] else 'not met'} |"
        )
    uncond = result["unconditional"]
    fids = uncond.get("mask_fid") is not None
    lines += ["", "| class | target | inside | achieved | error | components/mask | uncond. |"
              + (" mask FID | uncond. mask FID |" if fids else ""),
              "|---|---|---|---|---|---|---|" + ("---|---|" if fids else "")]  # fmt: skip
    reference = uncond["mask_stats"]
    for r in result["rows"]:
        c = r["class"]
        lines.append(
            f"| {c} | {r['target']:.3f} | {'yes' if r['inside'] else 'no'} | "
            f"{r['achieved_mean'][c]:.3f} | {r['steered_error']:.4f} | "
            f"{r['mask_stats'][c]['components_per_mask']:.1f} | "
            f"{reference[c]['components_per_mask']:.1f} |"
            + (f" {r['mask_fid']:.1f} | {uncond['mask_fid']:.1f} |" if fids else "")
        )
    if fids:
        lines += ["", f"Mask FID: Inception FID (class colors) of the {s['n']} masks of a "
                  "setting against 512 training mask crops of the run (another crop seed than "
                  "the fraction pool); at this sample count FID is biased upward, so compare "
                  "settings with each other, not with published FIDs."]  # fmt: skip
    return "\n".join(lines) + "\n"


def quick_setup(args) -> None:
    """--quick: tiny grains, the tiny config, a few steps, few masks."""
    from pairforge.data.grains import write_grains_dataset

    args.data = args.work / "grains"
    if not (args.data / "dataset.yaml").exists():
        write_grains_dataset(args.data, preset="tiny", seed=0, progress=False)
    args.config, args.steps = "tiny", args.steps or 10
    args.n, args.batch_size, args.sample_steps, args.sampler = 4, 4, 2, "ddim"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset the run trains on")
    parser.add_argument("--mask-run", type=Path, default=None, help="fraction-conditioned run")
    parser.add_argument("--config", default="grains-mask-64", help="config when training")
    parser.add_argument("--steps", type=int, default=None, help="optim.max_steps when training")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--work", type=Path, default=Path("bench/results/fractions-work"))
    parser.add_argument("--n", type=int, default=64, help="masks per target")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--fid", action="store_true", help="mask FID of every setting")
    parser.add_argument("--quick", action="store_true", help="toy smoke run (< 60 s)")
    args = parser.parse_args(argv)
    if args.quick:
        quick_setup(args)
    if args.mask_run is None and args.data is None:
        parser.error("give --mask-run RUN, or --data DATASET to train one (or --quick)")

    from pairforge.core.run import load_run
    from pairforge.core.task_fractions import is_fraction_model

    start = time.perf_counter()
    path = args.mask_run or train_run(args)
    run = load_run(path, device=args.device or "cpu")
    if not is_fraction_model(run.model):
        parser.error(f"--mask-run {path}: not fraction-conditioned (model.fraction_conditioning)")
    result = {
        "settings": {
            "mask_run": str(path),
            "n": args.n,
            "guidance": args.guidance,
            "sampler": args.sampler,
            "sample_steps": args.sample_steps,
            "seed": args.seed,
            "quick": args.quick,
            "goal": GOAL,
        },  # fmt: skip
        **measure(run, args),
        "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    text = markdown(result)
    print(text)
    for target, content in ((args.json, json.dumps(result, indent=2)), (args.markdown, text)):
        if target:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return result


if __name__ == "__main__":
    main()
