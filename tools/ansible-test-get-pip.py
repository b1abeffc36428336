"""Stand-in for the get-pip.py that ansible-test downloads from a host unreachable here.

ansible-test runs its bootstrap script as __main__ inside a fresh venv with pip's
arguments (options, then the packages to install). This does the same with the pip
wheel that ships inside CPython (ensurepip), then installs the requested packages from
the package index as usual.
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}

ensurepip.bootstrap(upgrade=False)
pip_args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
# ensurepip points PIP_CONFIG_FILE at /dev/null in our own environment; undo that so the
# machine's pip configuration (its CA bundle, say) applies as it would for any pip run.
env = {key: value for key, value in os.environ.items() if key not in {"PIP_CONFIG_FILE", "ENSUREPIP_OPTIONS"}}
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *pip_args], env=env))
