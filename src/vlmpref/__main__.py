import sys

from vlmpref.cli import main

sys.exit(main())
