import sys

from tokennorm.tools.kernel_report.cli import main

sys.exit(main())
