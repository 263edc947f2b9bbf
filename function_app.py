"""Registers the blueprints; nothing else (every import here is paid for on each cold start)."""

import azure.functions as func

from shared.web.blueprints import accounts, apitokens, apps, forms, hosted, lifecycle, links, openapi, tokens, webhooks

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (forms.bp, hosted.bp, links.bp, accounts.bp, tokens.bp, apps.bp, apitokens.bp, webhooks.bp,
                  openapi.bp, lifecycle.bp):
    app.register_functions(blueprint)
