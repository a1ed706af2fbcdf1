"""Demo and development code: nothing on the serving path imports it (tests/unit/test_structure.py).

- `pki`: the development PKI, throwaway CAs and every key of a test federation (never for
  production keys);
- `config`: a gateway's configuration from a dev PKI (`tongban gateway serve --pki`, a file
  with `[gateway] dev_pki`);
- `data`, `provider`: the demo data system, deterministic synthetic citizens and businesses
  behind `tongban.v1.DataProvider`, standing in for a province's own;
- `federation`: a dev PKI, a signed registry and gateways of several regions on loopback, the one
  starter shared by the demo, the integration tests and the benchmarks;
- `stories`, `run`: `tongban demo`, its scenarios and its transcript.

The CLI verbs that need it (`demo`, `pki init`, `provider serve`, and `gateway serve` with a dev
PKI) import it inside the verb, so that `tongban` itself loads none of it.
"""
