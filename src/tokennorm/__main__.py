import sys

from tokennorm.cli import main

sys.exit(main())
