"""Allow ``python -m infra ...`` as a shorthand for ``python -m infra.stack ...``."""

import sys

from infra.stack import main

sys.exit(main())
