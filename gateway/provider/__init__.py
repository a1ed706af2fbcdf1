"""The provincial data system side of Tongban, as a gateway sees it.

`ProviderClient`: how a gateway calls its own province's data system
(`tongban.v1.DataProvider.Fetch`), with errors mapped to Tongban reasons (`ProviderError`). The
demo data system that stands in for a province's is demo code: `gateway.demo.data` and
`gateway.demo.provider`.
"""

from gateway.provider._client import ProviderAnswer, ProviderClient, ProviderError

__all__ = ["ProviderAnswer", "ProviderClient", "ProviderError"]
