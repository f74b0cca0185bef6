"""The CRI services: requests checked and translated to the managers, answers and errors back to protobuf.

The CRI messages come from the cri_api package, whose own __init__ imports its gRPC stubs and grpcio with them;
the daemon serves gRPC itself (cripy/rpc) and needs only the messages. So the package is registered here without
running its __init__ (10 MiB of grpcio the daemon would otherwise carry): `cri_api.v1.api_pb2` imports as usual,
and so do the stubs for a process that wants them (the CLI, the tests).
"""

import importlib.util
import sys


def _register_cri_api_package() -> None:
    if "cri_api" in sys.modules:
        return
    spec = importlib.util.find_spec("cri_api")
    if spec is None:
        return  # not installed: the import that needs it says so
    sys.modules["cri_api"] = importlib.util.module_from_spec(spec)


_register_cri_api_package()
