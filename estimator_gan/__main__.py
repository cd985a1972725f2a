"""`python -m estimator_gan ...`: the `estimator-gan` command line."""
import sys

from estimator_gan.cli import main

sys.exit(main())
