"""A Python client of a stratum server's HTTP API (`stratum serve`).

    from stratum_client import Client
    with Client("http://127.0.0.1:8000", key="...") as stratum:
        frame = stratum.read([1, 2], ["heart_rate"], "2024-01-01", "2024-02-01")

It depends on pyarrow only (pandas and polars when their answers are asked for) and imports
nothing of the server: requests go through the standard library's http.client.
"""

from stratum_client.client import DEFAULT_RETRIES, Client
from stratum_client.errors import StratumError

__all__ = ["DEFAULT_RETRIES", "Client", "StratumError"]
__version__ = "0.1.0"
