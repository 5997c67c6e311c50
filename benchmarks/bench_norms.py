"""LayerNorm, RMSNorm and Add & Norm: tokennorm vs torch eager, torch.compile and installed peers.

The same benchmark as ``tokennorm bench`` (same options), for those who prefer a script:

    python benchmarks/bench_norms.py                       # the default sweep for this machine
    python benchmarks/bench_norms.py --quick --plot out.png
"""

import sys

from tokennorm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
