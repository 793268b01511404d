import sys

from batch.run import main

sys.exit(main())
