"""Timer functions: webhook delivery and its sweeper (``shared.webhooks.dispatcher``), the credential keep-alive
(``shared.handoff.keepalive``), the storage sweeper (``shared.core.sweeper``: used links of expired links, dead
link claims, credentials no account uses). Schedules are NCRONTAB (seconds first), in UTC.

A run that fails is logged by the host and simply retried at the next tick: every step is idempotent.
"""

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("mailbox_connect.lifecycle")

DELIVERY_SCHEDULE = "*/10 * * * * *"  # every 10 seconds: the latency of a webhook
SWEEPER_SCHEDULE = "30 */10 * * * *"  # every 10 minutes: events whose fast-path index write was lost
KEEPALIVE_SCHEDULE = "0 17 * * * *"  # hourly, at minute 17
STORAGE_SWEEPER_SCHEDULE = "45 5-59/10 * * * *"  # every 10 minutes (minute 5, 15, ...), off the others' ticks


@bp.timer_trigger(schedule=DELIVERY_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=False)
def webhook_delivery(timer: func.TimerRequest) -> None:
    from shared.settings import get_settings
    from shared.webhooks.dispatcher import Dispatcher

    report = Dispatcher(get_settings()).run()
    if report.fanned_out or report.delivered or report.failed or report.dead or report.dropped:
        log.info("webhook delivery: %s", report)


@bp.timer_trigger(schedule=SWEEPER_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
def webhook_sweeper(timer: func.TimerRequest) -> None:
    from shared.settings import get_settings
    from shared.webhooks.dispatcher import Dispatcher

    Dispatcher(get_settings()).sweep()


@bp.timer_trigger(schedule=KEEPALIVE_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
def credential_keepalive(timer: func.TimerRequest) -> None:
    from shared.handoff.keepalive import run_keepalive
    from shared.settings import get_settings

    # MC_KEEPALIVE_MAX_PER_RUN=0 turns off the refreshes; the mailbox access re-check still runs (unless
    # MC_ACCESS_CHECK=off), see shared.handoff.keepalive.
    run_keepalive(get_settings())


@bp.timer_trigger(schedule=STORAGE_SWEEPER_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
def storage_sweeper(timer: func.TimerRequest) -> None:
    from shared.core.sweeper import run_sweeper
    from shared.settings import get_settings

    run_sweeper(get_settings())
