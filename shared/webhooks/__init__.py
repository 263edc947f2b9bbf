"""Webhooks: lifecycle events (``shared.core.events``) delivered to the apps, signed, retried, never lost.

Why an outbox and timers (and no queue)
    An event is written in the same Table Storage transaction as the account change that caused it (the
    event row sits in the account's partition, ``shared.storage.tables.outbox``), so a committed change always has
    its event and a failed one never does, and producing it cannot block or fail the request: no network
    call to a receiver happens on the request path. Delivery runs in timer functions
    (``shared.web.blueprints.lifecycle``):

    * ``webhook_delivery`` (every 10 s): fans the events listed in the ``outbox`` index out to the
      targets, then sends what is due.
    * ``webhook_sweeper`` (every 10 min): scans the accounts table for event rows older than
      ``SWEEP_GRACE`` (a fast-path index write lost in a crash, or a fan-out that died half-way) and fans
      them out. A full scan (about one storage request per thousand accounts), which is why it is not
      the normal path.

    A Storage queue would cut the latency to about a second, but needs another dependency, queue RBAC and
    host settings, a queue emulator locally, and still a sweeper for the message lost between the commit
    and the enqueue. Lifecycle events are rare (a few per account per month), so a 10-second tick is the
    simpler way to the same guarantees. Timer functions run on one instance at a time (the Functions host
    holds a blob lease); correctness does not depend on it (claims below).

Fan-out
    For each event and each target whose filter matches, one row in ``deliveries`` (partition = target):
    the exact JSON body (built once: ``id``, ``serviceUrl``, ``account``, ``date``, ``event``, ``data``, as
    EmailEngine names them, plus the event id), status, attempts, next attempt. Creating a row that exists
    is a no-op, so a repeated fan-out (sweeper and delivery racing, a crash before the event row was
    deleted) does not duplicate. Then the event row and its index row are deleted. ``authenticationError``
    events get ``data.reauthUrl``/``reauthExpires`` here: a re-authentication link of the account
    (``POST /v1/account/{account}/reauth``'s link, valid ``MC_LINK_MAX_TTL_SECONDS``) whose redirectUrl is
    ``MC_REAUTH_REDIRECT_URL``, else the redirectUrl of the account's last sign-in (``meta.redirectUrl``);
    left out when neither passes the redirect rules or the app is gone.

Delivery (per target, so a receiver failing forever never holds up another)
    Due rows are grouped by target and sent in event-id order, targets in parallel. Before each attempt
    the row is claimed (ETag-conditioned write pushing ``nextAttemptAt`` ``CLAIM`` into the future), so two
    runners never send the same row at once. 2xx: the row is deleted. Anything else (status, timeout,
    refused connection; redirects are not followed): ``attempts`` + 1 and the next attempt after an
    exponential backoff (``BASE_DELAY`` doubling up to ``MAX_DELAY``, minus up to 10 % jitter), and the
    target's other rows wait for the next run (one probe per failing target per run, not a burst). When a
    target that failed answers 2xx again, its rows waiting in backoff are sent in the same run. A
    failure more than ``MAX_AGE`` (24 h) after the fan-out moves the row to ``status = "dead"``: listed by
    ``GET /v1/webhooks/deadletters``, sent again by ``POST /v1/webhooks/deadletters/{id}/resend`` (a new
    24-hour window). About 32 attempts happen in the 24 hours; a receiver down for an hour gets everything
    at the first probe after it is back (at most an hour: the longest delay).

At least once, exactly once per id at a receiver that dedupes
    A receiver may see an event twice (it answered 2xx too late, or a crash between fan-out and clean-up)
    and must dedupe by ``id`` (also in ``X-MC-Event-Id`` and EmailEngine's ``X-EE-Wh-Event-Id``), keeping ids
    for longer than the retry window.
    Events of one account are produced in order and carry sortable ids and ``date``; retries can reorder
    them at the receiver, so order by ``date``/``id``, not by arrival.

Signature
    ``X-MC-Timestamp: <unix seconds>``, ``X-MC-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." +
    body)>``, ``X-MC-Event-Id``, ``X-MC-Event``. Receivers recompute it over the raw body (constant-time
    compare, :func:`verify_signature`) and reject timestamps more than 5 minutes off (replays). EmailEngine's
    headers travel too, so its receivers work unchanged: ``X-EE-Wh-Signature`` (base64url, unpadded,
    HMAC-SHA256(secret, raw body); no timestamp, so dedupe by id against replays), ``X-EE-Wh-Event-Id``,
    ``X-EE-Wh-Attempts-Made`` (``shared.webhooks.signature``).

Targets
    Registered through ``/v1/webhooks`` (scope ``admin``): their secret is generated, shown once, and kept
    in the secret store (``webhook-<id>``). Or configured: ``MC_WEBHOOK_URLS`` (comma-separated, every
    event), all signed with ``MC_WEBHOOK_SECRET`` locally or Key Vault secret ``mc-webhook-secret`` in
    Azure; their ids derive from the URL, so their delivery state survives restarts. Deleting a target
    drops its undelivered rows. Time comes from an injectable clock (``Dispatcher(clock=...)``), so the
    whole 24-hour schedule is tested without waiting.

Targets are public (SSRF)
    A target written as an internal address (private, loopback outside local development, link-local,
    metadata, ... in any spelling) is refused when registered (``shared.checks.check_webhook_url``), and
    every connection goes only to addresses checked when it opens (``transport``): a host name resolving
    to an internal address is a failed attempt with ``lastError = "refused: ..."``.

Modules (layer: webhooks, beside signin and handoff, never importing them): ``signature`` (the headers and
HMAC a receiver checks), ``targets`` (where events go and their secrets), ``dispatcher`` (fan-out, claims,
backoff, dead letters), ``transport`` (the HTTP session whose sockets go only to checked addresses). The
``/v1/webhooks`` API is ``shared.admin.webhooks``. This file stays import-free.
"""
