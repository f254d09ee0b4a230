"""The rank entry point: ``python -m sainet.train.rank SETTINGS.json``, started by `sainet.train.launch`
through torchrun, trains the settings (a `TrainSettings` as JSON) as the rank torchrun's environment names."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from sainet.core.errors import SainetError
from sainet.core.topology import TorchrunEnv
from sainet.settings import TrainSettings
from sainet.train.run import train

__all__: list[str] = []


def _main(argv: list[str]) -> int:
    """A rank started by `launch`: train the settings in the JSON file ``argv[0]`` (`TrainSettings.to_dict`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = TrainSettings.from_dict(json.loads(Path(argv[0]).read_text()))
    try:
        train(settings)
    except SainetError as e:
        rank = TorchrunEnv.from_env().rank
        print(f"error (rank {'?' if rank is None else rank}): {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
