#!/bin/sh
# azd postprovision hook (Linux, macOS): runs postprovision.py, which creates the signing key once and
# prints the next steps, with Python packages of its own rather than whatever Python is on PATH:
#   - a virtualenv, infra/hooks/.venv (ignored by git through .gitignore's ".venv/", and by .funcignore),
#     created once from the first Python >= 3.9 found: python3.11, python3.12, python3.13, python3.10,
#     python3.9, python3, python;
#   - infra/hooks/requirements.txt installed into it again only when that file changes (a stamp keeps
#     its SHA-256).
# Not under .azure/: azd lists every folder there as an environment.
#
# When there is no usable Python, or the virtualenv or pip fails, it says what to do and names the one
# command that finishes the job, then exits 0 so `azd up` goes on to deploy (1 with MC_HOOK_STRICT=true);
# postprovision.py's docstring gives the reasons. postprovision.ps1 is the same for Windows.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=infra/hooks/.venv
requirements=infra/hooks/requirements.txt
stamp=$venv/.requirements.sha256

not_done() {  # not_done REASON: the loud warning, then exit 0 (1 with MC_HOOK_STRICT=true)
    bar='===================================================================================================='
    printf '\n%s\nWARNING: the postprovision hook did NOT finish.\n\n  %s\n\n' "$bar" "$1" >&2
    printf '%s\n' \
        "Until it has run, the service may have no signing key (Key Vault secret mc-signing-key): on a" \
        "first deployment its sign-in links and hosted pages fail. Fix the above, then finish the job from the" \
        "repository root with:" "" "    azd hooks run postprovision" "$bar" "" >&2
    case "${MC_HOOK_STRICT:-}" in true|TRUE|True|1) exit 1 ;; esac
    exit 0
}

usable() {  # usable PYTHON: Python 3.9 or later, with venv and ensurepip (Debian: python3-venv)
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1
}

if ! usable "$venv/bin/python"; then  # no virtualenv yet, or the Python it was made from has gone
    python=
    for candidate in python3.11 python3.12 python3.13 python3.10 python3.9 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then
            python=$candidate
            break
        fi
    done
    [ -n "$python" ] || not_done "no Python 3.9 or later with the venv module on PATH. Install Python 3.11
  (https://www.python.org/downloads/; macOS: brew install python@3.11; Debian/Ubuntu: sudo apt install
  python3 python3-venv), open a new terminal, and run the command below."
    echo "postprovision: creating the hook's virtualenv $venv with $python (once) ..."
    rm -rf "$venv"
    "$python" -m venv "$venv" || not_done "$python could not create the virtualenv $venv (message above)."
    echo '*' > "$venv/.gitignore"
fi

hash=$("$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$requirements")
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$hash" ]; then
    echo "postprovision: installing $requirements into $venv ..."
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
        || not_done "pip could not install $requirements (no network, or a proxy? pip's message is above)."
    echo "$hash" > "$stamp"
fi

exec "$venv/bin/python" infra/hooks/postprovision.py "$@"
