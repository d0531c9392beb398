"""Interactive use (`lmort ask`, `search`, `serve`, the Python API) prints answers, not the libraries' chatter:
transformers' weight-loading bar and deprecation notes, bm25s's "Building index from IDs objects". Long work (the
DVC stages) keeps its progress bars; this is called only where a person waits on one answer."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    logging.getLogger("bm25s").setLevel(logging.WARNING)
