"""A tiny FunctionApp (with blueprints) that exercises tools/localhost in tests/test_localhost.py."""

from __future__ import annotations

import asyncio
import json
import threading

import azure.functions as func

# test_localhost sets this to a threading.Barrier to prove requests run in parallel.
BARRIER: threading.Barrier | None = None


def _json(data: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(data), status_code=status, mimetype="application/json")


accounts = func.Blueprint()


@accounts.route(route="v1/account/{account}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_account(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "param", "account": req.route_params["account"], "url": req.url})


@accounts.route(route="v1/account/special", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_special_account(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "literal"})


@accounts.function_name("account_token")
@accounts.route(
    route="v1/account/{account}/oauth-token", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS,
    trigger_arg_name="request",
)
def post_token(request: func.HttpRequest) -> func.HttpResponse:
    return _json({
        "account": request.route_params["account"],
        "body": request.get_json(),
        "query": dict(request.params),
        "content_type": request.headers.get("Content-Type"),
        "x_multi": request.headers.get("x-multi"),
    })


items = func.Blueprint()


@items.route(route="items/{id:int}", auth_level=func.AuthLevel.ANONYMOUS)
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "int", "params": dict(req.route_params)})


@items.route(route="items/{name:alpha:maxlength(5)}", auth_level=func.AuthLevel.ANONYMOUS)
def item_by_name(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "alpha", "params": dict(req.route_params)})


@items.route(route="files/{name?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"params": dict(req.route_params)})


@items.route(route="static/{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def static(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"params": dict(req.route_params)})


@items.route(route="download/{name}.{ext}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def download(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"params": dict(req.route_params)})


app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(accounts)
app.register_blueprint(items)


@app.route(route="cookies", methods=["GET"])
def cookies(req: func.HttpRequest) -> func.HttpResponse:
    resp = func.HttpResponse("two cookies", headers={"Cache-Control": "no-store"})
    resp.headers.add("Set-Cookie", "mc_flow=abc123; Path=/; HttpOnly; SameSite=Lax")
    resp.headers.add("Set-Cookie", "mc_pref=a/b=; Max-Age=60; Secure")
    return resp


@app.route(route="cookies/partitioned", methods=["GET"])
def partitioned_cookie(req: func.HttpRequest) -> func.HttpResponse:
    resp = func.HttpResponse("")
    resp.headers.add("Set-Cookie", "mc_gone=1; Path=/; Secure; Partitioned")
    return resp


@app.route(route="redirect", methods=["GET"])
def redirect(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(status_code=302, headers={"Location": "https://app.example/done?account=a1&state=new"})


@app.route(route="boom")
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail that must not reach the client")


@app.route(route="async/{n:int}", methods=["GET"])
async def async_handler(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return _json({"n": req.route_params["n"], "async": True})


@app.route(route="context", methods=["GET"])
def with_context(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return _json({"function_name": context.function_name, "invocation_id": context.invocation_id})


@app.route(route="text", methods=["GET"])
def text(req: func.HttpRequest) -> str:
    return "plain"


@app.route(route="parallel", methods=["GET"])
def parallel(req: func.HttpRequest) -> func.HttpResponse:
    if BARRIER is not None:
        BARRIER.wait()  # every caller blocks until all parties have arrived: only parallel serving passes
    return _json({"thread": threading.current_thread().name})


# Timer runs: (function name, past_due, thread name); test_localhost reads and clears it.
TIMER_RUNS: list[tuple[str, bool, str]] = []
TICKED = threading.Event()


@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
def cleanup(timer: func.TimerRequest) -> None:
    TIMER_RUNS.append(("cleanup", timer.past_due, threading.current_thread().name))


@app.timer_trigger(schedule="* * * * * *", arg_name="tick", run_on_startup=True)
async def ticker(tick: func.TimerRequest) -> str:
    TIMER_RUNS.append(("ticker", tick.past_due, threading.current_thread().name))
    TICKED.set()
    return "ticked"


@app.queue_trigger(arg_name="message", queue_name="jobs", connection="AzureWebJobsStorage")
def jobs(message: func.QueueMessage) -> None:
    pass
