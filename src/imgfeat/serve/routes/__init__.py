"""The HTTP API, one ``APIRouter`` per concern (FastAPI's layout for bigger applications), each with its
response models beside it: ``search`` (info, neighbours, image and text search, rows), ``maps``, ``duplicates``,
``media`` (thumbnails) and ``audit`` (the review of an ``imgfeat audit`` report). ``common`` holds what they share:
the error body and its statuses, the dependencies that reach the server's state (``Depends``), the result item."""
