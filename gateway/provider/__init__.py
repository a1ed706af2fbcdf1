"""The provincial data system side of Tongban.

- `ProviderClient`: how a gateway calls its own province's data system
  (`tongban.v1.DataProvider.Fetch`), with errors mapped to Tongban reasons (`ProviderError`).
- `DemoData`, `DemoProviderService`, `create_provider`: a stand-in data system serving
  deterministic synthetic citizens and businesses of the demo regions, for demos and tests.
"""

from gateway.provider._client import ProviderAnswer, ProviderClient, ProviderError
from gateway.provider._demo import AS_OF, DATASET_FIELDS, DEFAULT_SEED, DEMO_REGIONS, DemoData
from gateway.provider._net import is_loopback
from gateway.provider._service import CONTENT_TYPE, DemoProviderService, create_provider

__all__ = [
    "AS_OF",
    "CONTENT_TYPE",
    "DATASET_FIELDS",
    "DEFAULT_SEED",
    "DEMO_REGIONS",
    "DemoData",
    "DemoProviderService",
    "ProviderAnswer",
    "ProviderClient",
    "ProviderError",
    "create_provider",
    "is_loopback",
]
