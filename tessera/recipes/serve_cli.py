"""`tessera serve`: the local web app (tokenize, few-shot, chat) on 127.0.0.1, over the models in a runs folder.

    tessera serve                                   # http://127.0.0.1:8000, models from ./runs, files in ./runs/serve
    tessera serve --runs runs --data runs/serve --port 8080 [--config serve.yaml] [limits.max_upload_bytes=1048576]

Needs the `serve` extra (`pip install "tessera[serve]"`). Binding to anything but loopback prints a warning: the app
has no authentication.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the local web app (tokenize, few-shot, chat) with a JSON API")
    p.add_argument("--runs", default=None, help="folder searched for model folders (default ./runs)")
    p.add_argument("--data", default=None, help="the app's own folder, the only place it writes (default <runs>/serve)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--chat-backend", default=None, help='chat backend name, or "auto" (default)')
    p.add_argument("--config", default=None, help="YAML ServeConfig (limits, ...)")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. limits.request_timeout_s=30")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise RuntimeError('tessera serve needs the serve extra: pip install "tessera[serve]"') from exc
    from tessera.config import load_config
    from tessera.serve import ServeConfig, create_app

    cfg = load_config(ServeConfig, args.config, args.overrides)
    for key, value in (("runs_dir", args.runs), ("data_dir", args.data), ("host", args.host), ("port", args.port),
                       ("chat_backend", args.chat_backend)):
        if value is not None:
            setattr(cfg, key, value)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {cfg.host}: the app has no authentication; anyone who can reach it can use it")
    app = create_app(config=cfg)
    print(f"tessera serve: models from {app.state.runs_dir}, files in {app.state.data_dir}")
    print(f"open http://{cfg.host}:{cfg.port}/  (API schema: /openapi.json, docs: /docs)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0
