"""The rank entry point: ``python -m sainet.train.rank REQUEST.json``, started by `sainet.train.launch`
through torchrun, trains the request as the rank torchrun's environment names."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from sainet.core.errors import SainetError
from sainet.train.run import TrainRequest, train

__all__: list[str] = []


def _main(argv: list[str]) -> int:
    """A rank started by `launch`: train the request in the file ``argv[0]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    req = TrainRequest(**json.loads(Path(argv[0]).read_text()))
    try:
        train(req)
    except SainetError as e:
        print(f"error (rank {os.environ.get('RANK', '?')}): {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
