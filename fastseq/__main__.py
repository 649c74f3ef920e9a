"""`python -m fastseq ...` is the `fastseq` command."""
import sys

from .cli import main

sys.exit(main())
