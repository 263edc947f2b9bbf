"""Scale model: Table Storage, Key Vault and Microsoft calls per second for the token hand-off at 10k, 1M and
10M accounts, for each secret design, against Azure's published limits.

    .venv/bin/python -m bench.scale_model [--accounts-per-credential 4] [--requests-per-account-hour 4]
                                          [--instances 100] [--token-minutes 75] [--keepalive-days 30]

Arithmetic only (no service, no Azure): docs/performance.md "Scale" explains the assumptions.

Designs:

* ``keyvault`` (before issue 14 point 4, for comparison): one Key Vault secret (the refresh token) per
  credential; an access-token cache per instance. A hand-off on an instance that holds no live access token
  for the credential is *cold*: 1 Key Vault read, 1 Microsoft refresh, 2 Table reads (account, credential); a
  warm one is 1 Table read.
* ``keyvault+shared`` (built: ``MC_SECRET_MODE=keyvault``): the access token, sealed, and its expiry on the
  credential row, so a credential is refreshed at most once per token lifetime across all instances. A
  hand-off the instance's memory cannot serve reads the credential row too (2 Table reads); a refresh adds
  the claim and the result writes (2 Table writes), 1 Key Vault read of the refresh token and 1 Microsoft
  call.
* ``envelope`` (built: ``MC_SECRET_MODE=envelope``): the same, with the refresh token sealed on the row under
  a data key unwrapped once per instance: no Key Vault call per refresh.

Cold hand-offs are a renewal process: after a cached token expires (lifetime L), the next request for that
credential arrives after 1/λ on average (requests are Poisson), and that request refreshes; so refreshes per
hour = 1 / (L + 1/λ), where λ is the credential's request rate *as one cache sees it*: per instance
(k·r / I) for ``keyvault``, across all instances (k·r) for the shared designs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# Published limits (docs/performance.md "Scale" gives the sources).
KEY_VAULT_PER_SECOND = 4000 / 10  # secrets: 4,000 transactions per 10 s per vault per region
TABLE_ACCOUNT_PER_SECOND = 20_000  # entities (1 KiB) per second per storage account
TABLE_PARTITION_PER_SECOND = 2_000  # entities per second per partition

DESIGNS = ("keyvault", "keyvault+shared", "envelope")


@dataclass(frozen=True)
class Assumptions:
    accounts_per_credential: float = 4.0  # shared mailboxes one signer's credential serves
    requests_per_account_hour: float = 4.0  # token hand-offs per account per hour
    instances: int = 100  # warm function instances
    token_minutes: float = 75.0  # access-token lifetime: Microsoft issues 60-90 min at random
    keepalive_days: float = 30.0  # a credential nobody used is refreshed once per this (MC_KEEPALIVE_DAYS)
    rotation_write_hours: float = 24.0  # a rotated refresh token is written back at most once per this
    auth_cache_seconds: float = 5.0  # API token / OAuth app cache (MC_AUTH_CACHE_SECONDS), per instance
    api_tokens: int = 10  # active API tokens (each re-read per instance per cache period)
    instance_start_hours: float = 24.0  # an instance lives this long (envelope: one unwrap per start)


@dataclass
class Load:
    design: str
    accounts: int
    handoffs: float  # per second
    cold: float  # refreshes per second
    table: float
    keyvault: float
    microsoft: float

    def headroom(self) -> dict[str, float]:
        """How many times the load fits under each limit (< 1: over it)."""
        return {"keyvault": KEY_VAULT_PER_SECOND / self.keyvault if self.keyvault else float("inf"),
                "table": TABLE_ACCOUNT_PER_SECOND / self.table if self.table else float("inf")}


def refreshes_per_hour(rate_per_hour: float, lifetime_hours: float) -> float:
    """Refreshes per hour of one cache for one credential whose requests reach it at ``rate_per_hour``
    (Poisson): a token lives ``lifetime_hours``, then the next request (after 1/rate on average) refreshes."""
    if rate_per_hour <= 0:
        return 0.0
    return 1.0 / (lifetime_hours + 1.0 / rate_per_hour)


def model(design: str, accounts: int, a: Assumptions = Assumptions()) -> Load:
    credentials = accounts / a.accounts_per_credential
    handoffs = accounts * a.requests_per_account_hour / 3600
    lifetime = a.token_minutes / 60
    per_credential = a.accounts_per_credential * a.requests_per_account_hour  # requests per credential-hour
    keepalive = credentials / (a.keepalive_days * 86400)  # refreshes/s of idle credentials (upper bound)
    rotation_writes = credentials / (a.rotation_write_hours * 3600)
    auth_reads = a.instances * (a.api_tokens + 1) / a.auth_cache_seconds  # tokens + app listing, per second
    if design == "keyvault":
        caches = credentials * a.instances
        cold = caches * refreshes_per_hour(per_credential / a.instances, lifetime) / 3600
        table = handoffs + cold + keepalive * 2 + auth_reads  # warm: account; cold: + credential
        keyvault = cold + keepalive + min(rotation_writes, cold + keepalive)
    elif design in ("keyvault+shared", "envelope"):
        # Hand-offs this instance's memory cannot serve (the old design's "cold"): + the credential row's read.
        misses = credentials * a.instances * refreshes_per_hour(per_credential / a.instances, lifetime) / 3600
        cold = credentials * refreshes_per_hour(per_credential, lifetime) / 3600  # refreshes, across instances
        table = handoffs + misses + 2 * cold + 3 * keepalive + auth_reads  # refresh: + claim and result writes
        if design == "keyvault+shared":
            keyvault = cold + keepalive + min(rotation_writes, cold + keepalive)
        else:
            keyvault = a.instances / (a.instance_start_hours * 3600)  # one unwrap per instance start
    else:
        raise ValueError(design)
    microsoft = cold + keepalive
    return Load(design, accounts, handoffs, cold, table, keyvault, microsoft)


def limit_accounts(design: str, a: Assumptions = Assumptions()) -> dict[str, float]:
    """Accounts at which each limit is reached (the load is linear in accounts for fixed assumptions, except
    the per-instance auth reads, a constant, taken out)."""
    unit = model(design, 1_000_000, a)
    zero = model(design, 0, a)
    out = {}
    for name, value, base, limit in (("keyvault", unit.keyvault, zero.keyvault, KEY_VAULT_PER_SECOND),
                                     ("table", unit.table, zero.table, TABLE_ACCOUNT_PER_SECOND)):
        slope = (value - base) / 1_000_000
        out[name] = (limit - base) / slope if slope > 0 else float("inf")
    return out


def table(a: Assumptions = Assumptions(), sizes: tuple[int, ...] = (10_000, 1_000_000, 10_000_000)) -> str:
    lines = ["| accounts | design | hand-offs/s | refreshes/s | Table ops/s | Key Vault ops/s | Microsoft/s | "
             "Key Vault vs limit | Table vs account limit |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        for d in DESIGNS:
            x = model(d, n, a)
            lines.append(f"| {n:,} | {d} | {x.handoffs:,.0f} | {x.cold:,.1f} | {x.table:,.0f} | {x.keyvault:,.1f} | "
                         f"{x.microsoft:,.1f} | {100 * x.keyvault / KEY_VAULT_PER_SECOND:,.0f} % | "
                         f"{100 * x.table / TABLE_ACCOUNT_PER_SECOND:,.0f} % |")
    lines.append("")
    lines.append("Where each design runs out (accounts at which the limit is reached, one vault, one storage account):")
    for d in DESIGNS:
        lim = limit_accounts(d, a)
        vault = "never (calls per instance, not per account)" if lim["keyvault"] == float("inf") else \
            f"at {lim['keyvault']:,.0f} accounts"
        lines.append(f"* {d}: Key Vault {vault}; Table Storage at {lim['table']:,.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_model", description=__doc__.split("\n\n")[0])
    d = Assumptions()
    parser.add_argument("--accounts-per-credential", type=float, default=d.accounts_per_credential)
    parser.add_argument("--requests-per-account-hour", type=float, default=d.requests_per_account_hour)
    parser.add_argument("--instances", type=int, default=d.instances)
    parser.add_argument("--token-minutes", type=float, default=d.token_minutes)
    parser.add_argument("--keepalive-days", type=float, default=d.keepalive_days)
    parser.add_argument("--api-tokens", type=int, default=d.api_tokens)
    args = parser.parse_args(argv)
    a = Assumptions(args.accounts_per_credential, args.requests_per_account_hour, args.instances,
                    args.token_minutes, args.keepalive_days, api_tokens=args.api_tokens)
    print(f"Assumptions: {a}")
    print(f"Limits: Key Vault {KEY_VAULT_PER_SECOND:.0f}/s per vault (4,000 per 10 s); Table Storage "
          f"{TABLE_ACCOUNT_PER_SECOND:,}/s per account, {TABLE_PARTITION_PER_SECOND:,}/s per partition; "
          "Microsoft's token endpoint: no published rate\n")
    print(table(a))


if __name__ == "__main__":
    main()
