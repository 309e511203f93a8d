"""``python -m xlram.train lm ...`` (and ``torchrun --nproc_per_node=N -m xlram.train lm ...``)."""

import sys

from xlram.train.commands import main

sys.exit(main())
