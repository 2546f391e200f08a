"""What the Vast API says the run's workers cost: `dph_total` ($/hour, GPU and host) of
the instances behind the worker URLs a vast: target was answered from.

    GET {api}/api/v0/instances/   Authorization: Bearer KEY   -> {"instances": [{"id",
        "public_ipaddr", "ports": {"3000/tcp": [{"HostIp", "HostPort"}]}, "dph_total"}, ...]}

A worker URL (`http://IP:PORT`, from the router's answer) is matched to the instance with
that public address and that host port (or the only instance at that address). A key
that may not list instances, or any other failure, gives no prices and says why: the
report then shows no dollars for the target unless --gpu-price-per-hour is given.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

DEFAULT_VAST_API = "https://console.vast.ai"


class PriceLookupError(Exception):
    """The Vast API gave no prices (the message says why)."""


def _host_ports(instance: dict[str, Any]) -> set[int]:
    found: set[int] = set()
    ports = instance.get("ports")
    if isinstance(ports, dict):
        for mappings in ports.values():
            for m in mappings if isinstance(mappings, list) else []:
                try:
                    found.add(int(m.get("HostPort")))
                except (AttributeError, TypeError, ValueError):
                    continue
    return found


def match_prices(instances: list[dict[str, Any]], worker_urls: list[str]) -> dict[str, float]:
    """worker URL -> dph_total, for the workers that match one instance."""
    prices: dict[str, float] = {}
    for worker in worker_urls:
        url = URL(worker)
        at_ip = [i for i in instances if i.get("public_ipaddr") == url.host]
        exact = [i for i in at_ip if url.port in _host_ports(i)]
        pick = exact if len(exact) == 1 else at_ip if len(at_ip) == 1 else []
        if pick and isinstance(pick[0].get("dph_total"), (int, float)):
            prices[worker] = float(pick[0]["dph_total"])
    return prices


async def worker_prices(api_key: str, worker_urls: list[str], api_url: str = DEFAULT_VAST_API) -> dict[str, float]:
    """The $/hour of each worker found; PriceLookupError when the API gave nothing."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{api_url.rstrip('/')}/api/v0/instances/",
                                headers={"Authorization": f"Bearer {api_key}"}) as r:
                if r.status != 200:
                    raise PriceLookupError(f"the Vast API answered HTTP {r.status} to listing instances "
                                           "(the key may not allow it): give --gpu-price-per-hour")
                body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise PriceLookupError(f"the Vast API could not be asked for prices ({type(e).__name__})") from e
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list):
        raise PriceLookupError("the Vast API's instance list has no `instances`")
    prices = match_prices([i for i in instances if isinstance(i, dict)], worker_urls)
    if not prices:
        raise PriceLookupError("none of the run's workers is among the key's instances: give --gpu-price-per-hour")
    return prices
