"""The platform's REST API (FastAPI): predictions, payload schemas and health.

`create_app(settings)` builds the app; `serve(settings)` runs it under uvicorn (`factory serve`).
"""

from serving.app import create_app, serve

__all__ = ["create_app", "serve"]
