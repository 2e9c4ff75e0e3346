"""``python -m service``: serve the model repository with uvicorn, configured by ``TITOK_*`` settings.

Every setting is an environment variable (README, Settings; service/settings.py), e.g.
``TITOK_PORT=8080 TITOK_API_KEYS=secret python -m service``. The API reference is at /docs once it runs.
"""

import logging
import sys

if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:  # before the imports below, which need the installed extras
    from .settings import Settings as _Settings

    print((__doc__ or "").strip() + "\n\nsettings:")
    for _name, _field in _Settings.model_fields.items():
        print(f"  TITOK_{_name.upper():<28} {_field.description or ''} (default: {_field.default!r})")
    sys.exit(0)

import uvicorn
from pydantic import ValidationError

from titok_core.extras import require

from .app import create_app
from .errors import ConfigurationError
from .logs import configure_logging
from .protocol import guarded_protocol, raise_open_files_limit
from .settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:  # one line per bad TITOK_ variable instead of a traceback
        for err in e.errors():
            name = "TITOK_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"invalid setting {name}: {err['msg']}", file=sys.stderr)
        return 1
    backend_module = "onnxruntime" if settings.backend == "embedded" else "tritonclient"
    require(backend_module, purpose=f"the gateway's {settings.backend} backend (TITOK_BACKEND)")
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except ConfigurationError as e:
        logging.getLogger("titok").error(str(e))
        return 1
    files = raise_open_files_limit()
    if files < settings.max_connections + 64:
        logging.getLogger("titok").warning(
            "%d open files allowed for %d connections: lower TITOK_MAX_CONNECTIONS", files, settings.max_connections
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=guarded_protocol(settings),  # httptools with the connection, header and read limits (service/protocol.py)
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1  # a taken port (logged by uvicorn) or a failed start is a failure


if __name__ == "__main__":
    sys.exit(main())
