"""The server's routes, one :class:`fastapi.APIRouter` each: the service's own (page, liveness,
readiness), the native API, batch uploads and the routes of A1111's clients."""
