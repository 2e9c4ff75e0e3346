"""``python -m service``: serve the model repository with uvicorn, configured by ``TITOK_*`` settings."""

import logging
import sys

import uvicorn

from .app import create_app
from .errors import ConfigurationError
from .logs import configure_logging
from .settings import Settings


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except ConfigurationError as e:
        logging.getLogger("titok").error(str(e))
        return 1
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
