"""The server's API routes, one :class:`fastapi.APIRouter` each: the native API, batch uploads and the
routes of A1111's clients."""
