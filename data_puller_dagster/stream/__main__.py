"""`python -m data_puller_dagster.stream` = `data-puller stream`."""

import sys

from data_puller_dagster.stream.command import main

sys.exit(main(sys.argv[1:]))
