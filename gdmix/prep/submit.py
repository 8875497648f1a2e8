"""Entry file for ``spark-submit``: ``spark-submit [options] gdmix/prep/submit.py CONFIG [--set ...]``.

Runs ``gdmix prep`` inside the Spark application spark-submit (or the Spark operator) starts;
set ``prep.spark.master: null`` so the master comes from spark-submit.
"""

import sys

from gdmix.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", *sys.argv[1:]]))
