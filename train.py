#!/usr/bin/env python
"""python train.py --config configs/X.yaml [key=value | --key=value ...]"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from caslie.cli import USER_ERRORS
from caslie.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", required=True, help="YAML config (its base: files are merged first)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from its newest checkpoint (same as trainer.ckpt_path=last)",
    )
    args, overrides = parser.parse_known_args(argv)
    if args.resume:
        overrides.append("trainer.ckpt_path=last")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from caslie.train import run

        result = run(load_config(args.config, overrides))
    except USER_ERRORS as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    print(f"\nrun folder: {result.run_dir}")
    print(f"tested checkpoint: {result.best_checkpoint or '(final weights)'}")
    print(json.dumps({"caption_used_pct": result.data_manifest["caption_used_pct"]}))
    print(result.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
