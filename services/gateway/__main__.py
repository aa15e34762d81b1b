"""``python -m services.gateway``: uvicorn on $GMPI_HOST:$GMPI_PORT."""

from __future__ import annotations

import uvicorn

from services.common.settings import get_settings


def main() -> None:
    s = get_settings()
    uvicorn.run("services.gateway.app:create_app", factory=True, host=s.host, port=s.port, log_level="info")


if __name__ == "__main__":
    main()
