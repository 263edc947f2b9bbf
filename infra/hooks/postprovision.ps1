# azd postprovision hook (Windows): the same as postprovision.sh. It runs postprovision.py with Python
# packages of its own: a virtualenv, infra\hooks\.venv, created once from the first Python >= 3.9 found
# (py -3.11, py -3, python, python3), with infra\hooks\requirements.txt installed again only when that file
# changes (a stamp keeps its SHA-256). When there is no usable Python, or the virtualenv or pip fails, it
# names the one command that finishes the job and exits 0 so `azd up` goes on to deploy (1 with
# MC_HOOK_STRICT=true); postprovision.py's docstring gives the reasons. Works in Windows PowerShell 5.1,
# which azd falls back to when PowerShell 7 is missing.
$ErrorActionPreference = 'Stop'
$root = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path
Set-Location $root
$venv = 'infra\hooks\.venv'
$venvPython = Join-Path $venv 'Scripts\python.exe'
$requirements = 'infra\hooks\requirements.txt'
$stamp = Join-Path $venv '.requirements.sha256'

function Exit-NotDone([string]$Reason) {
    $bar = '=' * 100
    [Console]::Error.WriteLine("`n$bar`nWARNING: the postprovision hook did NOT finish.`n`n  $Reason`n")
    [Console]::Error.WriteLine(
        "Until it has run, the service may have no signing key (Key Vault secret mc-signing-key): on a`n" +
        "first deployment its sign-in links and hosted pages fail. Fix the above, then finish the job from the`n" +
        "repository root with:`n`n    azd hooks run postprovision`n$bar`n")
    if ($env:MC_HOOK_STRICT -in @('true', '1')) { exit 1 }
    exit 0
}

# Python 3.9 or later, with venv and ensurepip. $Command: the program and its leading arguments.
function Test-Python([string[]]$Command) {
    $check = 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))'
    try {
        $rest = @($Command | Select-Object -Skip 1)
        & $Command[0] @rest -c $check 2>$null | Out-Null
        return $LASTEXITCODE -eq 0
    } catch {
        return $false  # not installed (or the Microsoft Store alias of python.exe)
    }
}

if (-not (Test-Python @($venvPython))) {  # no virtualenv yet, or the Python it was made from has gone
    $python = $null
    foreach ($candidate in @(@('py', '-3.11'), @('py', '-3'), @('python'), @('python3'))) {
        if (Test-Python $candidate) { $python = $candidate; break }
    }
    if (-not $python) {
        Exit-NotDone ("no Python 3.9 or later on PATH. Install Python 3.11 (https://www.python.org/downloads/," +
            " or: winget install Python.Python.3.11), open a new terminal, and run the command below.")
    }
    Write-Host "postprovision: creating the hook's virtualenv $venv with $($python -join ' ') (once) ..."
    if (Test-Path $venv) { Remove-Item -Recurse -Force $venv }
    $rest = @($python | Select-Object -Skip 1)
    & $python[0] @rest -m venv $venv
    if ($LASTEXITCODE -ne 0) { Exit-NotDone "$($python -join ' ') could not create the virtualenv $venv (message above)." }
    Set-Content -Path (Join-Path $venv '.gitignore') -Value '*'
}

$hash = (Get-FileHash -Algorithm SHA256 $requirements).Hash.ToLower()
$installed = if (Test-Path $stamp) { (Get-Content $stamp -Raw).Trim() } else { '' }
if ($installed -ne $hash) {
    Write-Host "postprovision: installing $requirements into $venv ..."
    & $venvPython -m pip install --quiet --disable-pip-version-check -r $requirements
    if ($LASTEXITCODE -ne 0) {
        Exit-NotDone "pip could not install $requirements (no network, or a proxy? pip's message is above)."
    }
    Set-Content -Path $stamp -Value $hash
}

& $venvPython 'infra\hooks\postprovision.py' @args
exit $LASTEXITCODE
