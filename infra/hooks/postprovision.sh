#!/bin/sh
# azd postprovision hook (Linux, macOS): creates the signing key once and prints the next steps.
# azd runs it with the outputs of infra/bicep/main.bicep in the environment; the work is done by
# postprovision.py, with the project's virtualenv when there is one (it has azure-identity and
# azure-keyvault-secrets from requirements.txt).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
elif command -v python3 >/dev/null 2>&1; then
    py=python3
else
    py=python
fi
exec "$py" infra/hooks/postprovision.py "$@"
