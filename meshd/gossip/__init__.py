"""The sans-IO gossip core: no asyncio, socket, time or pyroute2 imports in this package."""
