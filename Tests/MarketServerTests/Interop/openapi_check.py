"""Checks a running market server against docs/openapi.yaml: the spec itself is valid OpenAPI
3.0, and every documented GET answers with the documented status and a body its schema accepts
(objects allow no undocumented fields, so a leaked payload field fails).

    openapi_check.py SPEC BASE_URL PEER_ID
"""

import json
import sys
import urllib.error
import urllib.request

import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

spec = yaml.safe_load(open(sys.argv[1]))
base, peer = sys.argv[2], sys.argv[3]
validate(spec)

checks = [
    ("/health", "/health", 200),
    ("/v1/stats", "/v1/stats", 200),
    ("/v1/offers", "/v1/offers", 200),
    ("/v1/tasks", "/v1/tasks", 200),
    ("/v1/tasks", "/v1/tasks?state=settled&limit=5", 200),
    ("/v1/tasks", "/v1/tasks?state=nonsense", 400),
    ("/v1/peers/{id}", f"/v1/peers/{peer}", 200),
    ("/v1/peers/{id}", "/v1/peers/not-a-peer", 400),
    ("/v1/peers/{id}", "/v1/peers/" + "a" * 32, 404),
    ("/v1/flow", "/v1/flow", 200),
    ("/v1/providers", "/v1/providers", 200),
]
failures = []
for path, url, status in checks:
    try:
        response = urllib.request.urlopen(base + url, timeout=10)
        code, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        code, body = error.code, error.read()
    if code != status:
        failures.append(f"{url}: status {code}, expected {status}")
        continue
    documented = spec["paths"][path]["get"]["responses"]
    if str(code) not in documented:
        failures.append(f"{url}: status {code} is not documented")
        continue
    schema = dict(documented[str(code)]["content"]["application/json"]["schema"])
    schema["components"] = spec["components"]
    errors = [e.message for e in OAS30Validator(schema).iter_errors(json.loads(body))]
    if errors:
        failures.append(f"{url}: {errors[:3]}")
metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
if "cmm_frames_total" not in metrics:
    failures.append("/metrics: no cmm_frames_total")
if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"OPENAPI OK {len(checks)} checks")
