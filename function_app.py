"""Registers the blueprints; nothing else (every import here is paid for on each cold start)."""

import azure.functions as func

from shared.blueprints import forms, hosted

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(forms.bp)
app.register_functions(hosted.bp)
