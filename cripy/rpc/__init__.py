"""cripy's gRPC server: HTTP/2 and gRPC's framing as sans-I/O pieces (http2.py, wire.py), served on asyncio
(server.py), with the standard health service (health.py)."""
