"""corepool, as the distribution package installs it: ``import corepool`` and ``python3 -m corepool``.

The real package lives with the engines it bundles in the private directory ../../../corepool from here
(/usr/lib/corepool). Importing this puts that directory first on sys.path, as /usr/bin/corepool does, and
replaces this module by the real corepool.
"""

import importlib
import os
import sys

_lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
_private = os.path.join(_lib, "corepool")
if _private not in sys.path:
    sys.path.insert(0, _private)
del sys.modules[__name__]
sys.modules[__name__] = importlib.import_module(__name__)
