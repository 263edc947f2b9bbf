# azd postprovision hook (Windows): creates the signing key once and prints the next steps.
# Same as postprovision.sh: the work is done by postprovision.py, with the project's virtualenv if any.
$ErrorActionPreference = 'Stop'
$root = Resolve-Path (Join-Path $PSScriptRoot '..\..')
Set-Location $root
$py = Join-Path $root '.venv\Scripts\python.exe'
if (-not (Test-Path $py)) { $py = 'python' }
& $py (Join-Path $root 'infra\hooks\postprovision.py') @args
exit $LASTEXITCODE
