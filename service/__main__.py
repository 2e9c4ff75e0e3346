"""``python -m service``: serve the model repository with uvicorn, configured by ``TITOK_*`` settings."""

import logging
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .errors import ConfigurationError
from .logs import configure_logging
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
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
