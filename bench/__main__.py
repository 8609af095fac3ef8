"""python -m bench NAME [--quick] [--scale] [--device cpu|cuda] [--out FILE]

Stdout is one JSON document and nothing else: whatever a benchmark prints goes to stderr."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

NAMES = (
    "train_step",
    "overhead",
    "pruning",
    "quantize",
    "data",
    "cache",
    "attention",
    "pretrained",
    "views",
    "gpu",
    "checkpoints",
    "plan",
    "adapters",
    "search",
    "workers",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--quick", action="store_true", help="tiny settings (for tests)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--scale", action="store_true", help="cache: the scale model of Cityscapes vit_b at 1024"
    )
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="for train_step, attention and gpu"
    )
    args = parser.parse_args(argv)
    from bench.common import stdout_to_stderr

    module = importlib.import_module(f"bench.{args.name}")
    options = {"quick": args.quick}
    if "device" in inspect.signature(module.run).parameters:
        options["device"] = args.device
    elif args.device != "cpu":
        parser.error(f"{args.name} runs on the CPU only")
    if "scale" in inspect.signature(module.run).parameters:
        options["scale"] = args.scale
    elif args.scale:
        parser.error(f"{args.name} has no --scale")
    with stdout_to_stderr():
        result = {"benchmark": args.name, **options, **module.run(**options)}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
