"""`python -m kl_utils <verb>`: the study's one command line (kl_utils.cli)."""
import sys

from kl_utils.cli import main

sys.exit(main())
