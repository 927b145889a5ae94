# Sourced by run-local, test and install-eb-cli (not run): the checks before they use a virtualenv.
# Each message names the script ($SCRIPT), what is wrong and the fix.

# $PYTHON, which creates a missing virtualenv, must be 3.11 or newer.
need_python_311() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$SCRIPT: $PYTHON is not Python 3.11 or newer ($("$PYTHON" --version 2>&1 | head -n 1)): install Python 3.11 (README, Quick start) and run PYTHON=python3.11 ./scripts/$SCRIPT" >&2
    exit 1
  fi
}

# A virtualenv made earlier (maybe by hand, or by a failed python3 -m venv) must be 3.11 or newer.
need_venv_311() {
  if ! "$1/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$SCRIPT: $1 is $("$1/bin/python" --version 2>&1 | head -n 1), not 3.11 or newer: remove it (rm -rf $(printf %q "$1")) and run ./scripts/$SCRIPT again (with PYTHON=python3.11 if python3 is older)" >&2
    exit 1
  fi
}

# ... and have pip, to install into it.
need_venv_pip() {
  if ! "$1/bin/python" -c 'import pip' 2>/dev/null; then
    echo "$SCRIPT: $1 has no pip (python3 -m venv leaves it so when python3-venv is missing): remove it (rm -rf $(printf %q "$1")) and run ./scripts/$SCRIPT again" >&2
    exit 1
  fi
}

# Install requirements file $2 into virtualenv $1, with the pip of requirements-pip.txt first
# (a newer pip than venv brings resolves the pins in half the time; that file says how much).
pip_install() {
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-pip.txt &&
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check -r "$2"
}
