"""``python -m xlram.train lm ...`` (and ``torchrun --nproc_per_node=N -m xlram.train lm ...``)."""

import sys

from xlram.cpu_allocator import tune_cpu_allocator
from xlram.train.commands import main

tune_cpu_allocator()  # as the `xlram` command does (see xlram/cpu_allocator.py)
sys.exit(main())
