"""``python -m service``: serve the model repository with uvicorn, configured by ``TITOK_*`` settings."""

import logging
import sys

import uvicorn
from pydantic import ValidationError

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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=guarded_protocol(settings),  # h11 with the connection, header and read limits (service/protocol.py)
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=2 * settings.max_header_bytes,  # a backstop behind the protocol's own 431
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
