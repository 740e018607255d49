"""`tessera serve`: a local web app over the trained models (tokenize, few-shot, chat) with a JSON API.

    from tessera.serve import create_app
    app = create_app(runs_dir="runs", data_dir="runs/serve")     # a FastAPI app; `tessera serve` runs it with uvicorn

Modules: `config` (ServeConfig, ServeLimits), `uploads` (image validation), `models` (model folders under the runs
folder), `services` (the model work of each page), `backends` (chat backends and the hook for post-trained ones),
`app` (routes, pages, errors). Needs the `serve` extra: `pip install "tessera[serve]"`.
"""

from tessera.serve.backends import (
    ChatBackend,
    ChatEvent,
    ChatRequest,
    PlainLMBackend,
    chat_backends,
    register_chat_backend,
)
from tessera.serve.config import ServeConfig, ServeLimits, serve_debug
from tessera.serve.errors import ServeError

__all__ = [
    "create_app",
    "ServeConfig",
    "ServeLimits",
    "serve_debug",
    "ServeError",
    "ChatBackend",
    "ChatEvent",
    "ChatRequest",
    "PlainLMBackend",
    "register_chat_backend",
    "chat_backends",
]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - see tessera.serve.app.create_app
    """Build the FastAPI app (imported lazily so `tessera.serve` imports without FastAPI installed)."""
    from tessera.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


create_app.__doc__ = "Build the FastAPI app: `create_app(runs_dir=None, data_dir=None, config=None)`; see tessera.serve.app."
