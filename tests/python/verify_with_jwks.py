"""Verifies a tessera ServiceAccount token with PyJWT fed from the server's JWKS.

Usage: verify_with_jwks.py SERVER_URL CA_FILE TOKEN AUDIENCE
Prints the verified claims as JSON; exits non-zero when verification fails.
"""
import json
import ssl
import sys

import jwt
from jwt import PyJWKClient


def main() -> int:
    server, ca_file, token, audience = sys.argv[1:5]
    context = ssl.create_default_context(cafile=ca_file)
    discovery_url = f"{server}/.well-known/openid-configuration"
    import urllib.request

    with urllib.request.urlopen(discovery_url, context=context) as response:
        discovery = json.load(response)
    client = PyJWKClient(discovery["jwks_uri"], ssl_context=context)
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=discovery["issuer"],
    )
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
